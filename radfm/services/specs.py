"""What each local service is: its command line, port variable, health probe and the env a client needs."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from radfm.services.process import HOST, LOOPBACK_NAMES, free_port, tcp_open

# Dummy credentials the moto S3 API accepts (it checks nothing); real ones are never needed locally.
S3_DUMMY_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
# Loopback probes must never go through a proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
# AF_UNIX paths are limited to 107 bytes; Ray puts ``session_<date>_<pid>/sockets/plasma_store`` (~62 bytes)
# under its temp dir, so a longer temp dir is reached through a short symlink.
_RAY_TEMP_MAX = 40


@dataclass
class Launch:
    """How to start one service: the command, extra environment, and state to remember for stopping it."""

    cmd: list[str]
    env: dict[str, str] = field(default_factory=dict)
    extra: dict[str, str] = field(default_factory=dict)


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """True when ``url`` answers 200."""
    try:
        with _OPENER.open(url, timeout=timeout) as resp:
            return resp.status == 200
    except OSError:
        return False


def console_script(name: str) -> str:
    """The console script ``name`` of this interpreter's environment (the venv's own ``ray``, ``prefect``)."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"`{name}` is not installed in this environment (pip install -e '.[dev]')")
    return found


class Service:
    """One local service. Subclasses fill in the class attributes and ``launch``."""

    name: ClassVar[str]
    title: ClassVar[str]
    port_env: ClassVar[str]
    default_port: ClassVar[int]
    # Seconds between SIGTERM and SIGKILL when stopping.
    grace_s: ClassVar[float] = 10.0

    def port(self, override: int | None = None) -> int:
        """``override``, else the port variable, else the default."""
        if override is not None:
            return int(override)
        raw = os.environ.get(self.port_env, "").strip()
        if not raw:
            return self.default_port
        try:
            port = int(raw)
        except ValueError:
            raise ValueError(f"{self.port_env}={raw!r} is not a port number") from None
        if not 0 < port < 65536:
            raise ValueError(f"{self.port_env}={port} is outside 1..65535")
        return port

    def url(self, port: int) -> str:
        """The address a client uses."""
        return f"http://{HOST}:{port}"

    def launch(self, port: int, workdir: Path) -> Launch:
        """The command that runs the service in the foreground (it is detached by the caller)."""
        raise NotImplementedError

    def healthy(self, port: int, workdir: Path) -> bool:
        """True when the service answers."""
        raise NotImplementedError

    def client_env(self, url: str) -> dict[str, str]:
        """The environment variables that point radfm (and the service's own client) at it."""
        raise NotImplementedError

    def cleanup(self, extra: dict[str, str]) -> None:
        """Remove what ``launch`` made outside the work dir (after the processes are gone)."""


class Mlflow(Service):
    """``mlflow server``: tracking + model registry, SQLite backend, artifacts proxied from a local folder."""

    name = "mlflow"
    title = "MLflow tracking server + model registry"
    port_env = "RADFM_MLFLOW_PORT"
    default_port = 5000

    def launch(self, port: int, workdir: Path) -> Launch:
        backend = os.environ.get("RADFM_MLFLOW_BACKEND_URI") or f"sqlite:///{workdir / 'mlflow.db'}"
        # --serve-artifacts: clients upload through the server, so they need no access to the artifact dir.
        # --allowed-hosts: only this server's own names (MLflow's default also admits every private IP) so a page
        # reaching it through DNS rebinding gets 403; --cors-allowed-origins: only its own UI. MLflow always
        # admits http://localhost:* and 127.0.0.1:* origins on top (mlflow.server.fastapi_security).
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", HOST, "--port", str(port), "--workers", "1",
               "--backend-store-uri", backend, "--artifacts-destination", str(workdir / "artifacts"),
               "--serve-artifacts", "--allowed-hosts", ",".join(f"{h}:{port}" for h in LOOPBACK_NAMES),
               "--cors-allowed-origins", ",".join(own_origins(port))]
        # The job runner starts a Huey consumer per worker; off, one worker stays at ~0.5 GB.
        return Launch(cmd, {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})

    def healthy(self, port: int, workdir: Path) -> bool:
        return http_ok(f"{self.url(port)}/health")

    def client_env(self, url: str) -> dict[str, str]:
        return {"MLFLOW_TRACKING_URI": url}


class Prefect(Service):
    """Prefect's server (the orchestration API and its UI), SQLite under the service dir, behind a Host check."""

    name = "prefect"
    title = "Prefect server (API + UI)"
    port_env = "RADFM_PREFECT_PORT"
    default_port = 4200

    def launch(self, port: int, workdir: Path) -> Launch:
        # `prefect server start` has no Host check: radfm.services.prefect_server runs the same app behind one.
        cmd = [sys.executable, "-m", "radfm.services.prefect_server", "--port", str(port)]
        env = {"PREFECT_HOME": str(workdir), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
               "PREFECT_UI_ENABLED": "true", "PREFECT_UI_API_URL": f"{self.url(port)}/api",
               # Prefect's default is "*": any web page could read the API's answers from a browser.
               "PREFECT_SERVER_CORS_ALLOWED_ORIGINS": ",".join(own_origins(port))}
        return Launch(cmd, env)

    def healthy(self, port: int, workdir: Path) -> bool:
        return http_ok(f"{self.url(port)}/api/health")

    def client_env(self, url: str) -> dict[str, str]:
        return {"PREFECT_API_URL": f"{url}/api"}


