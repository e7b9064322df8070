"""The local services for real: MLflow, Prefect, a Ray head and the S3 API started on free ports, used through
the env that ``client_env`` emits, then stopped with no process left behind.

Ray is checked from a subprocess: this pytest process may already hold another Ray (ray.init is once per
process). The whole file takes ~60 s on 2 cores, most of it the Prefect server starting.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from radfm import services
from radfm.services import process
from radfm.services.specs import SERVICES

pytestmark = pytest.mark.timeout(300)

NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _free_ports() -> dict[str, int]:
    # Held open together so the four are distinct, released just before the servers bind them.
    socks = []
    try:
        for _ in SERVICES:
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return {name: sock.getsockname()[1] for name, sock in zip(SERVICES, socks)}
    finally:
        for sock in socks:
            sock.close()


def _http(url: str, payload: dict | None = None) -> object:
    data = json.dumps(payload).encode() if payload is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with NO_PROXY.open(req, timeout=10) as resp:
        return json.loads(resp.read() or b"null")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, services.Endpoint]]]:
    home = tmp_path_factory.mktemp("services_home")
    try:
        yield home, services.start(home=home, ports=_free_ports(), timeout=240)
    finally:
        services.stop(home=home)  # a safety net: the last test stops them itself and checks


def test_all_four_come_up_and_status_says_so(stack, monkeypatch, capsys) -> None:
    home, endpoints = stack
    assert list(endpoints) == ["mlflow", "prefect", "ray", "s3"]
    states = services.status(home=home)
    for name, endpoint in endpoints.items():
        assert states[name].state == "up", name
        assert (states[name].url, states[name].pid) == (endpoint.url, endpoint.pid)
        assert endpoint.workdir == home / "services" / name and endpoint.log.exists()
    # The command prints the same, reading RADFM_HOME.
    monkeypatch.setenv("RADFM_HOME", str(home))
    assert services.run_cli(argparse.Namespace(action="status", only="mlflow,s3")) == 0
    out = capsys.readouterr().out
    assert f"mlflow   up        {endpoints['mlflow'].url}" in out and "prefect" not in out


def test_up_twice_reuses_the_running_services(stack) -> None:
    home, endpoints = stack
    again = services.start(home=home)
    assert {n: e.pid for n, e in again.items()} == {n: e.pid for n, e in endpoints.items()}


def test_client_env_is_what_radfm_reads(stack, monkeypatch) -> None:
    from radfm.data.versioning import endpoint_from_env
    from radfm.registry.registry import default_tracking_uri

    _, endpoints = stack
    env = services.client_env(endpoints)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert default_tracking_uri() == endpoints["mlflow"].url
    assert endpoint_from_env() == endpoints["s3"].url
    assert env["PREFECT_API_URL"] == endpoints["prefect"].url + "/api"
    assert env["RAY_ADDRESS"] == f"127.0.0.1:{endpoints['ray'].port}"


def test_mlflow_creates_an_experiment_over_http(stack) -> None:
    _, endpoints = stack
    url = endpoints["mlflow"].url
    created = _http(f"{url}/api/2.0/mlflow/experiments/create", {"name": "services-test"})
    got = _http(f"{url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=services-test")
    assert got["experiment"]["experiment_id"] == created["experiment_id"]


def test_prefect_api_is_healthy_and_stores_a_flow(stack) -> None:
    _, endpoints = stack
    api = services.client_env(endpoints)["PREFECT_API_URL"]
    assert _http(f"{api}/health") is True
    flow = _http(f"{api}/flows/", {"name": "services-test"})
    assert _http(f"{api}/flows/{flow['id']}")["name"] == "services-test"


def test_s3_bucket_roundtrip_with_the_emitted_credentials(stack) -> None:
    import boto3

    _, endpoints = stack
    env = services.client_env({"s3": endpoints["s3"]})
    s3 = boto3.client("s3", endpoint_url=env["RADFM_S3_ENDPOINT_URL"], region_name=env["AWS_DEFAULT_REGION"],
                      aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    s3.create_bucket(Bucket="radfm-services-test")
    s3.put_object(Bucket="radfm-services-test", Key="k", Body=b"v")
    assert s3.get_object(Bucket="radfm-services-test", Key="k")["Body"].read() == b"v"


def test_a_ray_driver_joins_the_head_with_the_emitted_env(stack) -> None:
    _, endpoints = stack
    env = {**os.environ, **services.client_env({"ray": endpoints["ray"]})}
    code = "import json, ray; ray.init(); print(json.dumps(ray.cluster_resources())); ray.shutdown()"
    # ray.init() with no address reads RAY_ADDRESS: this is what a radfm Ray run does with the env.
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    resources = json.loads(out.stdout.strip().splitlines()[-1])
    assert resources["CPU"] >= 1 and "node:127.0.0.1" in resources


def test_down_stops_everything_and_leaves_no_process(stack) -> None:
    home, endpoints = stack
    pids = [p.pid for e in endpoints.values() for p in process.tree(e.pid, None)]
    assert len(pids) >= 6  # mlflow's worker and Ray's GCS/raylet/agents are there too
    ray_link = json.loads((home / "services" / "ray" / "state.json").read_text())["extra"].get("temp_link")
    assert services.stop(home=home) == ["mlflow", "prefect", "ray", "s3"]
    assert process.wait_gone(pids, timeout=5) == []
    assert all(s.state == "down" for s in services.status(home=home).values())
    assert not list((home / "services").glob("*/state.json"))
    assert ray_link is None or not Path(ray_link).exists()
    assert (home / "services" / "mlflow" / "mlflow.db").exists()  # data outlives down
    assert services.stop(home=home) == []  # down when nothing is up is fine


def test_taken_port_is_a_clear_error_and_nothing_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(services.ServiceError) as err:
            services.start(["mlflow", "s3"], home=tmp_path, ports={"mlflow": _free_ports()["mlflow"], "s3": port})
    message = str(err.value)
    assert "s3" in message and str(port) in message and "RADFM_S3_PORT" in message
    assert message.startswith(f"cannot start s3: port {port}")
    assert all(s.state == "down" for s in services.status(home=tmp_path).values())
    assert not list((tmp_path / "services").glob("*/state.json"))


def test_a_service_that_dies_while_starting_takes_down_what_this_call_started(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("RADFM_RAY_NUM_CPUS", "not-a-number")  # `ray start` rejects it and exits
    ports = _free_ports()
    with pytest.raises(services.ServiceError, match="ray exited while starting"):
        services.start(["s3", "ray"], home=tmp_path, ports=ports, timeout=120)
    assert not list((tmp_path / "services").glob("*/state.json"))
    assert process.port_free(ports["s3"])  # moto, started first, was stopped again


def test_unknown_service_names_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown service.*choose from mlflow, prefect, ray, s3"):
        services.names_from("mlflow,postgres")
    assert services.names_from(" s3 , mlflow") == ["mlflow", "s3"]
