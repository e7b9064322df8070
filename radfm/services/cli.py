"""``radfm services up|down|status [--only ...]``: what the command prints and returns."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from radfm.services import Endpoint, ServiceStatus

_UI_HINTS = {"mlflow": "MLflow UI", "prefect": "Prefect UI", "ray": "Ray GCS address", "s3": "S3 API endpoint"}


def run_cli(args: argparse.Namespace) -> int:
    """Run ``args.action`` (up/down/status) on ``args.only`` (comma list, default all) → exit code."""
    from radfm import services

    try:
        names = services.names_from(getattr(args, "only", None))
        if args.action == "up":
            endpoints = services.start(names)
            print(format_endpoints(endpoints))
            return 0
        if args.action == "down":
            stopped = services.stop(names)
            print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
            return 0
        if args.action == "status":
            print(format_status(services.status(names)))
            return 0
        raise ValueError(f"unknown action {args.action!r}: up, down or status")
    except (services.ServiceError, ValueError, FileNotFoundError) as err:
        print(f"radfm services {args.action}: {err}", file=sys.stderr)
        return 1


def format_endpoints(endpoints: Mapping[str, Endpoint]) -> str:
    """The URLs of running services and the ``export`` lines that point a shell at them."""
    from radfm.services import client_env, services_dir

    lines = [f"{name:8} {endpoint.url:28} {_UI_HINTS.get(name, '')} (pid {endpoint.pid})"
             for name, endpoint in endpoints.items()]
    lines += ["", "# use them from this shell:"]
    lines += [f"export {key}={shlex.quote(value)}" for key, value in client_env(endpoints).items()]
    lines += ["", f"# logs and data: {services_dir()}/<service>/   stop: radfm services down"]
    return "\n".join(lines)


def format_status(states: Mapping[str, ServiceStatus]) -> str:
    """One line per service: name, up/starting/down, URL (the port it would use when down), pid."""
    lines = [f"{'service':8} {'state':9} {'url':28} pid"]
    for name, st in states.items():
        url = st.url or f"(port {st.port})"
        lines.append(f"{name:8} {st.state:9} {url:28} {st.pid or '-'}")
    return "\n".join(lines)