class Ray(Service):
    """A Ray head node (GCS + raylet), no dashboard UI, every port on loopback."""

    name = "ray"
    title = "Ray head node (GCS)"
    port_env = "RADFM_RAY_PORT"
    default_port = 6379
    started_marker: ClassVar[str] = "Ray runtime started"

    def url(self, port: int) -> str:
        return f"{HOST}:{port}"

    def launch(self, port: int, workdir: Path) -> Launch:
        temp, link = _short_dir(workdir / "tmp")
        cpus = os.environ.get("RADFM_RAY_NUM_CPUS") or str(os.cpu_count() or 1)
        store_mb = int(os.environ.get("RADFM_RAY_OBJECT_STORE_MB") or 1024)
        # --block keeps `ray start` as the group leader that owns GCS/raylet, so stopping the group stops Ray
        # without `ray stop` (which would kill every Ray of this user, other engineers' tests included).
        # Ports that default to fixed numbers (dashboard 8265, agent 52365, autoscaler metrics 44217) get free
        # ones, so two heads on one machine never collide.
        cmd = [console_script("ray"), "start", "--head", "--block", "--node-ip-address", HOST,
               "--port", str(port), "--num-cpus", str(cpus), "--object-store-memory", str(store_mb * 2**20),
               "--include-dashboard=false", "--dashboard-port", str(free_port()),
               "--dashboard-agent-listen-port", str(free_port()), "--metrics-export-port", str(free_port()),
               "--disable-usage-stats", "--temp-dir", str(temp)]
        env = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
               # Keeps the node (and its advertised address) on 127.0.0.1 instead of the first interface.
               "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
               # A local head has no replicas to drain: SIGTERM shuts it down now, not after 30 s.
               "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
               "AUTOSCALER_METRIC_PORT": str(free_port())}
        return Launch(cmd, env, {"temp_link": str(link)} if link else {})

    def healthy(self, port: int, workdir: Path) -> bool:
        # The GCS listens before the raylet registers; the `ray start` banner comes once both are up.
        log = workdir / f"{self.name}.log"
        return tcp_open(port) and log.exists() and self.started_marker in log.read_text(errors="replace")

    def client_env(self, url: str) -> dict[str, str]:
        # A driver must pick the same loopback node IP as the head, or ray.init() waits for a raylet forever.
        return {"RAY_ADDRESS": url, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}

    def cleanup(self, extra: dict[str, str]) -> None:
        link = Path(extra["temp_link"]) if extra.get("temp_link") else None
        if link is not None and link.is_symlink():
            link.unlink()


class S3(Service):
    """moto's S3 API server (in memory: buckets vanish when it stops), dummy credentials."""

    name = "s3"
    title = "S3 API (moto server, in memory)"
    port_env = "RADFM_S3_PORT"
    # MinIO's port in infra/compose.yaml: the same endpoint URL works against either.
    default_port = 9000
    grace_s = 5.0

    def launch(self, port: int, workdir: Path) -> Launch:
        # moto answers every origin with Access-Control-Allow-Origin: * unless this is set.
        return Launch([sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
                      {"MOTO_DISABLE_GLOBAL_CORS": "true"})

    def healthy(self, port: int, workdir: Path) -> bool:
        # moto answers ListBuckets at / without checking the signature.
        return http_ok(f"{self.url(port)}/")

    def client_env(self, url: str) -> dict[str, str]:
        # RADFM_S3_ENDPOINT_URL is what radfm.data.versioning reads first; AWS_ENDPOINT_URL_S3 points botocore
        # tools that know nothing of radfm (aws cli, dvc, s3fs) at the same server.
        return {"RADFM_S3_ENDPOINT_URL": url, "AWS_ENDPOINT_URL_S3": url, **S3_DUMMY_CREDENTIALS}


def own_origins(port: int) -> list[str]:
    """The browser origins of a local web service on ``port``: its own UI, under either loopback name."""
    return [f"http://{name}:{port}" for name in LOOPBACK_NAMES]


def _short_dir(path: Path) -> tuple[Path, Path | None]:
    """``path`` itself, or a short symlink to it in the system temp dir when Ray's sockets would not fit."""
    path.mkdir(parents=True, exist_ok=True)
    if len(str(path)) <= _RAY_TEMP_MAX:
        return path, None
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    link = Path(tempfile.gettempdir()) / f"radfm-ray-{digest}"
    if link.is_symlink() and link.resolve() != path.resolve():
        link.unlink()
    if not link.is_symlink():
        link.symlink_to(path, target_is_directory=True)
    return link, link


SERVICES: dict[str, Service] = {s.name: s for s in (Mlflow(), Prefect(), Ray(), S3())}
