"""A real ``mlflow server`` on 127.0.0.1 for the tests (one per session, ~0.5 GB with one worker).

Started by the same code as ``radfm services up`` (:mod:`radfm.services`), on a free port, with its own
services folder under a session temp dir: SQLite backend, artifacts proxied into ``root / "artifacts"``.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class MlflowServer:
    uri: str
    root: Path  # the server's folder: mlflow.db, artifacts/, mlflow.log


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    from radfm import services

    home = tmp_path_factory.mktemp("mlflow_server")
    endpoint = services.start(["mlflow"], home=home, ports={"mlflow": free_port()}, timeout=120)["mlflow"]
    try:
        yield MlflowServer(endpoint.url, endpoint.workdir)
    finally:
        services.stop(["mlflow"], home=home)
