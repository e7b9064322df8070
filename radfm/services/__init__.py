"""Local services on 127.0.0.1: an MLflow server, a Prefect server, a Ray head and an S3 API (moto).

``radfm services up|down|status [--only mlflow,prefect,ray,s3]`` and this Python API start, stop and report
them. Each service keeps its files under ``$RADFM_HOME/services/<name>/``: ``state.json`` (pid, port, url) while
it runs, ``<name>.log``, and its data (MLflow's SQLite database and artifacts, Prefect's database). Data
outlives ``down``; delete the folder to start from scratch.

Ports (env var, default): RADFM_MLFLOW_PORT 5000, RADFM_PREFECT_PORT 4200, RADFM_RAY_PORT 6379,
RADFM_S3_PORT 9000. ``client_env(endpoints)`` gives the variables radfm reads to use them
(MLFLOW_TRACKING_URI, PREFECT_API_URL, RAY_ADDRESS, RADFM_S3_ENDPOINT_URL + dummy AWS credentials).

    from radfm import services
    with services.running(["mlflow", "s3"]) as endpoints:
        env = services.client_env(endpoints)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import radfm  # noqa: F401  (its import sets the telemetry-off defaults every child inherits)
from radfm.paths import radfm_home
from radfm.services import process
from radfm.services.cli import run_cli
from radfm.services.specs import SERVICES, Service

__all__ = ["DEFAULT_TIMEOUT_S", "SERVICES", "Endpoint", "ServiceError", "ServiceStatus", "client_env",
           "names_from", "run_cli", "running", "services_dir", "start", "status", "stop"]

DEFAULT_TIMEOUT_S = 180.0  # a cold Prefect server takes ~20 s alone; 2 busy cores can triple that
State = Literal["up", "starting", "down"]


class ServiceError(RuntimeError):
    """A service could not start (port taken, crashed, not healthy in time); nothing of this call runs."""


@dataclass(frozen=True)
class Endpoint:
    """A running service: where a client reaches it and where its process and files are."""

    name: str
    url: str
    port: int
    pid: int
    log: Path
    workdir: Path


@dataclass(frozen=True)
class ServiceStatus:
    """What ``status()`` knows of one service: ``up`` (healthy), ``starting`` (alive, not answering yet)
    or ``down``."""

    name: str
    state: State
    port: int
    url: str | None = None
    pid: int | None = None
    log: Path | None = None


def services_dir(home: str | Path | None = None) -> Path:
    """``<home or RADFM_HOME>/services``, created on demand."""
    root = Path(home).expanduser().resolve() if home is not None else radfm_home()
    path = root / "services"
    path.mkdir(parents=True, exist_ok=True)
    return path


def names_from(names: str | Iterable[str] | None) -> list[str]:
    """Service names in start order from ``None`` (all), ``"mlflow,s3"`` or an iterable; unknown → ValueError."""
    if names is None:
        return list(SERVICES)
    items = names.split(",") if isinstance(names, str) else list(names)
    wanted = {n.strip().lower() for n in items if n.strip()}
    unknown = sorted(wanted - set(SERVICES))
    if unknown:
        raise ValueError(f"unknown service(s) {', '.join(unknown)}: choose from {', '.join(SERVICES)}")
    return [n for n in SERVICES if n in wanted]


def start(names: str | Iterable[str] | None = None, *, home: str | Path | None = None,
          ports: Mapping[str, int] | None = None, timeout: float | None = None) -> dict[str, Endpoint]:
    """Start the named services (default: all) and wait until each answers its health probe.

    Already running services are reused, not started twice. Ports come from ``ports``, else the
    ``RADFM_<NAME>_PORT`` variables, else the defaults. A taken port raises :class:`ServiceError` before
    anything starts; a service that dies or stays unhealthy for ``timeout`` seconds (default
    ``RADFM_SERVICES_TIMEOUT`` or 180) raises after every service this call started is stopped again.
    """
    wanted = names_from(names)
    ports = dict(ports or {})
    limit = float(timeout if timeout is not None else os.environ.get("RADFM_SERVICES_TIMEOUT", DEFAULT_TIMEOUT_S))
    root = services_dir(home)
    with _lock(root):
        running_now: dict[str, dict[str, Any]] = {}
        to_start: dict[str, int] = {}
        for name in wanted:
            state = _read_state(root, name)
            if state and process.alive(state["pid"], state["create_time"]):
                running_now[name] = state
                continue
            if state:  # died since: clear what may be left of its group before starting afresh
                _terminate(root, name, state)
            to_start[name] = SERVICES[name].port(ports.get(name))
        _check_ports(to_start)
        started: list[str] = []
        try:
            for name, port in to_start.items():
                running_now[name] = _launch(root, SERVICES[name], port)
                started.append(name)
            _wait_healthy(root, {n: running_now[n] for n in wanted}, limit)
        except BaseException:
            for name in reversed(started):
                state = _read_state(root, name)
                if state:
                    _terminate(root, name, state)
            raise
    return {name: _endpoint(root, running_now[name]) for name in wanted}


def stop(names: str | Iterable[str] | None = None, *, home: str | Path | None = None) -> list[str]:
    """Stop the named services (default: all): SIGTERM to each process group, SIGKILL after a grace period;
    state files are removed, data and logs kept. Stopping what is not running is a no-op → names stopped."""
    root = services_dir(home)
    with _lock(root):
        states = {n: s for n in names_from(names) if (s := _read_state(root, n))}
        stopped = [n for n, s in states.items() if process.alive(s["pid"], s["create_time"])]
        # In parallel: each may wait out its grace period, and they share nothing.
        with ThreadPoolExecutor(max_workers=max(1, len(states))) as pool:
            for future in [pool.submit(_terminate, root, n, s) for n, s in states.items()]:
                future.result()
    return stopped


def status(names: str | Iterable[str] | None = None, *,
           home: str | Path | None = None) -> dict[str, ServiceStatus]:
    """The state of each named service (default: all), probing the running ones."""
    root = services_dir(home)
    result = {}
    for name in names_from(names):
        service, state = SERVICES[name], _read_state(root, name)
        if not state or not process.alive(state["pid"], state["create_time"]):
            result[name] = ServiceStatus(name, "down", service.port())
            continue
        healthy = service.healthy(state["port"], root / name)
        result[name] = ServiceStatus(name, "up" if healthy else "starting", state["port"], state["url"],
                                     state["pid"], Path(state["log"]))
    return result


def client_env(endpoints: Mapping[str, Endpoint]) -> dict[str, str]:
    """The environment variables a client (radfm, the MLflow/Prefect/Ray/boto3 clients) needs for them."""
    env: dict[str, str] = {}
    for name, endpoint in endpoints.items():
        env.update(SERVICES[name].client_env(endpoint.url))
    return env


@contextlib.contextmanager
def running(names: str | Iterable[str] | None = None, *, home: str | Path | None = None,
            ports: Mapping[str, int] | None = None, timeout: float | None = None) -> Iterator[dict[str, Endpoint]]:
    """Start the named services for the ``with`` block and always stop, after it, those it started
    (services that were already up, e.g. from ``radfm services up``, are used and left running)."""
    root = services_dir(home)
    before = {n for n, s in status(names, home=root).items() if s.state != "down"}
    try:
        yield start(names, home=root, ports=ports, timeout=timeout)
    finally:
        mine = [n for n in names_from(names) if n not in before]
        if mine:
            stop(mine, home=root)


# ---- internals ------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _lock(root: Path) -> Iterator[None]:
    """One `up`/`down` at a time per RADFM_HOME (two terminals must not both start MLflow)."""
    with (root / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _state_path(root: Path, name: str) -> Path:
    return root / name / "state.json"


def _read_state(root: Path, name: str) -> dict[str, Any] | None:
    path = _state_path(root, name)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        # A torn or foreign file: treat as "not running" rather than refuse every command.
        path.unlink(missing_ok=True)
        return None


def _check_ports(to_start: Mapping[str, int]) -> None:
    problems = []
    seen: dict[int, str] = {}
    for name, port in to_start.items():
        env = SERVICES[name].port_env
        if port in seen:
            problems.append(f"{name} and {seen[port]} both want port {port}: set {env} to another port")
        elif not process.port_free(port):
            problems.append(f"cannot start {name}: port {port} on {process.HOST} is already in use by another "
                            f"process; set {env} to a free port (or stop what listens there)")
        seen[port] = name
    if problems:
        raise ServiceError("\n".join(problems) + "\nNothing was started.")


def _launch(root: Path, service: Service, port: int) -> dict[str, Any]:
    workdir = root / service.name
    workdir.mkdir(parents=True, exist_ok=True)
    spec = service.launch(port, workdir)
    log = workdir / f"{service.name}.log"
    # A fresh log per start: the Ray health probe reads its banner from this file.
    log.unlink(missing_ok=True)
    env = {**os.environ, **spec.env}
    # A client address in our own environment must not make a server try to join some other instance.
    for key in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "PREFECT_API_URL"):
        env.pop(key, None)
    pid, created = process.launch(spec.cmd, env, workdir, log)
    state = {"name": service.name, "port": port, "url": service.url(port), "pid": pid, "create_time": created,
             "cmd": spec.cmd, "log": str(log), "started_at": time.time(), "extra": spec.extra}
    path = _state_path(root, service.name)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(path)
    return state


def _wait_healthy(root: Path, states: Mapping[str, dict[str, Any]], limit: float) -> None:
    pending = dict(states)
    deadline = time.monotonic() + limit
    while pending:
        for name, state in list(pending.items()):
            service = SERVICES[name]
            if service.healthy(state["port"], root / name):
                del pending[name]
            elif not process.alive(state["pid"], state["create_time"]):
                raise ServiceError(f"{name} exited while starting on port {state['port']}; "
                                   f"its log ({state['log']}) ends with:\n{_tail(Path(state['log']))}")
        if pending and time.monotonic() > deadline:
            detail = "\n".join(f"--- {n} ({s['log']}):\n{_tail(Path(s['log']))}" for n, s in pending.items())
            raise ServiceError(f"{', '.join(pending)} did not become healthy within {limit:.0f} s "
                               f"(raise RADFM_SERVICES_TIMEOUT on a slow machine):\n{detail}")
        if pending:
            time.sleep(0.25)


def _terminate(root: Path, name: str, state: Mapping[str, Any]) -> None:
    process.terminate(state["pid"], state["create_time"], SERVICES[name].grace_s)
    SERVICES[name].cleanup(state.get("extra") or {})
    _state_path(root, name).unlink(missing_ok=True)


def _endpoint(root: Path, state: Mapping[str, Any]) -> Endpoint:
    return Endpoint(state["name"], state["url"], state["port"], state["pid"], Path(state["log"]),
                    root / state["name"])


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
