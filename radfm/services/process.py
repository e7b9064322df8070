"""Processes of the local services: ports, launching in a session of their own, and stopping whole trees.

Each service runs as the leader of a new session (``start_new_session``), so its process group holds every
helper it forks (MLflow's uvicorn worker, Ray's GCS, raylet and agents). Stopping signals the group and the
leader's descendants, then kills what survives the grace period. A pid is only trusted together with the
start time recorded beside it: a pid reused by an unrelated process is never signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil

HOST = "127.0.0.1"
# The names a browser on this machine may use for a local service (Host header, origin); a DNS-rebinding page
# always brings a name of its own, so the web services answer to these alone.
LOOPBACK_NAMES = (HOST, "localhost")
# psutil rounds create_time; two readings of one process agree to well within this.
_CREATE_TIME_SLACK_S = 0.05


def port_free(port: int, host: str = HOST) -> bool:
    """True when nothing is bound to ``host:port``.

    SO_REUSEADDR mirrors what the servers themselves set, so a port left in TIME_WAIT by a service that was
    just stopped counts as free while any live listener (or a bare bound socket) does not.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = HOST) -> int:
    """A port the kernel says is free now (another process may still take it before it is used)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def tcp_open(port: int, host: str = HOST, timeout: float = 1.0) -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def launch(cmd: Sequence[str], env: Mapping[str, str], cwd: Path, log_path: Path) -> tuple[int, float]:
    """Start ``cmd`` detached in its own session, output appended to ``log_path`` → (pid, create_time)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=dict(env), cwd=cwd, start_new_session=True)
    try:
        return proc.pid, psutil.Process(proc.pid).create_time()
    except psutil.NoSuchProcess:
        # Already gone (a bad argument fails fast): a start time no live process matches, so the caller
        # sees a dead service and reports its log.
        return proc.pid, time.time()


def process(pid: int | None, create_time: float | None) -> psutil.Process | None:
    """The live (non-zombie) process ``pid`` if it is still the one started at ``create_time``."""
    if not pid:
        return None
    try:
        proc = psutil.Process(pid)
        if create_time is not None and abs(proc.create_time() - create_time) > _CREATE_TIME_SLACK_S:
            return None
        if proc.status() == psutil.STATUS_ZOMBIE:
            _reap(pid)
            return None
        return proc
    except psutil.Error:
        return None


def alive(pid: int | None, create_time: float | None) -> bool:
    """True while the recorded process runs."""
    return process(pid, create_time) is not None


def tree(pid: int, create_time: float | None) -> list[psutil.Process]:
    """The leader, its descendants and every process still in its process group (orphans included)."""
    found: dict[int, psutil.Process] = {}
    leader = process(pid, create_time)
    if leader is not None:
        found[leader.pid] = leader
        with contextlib.suppress(psutil.Error):
            found.update({p.pid: p for p in leader.children(recursive=True)})
    # Orphans re-parented to init keep the group id; only processes of this user started after the leader
    # can belong to it, which keeps a recycled group id from matching strangers.
    uid = os.getuid()
    since = (create_time or 0.0) - _CREATE_TIME_SLACK_S
    for proc in psutil.process_iter(["pid", "uids", "create_time"]):
        try:
            if proc.info["uids"] is None or proc.info["uids"].real != uid or proc.info["create_time"] < since:
                continue
            if proc.pid not in found and os.getpgid(proc.pid) == pid:
                found[proc.pid] = proc
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    return list(found.values())


def terminate(pid: int, create_time: float | None, grace_s: float) -> list[int]:
    """SIGTERM the service's whole tree, SIGKILL whatever is left after ``grace_s`` → the pids it held."""
    procs = tree(pid, create_time)
    pids = [p.pid for p in procs]
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGTERM)
    _, survivors = psutil.wait_procs(procs, timeout=grace_s)
    # Helpers forked during shutdown would escape the first snapshot: look at the group again.
    survivors = [*survivors, *(p for p in tree(pid, create_time) if p.pid not in pids)]
    for proc in survivors:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(survivors, timeout=5)
    _reap(pid)
    return pids


def _reap(pid: int) -> None:
    """Collect the exit status of a child of this process (a test or ``running()``), so no zombie stays."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def wait_gone(pids: Sequence[int], timeout: float = 10.0) -> list[int]:
    """The pids among ``pids`` still alive (not zombies) after waiting up to ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        left = [pid for pid in pids if alive(pid, None)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)
