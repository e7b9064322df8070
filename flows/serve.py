"""Serve the deployments of ``prefect.yaml`` from this machine (``radfm flows serve``): their cron schedules run
here, in this process, without a work pool — Prefect's ``serve``."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
PREFECT_YAML = ROOT / "prefect.yaml"


def load_spec(path: Path = PREFECT_YAML) -> list[dict[str, Any]]:
    """The ``deployments`` entries of ``prefect.yaml``."""
    spec = yaml.safe_load(path.read_text())
    deployments = spec.get("deployments") or []
    if not deployments:
        raise ValueError(f"{path} declares no deployments")
    return deployments


def load_flow(entrypoint: str) -> Any:
    """``flows/pipeline.py:radfm_pipeline`` → the flow object."""
    file, _, attr = entrypoint.partition(":")
    module = file.removesuffix(".py").replace("/", ".")
    flow = getattr(importlib.import_module(module), attr, None)
    if flow is None or not hasattr(flow, "to_deployment"):
        raise ValueError(f"entrypoint {entrypoint!r} names no Prefect flow")
    return flow


def build_deployments(path: Path = PREFECT_YAML, only: list[str] | None = None) -> list[Any]:
    """``RunnerDeployment``s with the names, parameters, tags and cron schedules of ``prefect.yaml``."""
    from prefect.schedules import Cron

    out = []
    for d in load_spec(path):
        if only and d["name"] not in only:
            continue
        flow = load_flow(d["entrypoint"])
        schedules = [Cron(s["cron"], timezone=s.get("timezone", "UTC"), active=s.get("active", True))
                     for s in d.get("schedules") or []]
        out.append(flow.to_deployment(name=d["name"], parameters=d.get("parameters") or {},
                                      tags=d.get("tags") or [], description=d.get("description"),
                                      schedules=schedules or None))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="radfm flows", description=__doc__)
    parser.add_argument("action", choices=["serve", "list"], help="serve: register the deployments of prefect.yaml "
                        "and run their schedules here; list: print them and their crons")
    parser.add_argument("--only", action="append", default=None, help="serve only this deployment (repeatable)")
    args = parser.parse_args(argv)
    deployments = build_deployments(only=args.only)
    if args.action == "list":
        for d in load_spec():
            crons = ", ".join(s["cron"] for s in d.get("schedules") or []) or "on demand"
            print(f"{d['name']:<18} {d['entrypoint']:<40} {crons}")
        return 0
    if Path.cwd().resolve() != ROOT:
        # The flow runs start here, and the deployments' data paths (`repo: "."`) are the checkout's, as the
        # pull step of prefect.yaml makes them for a worker.
        print(f"radfm flows: serving from {Path.cwd()}, not the checkout {ROOT}: relative paths in prefect.yaml "
              "(the DVC data) are read from here; run it from the checkout", file=sys.stderr)
    from prefect import serve

    serve(*deployments)
    return 0


if __name__ == "__main__":
    sys.exit(main())
