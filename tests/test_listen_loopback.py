"""Services that expose nothing: every process radfm starts listens on loopback only, and the web services refuse
a foreign ``Host`` and grant no foreign CORS origin.

One module-scoped stack (`radfm services up`'s four services on free ports, as in test_services.py) serves both
halves; a Ray Train run on radfm's local Ray (``start_local_ray``, two workers and their torch process group)
runs in a subprocess, because this pytest process may already hold another Ray. ~70 s on 2 cores.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path

import psutil
import pytest

from radfm import services
from radfm.services import process
from tests.test_services import _free_ports

pytestmark = pytest.mark.timeout(420)

NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
EVIL = "evil.example"
Socket = tuple[int, str, str, int]  # pid, process name, bound address, port


def listening(procs: Iterable[psutil.Process]) -> set[Socket]:
    """The listening TCP sockets (IPv4 and IPv6) of ``procs``; processes that exit meanwhile are skipped."""
    found: set[Socket] = set()
    for proc in procs:
        try:
            name = proc.name()
            for conn in proc.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN:
                    found.add((proc.pid, name, conn.laddr.ip, conn.laddr.port))
        except psutil.Error:
            continue
    return found


def is_loopback(address: str) -> bool:
    """127.0.0.0/8, ::1 and their IPv4-mapped form (``::ffff:127.0.0.1``, what a dual-stack socket reports)."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def exposed(sockets: Iterable[Socket]) -> list[Socket]:
    return sorted(s for s in sockets if not is_loopback(s[2]))


def request(url: str, *, method: str = "GET", headers: dict[str, str] | None = None,
            body: bytes | None = None) -> tuple[int, dict[str, str]]:
    """(status, lower-cased headers) of one request; 4xx/5xx are answers here, not exceptions."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with NO_PROXY.open(req, timeout=15) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, services.Endpoint]]:
    home = tmp_path_factory.mktemp("loopback_home")
    try:
        yield services.start(home=home, ports=_free_ports(), timeout=240)
    finally:
        services.stop(home=home)


# ---- sockets -------------------------------------------------------------------------------------------
def test_every_local_service_listens_on_loopback_only(stack) -> None:
    for name, endpoint in stack.items():
        sockets = listening(process.tree(endpoint.pid, None))
        assert endpoint.port in {s[3] for s in sockets}, f"{name}: its own port is not among {sorted(sockets)}"
        assert exposed(sockets) == [], f"{name} listens beyond loopback"


RAY_RUN = r"""
import json, os, sys, threading
import psutil
from radfm.train.ray_launcher import start_local_ray

def listening(procs):  # as in the test module (importing it here would import pytest into every Ray worker)
    found = set()
    for proc in procs:
        try:
            name = proc.name()
            for conn in proc.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN:
                    found.add((proc.pid, name, conn.laddr.ip, conn.laddr.port))
        except psutil.Error:
            continue
    return found

def tree():
    me = psutil.Process()
    return [me, *me.children(recursive=True)]

def loop(config):
    import torch.distributed as dist
    dist.barrier()  # the process group (rank 0 hosts torch's TCPStore at MASTER_PORT) is up on every rank
    found = sorted(listening([psutil.Process()]))
    with open(os.path.join(config["out"], f"rank{dist.get_rank()}.json"), "w") as f:
        json.dump({"master_port": int(os.environ["MASTER_PORT"]), "sockets": found}, f)
    dist.barrier()

out = sys.argv[1]
start_local_ray(2)
seen, stop = set(), threading.Event()

def sample():
    while not stop.wait(0.5):
        seen.update(listening(tree()))

sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
TorchTrainer(loop, train_loop_config={"out": out},
             scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
             run_config=RunConfig(storage_path=os.path.join(out, "ray"))).fit()
stop.set()
sampler.join()
seen.update(listening(tree()))
import ray
ray.shutdown()
print(json.dumps(sorted(seen)))
"""


def test_a_ray_train_run_on_the_local_ray_listens_on_loopback_only(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run([sys.executable, "-c", RAY_RUN, str(tmp_path)], env=env, capture_output=True,
                         text=True, timeout=360)
    assert out.returncode == 0, out.stderr[-4000:]
    tree = [tuple(s) for s in json.loads(out.stdout.strip().splitlines()[-1])]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    workers = [tuple(s) for r in ranks for s in r["sockets"]]
    # The sockets seen include the ones that matter: the GCS/raylet, and torch's store on rank 0 (the one
    # torch binds to every interface unless radfm's worker setup hook hands it a loopback socket).
    assert any(name == "gcs_server" for _, name, _, _ in tree), tree
    assert ranks[0]["master_port"] in {port for *_, port in ranks[0]["sockets"]}, ranks[0]
    assert exposed(tree) == [] and exposed(workers) == []


# ---- Host header and CORS ------------------------------------------------------------------------------
def test_prefect_refuses_a_foreign_host_and_grants_no_foreign_origin(stack) -> None:
    url = stack["prefect"].url
    assert request(f"{url}/api/health")[0] == 200 and request(f"{url}/")[0] == 200  # API and UI are served
    assert request(f"{url}/api/health", headers={"Host": EVIL})[0] == 400
    assert request(f"{url}/api/health", headers={"Host": f"{EVIL}:{stack['prefect'].port}"})[0] == 400
    # A simple cross-origin read and a preflight for a JSON POST: no grant for a foreign page...
    status, headers = request(f"{url}/api/health", headers={"Origin": f"http://{EVIL}"})
    assert status == 200 and "access-control-allow-origin" not in headers
    status, headers = request(f"{url}/api/flows/filter", method="OPTIONS",
                              headers={"Origin": f"http://{EVIL}", "Access-Control-Request-Method": "POST",
                                       "Access-Control-Request-Headers": "content-type"})
    assert status >= 400 and "access-control-allow-origin" not in headers
    # ...while the server's own origin keeps working (the check is not simply "CORS off").
    status, headers = request(f"{url}/api/flows/filter", method="OPTIONS",
                              headers={"Origin": url, "Access-Control-Request-Method": "POST"})
    assert status == 200 and headers["access-control-allow-origin"] == url


def test_mlflow_refuses_a_foreign_host_and_grants_no_foreign_origin(stack) -> None:
    url = stack["mlflow"].url
    api = f"{url}/api/2.0/mlflow/experiments/search?max_results=1"
    assert request(api)[0] == 200
    assert request(api, headers={"Host": EVIL})[0] == 403
    assert request(api, headers={"Host": f"{EVIL}:{stack['mlflow'].port}"})[0] == 403
    status, headers = request(api, headers={"Origin": f"http://{EVIL}"})
    assert "access-control-allow-origin" not in headers
    # A state-changing request from a foreign page is refused outright, not only left unreadable.
    status, headers = request(f"{url}/api/2.0/mlflow/experiments/create", method="POST",
                              body=json.dumps({"name": "from-evil"}).encode(),
                              headers={"Origin": f"http://{EVIL}", "Content-Type": "application/json"})
    assert status == 403 and "access-control-allow-origin" not in headers
    status, headers = request(api, method="OPTIONS",
                              headers={"Origin": f"http://{EVIL}", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in headers
    status, headers = request(api, headers={"Origin": url})
    assert status == 200 and headers["access-control-allow-origin"] == url


def test_the_s3_api_grants_no_foreign_origin(stack) -> None:
    status, headers = request(f"{stack['s3'].url}/", headers={"Origin": f"http://{EVIL}"})
    assert status == 200 and "access-control-allow-origin" not in headers
