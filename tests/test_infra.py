"""infra/ cannot run here (no Docker, no Kubernetes): these tests parse the compose file, the Kubernetes
manifests and the Dockerfiles and check they agree with the code — image tags with constraints.txt, ports
with radfm.services, env names with what radfm reads, a health check on every long-running service."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from radfm.services.specs import SERVICES

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
# Where each local service lives in infra/compose.yaml.
COMPOSE_OF = {"mlflow": "mlflow", "prefect": "prefect-server", "ray": "ray-head", "s3": "minio"}
# What every radfm process of the team server needs: the variables `client_env` emits, less the two that only
# matter on one machine (a loopback Ray node, and botocore tools outside radfm).
CLIENT_VARS = {"MLFLOW_TRACKING_URI", "PREFECT_API_URL", "RAY_ADDRESS", "RADFM_S3_ENDPOINT_URL",
               "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"}
TEMPLATE_VAR = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        name, sep, version = line.strip().partition("==")
        if sep:
            pins[name.lower()] = version.strip()
    return pins


PINS = _pins()
MLFLOW, PREFECT, RAY = PINS["mlflow"], PINS["prefect"], PINS["ray"]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((INFRA / "compose.yaml").read_text())


@pytest.fixture(scope="module")
def k8s() -> list[dict[str, Any]]:
    docs = []
    for path in sorted((INFRA / "k8s").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _kind(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''} in infra/k8s, found {len(found)}"
    return found[0]


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # KEY=VALUE form
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _images(node: Any) -> list[str]:
    """Every ``image:`` value and every image-looking build arg anywhere under ``node``."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, str) and (key == "image" or key.endswith("_IMAGE")):
                found.append(value)
            else:
                found += _images(value)
    elif isinstance(node, list):
        for item in node:
            found += _images(item)
    return found


def _dockerfile_images() -> dict[str, list[str]]:
    """Per Dockerfile: its FROM images with ARG defaults substituted."""
    result = {}
    for path in sorted((INFRA / "images").glob("*.Dockerfile")):
        args, froms = {}, []
        for line in path.read_text().splitlines():
            if m := re.match(r"ARG (\w+)=(\S+)", line):
                args[m[1]] = m[2]
            elif m := re.match(r"FROM (\S+)", line):
                froms.append(re.sub(r"\$\{(\w+)\}", lambda a, known=args: known[a[1]], m[1]))
        result[path.name] = froms
    return result


def _check_image_tag(image: str) -> None:
    name, _, tag = image.rpartition(":")
    assert name and "/" not in tag, f"{image}: no explicit tag"
    assert tag != "latest" and "latest" not in image, f"{image}: `latest` is not reproducible"
    repo = name.split("/")[-1]
    if repo == "mlflow":
        assert tag in (MLFLOW, f"v{MLFLOW}"), f"{image}: constraints.txt pins mlflow {MLFLOW}"
    if repo == "prefect":
        assert tag.startswith(f"{PREFECT}-python3.11"), f"{image}: constraints.txt pins prefect {PREFECT}, py3.11"
    if repo == "ray":
        assert tag.startswith(f"{RAY}-py311"), f"{image}: constraints.txt pins ray {RAY}, Python 3.11"


# ---- images --------------------------------------------------------------------------------------------
def test_every_image_is_pinned_and_matches_constraints(compose, k8s) -> None:
    images = _images(compose) + _images(k8s) + [i for f in _dockerfile_images().values() for i in f]
    pool = json.loads((INFRA / "k8s" / "prefect-work-pool.json").read_text())
    images.append(pool["variables"]["properties"]["image"]["default"])
    for image in images:
        _check_image_tag(image)
    repos = {i.rpartition(":")[0].split("/")[-1] for i in images}
    assert {"mlflow", "prefect", "ray", "postgres", "minio", "mc"} <= repos


def test_dockerfiles_start_from_the_pinned_versions() -> None:
    froms = _dockerfile_images()
    assert froms["mlflow.Dockerfile"] == [f"ghcr.io/mlflow/mlflow:v{MLFLOW}"]
    assert froms["radfm.Dockerfile"] == [f"prefecthq/prefect:{PREFECT}-python3.11"]
    assert froms["ray.Dockerfile"] == [f"rayproject/ray:{RAY}-py311"]
    text = (INFRA / "images" / "radfm.Dockerfile").read_text()
    assert f"ray[client]=={RAY}" in text and "-c constraints.txt" in text
    # The build context is the repository root: the local venv and data must stay out of the images.
    for name in ("radfm", "ray"):
        ignored = (INFRA / "images" / f"{name}.Dockerfile.dockerignore").read_text().split()
        assert {".venv", ".radfm", "data", ".git"} <= set(ignored)


def test_built_images_are_tagged_with_their_version(compose) -> None:
    import radfm

    svc = compose["services"]
    assert svc["mlflow"]["build"]["args"]["MLFLOW_VERSION"] == MLFLOW
    assert svc["prefect-worker"]["image"] == f"radfm/radfm:{radfm.__version__}"
    for name in ("ray-head", "ray-worker"):
        assert svc[name]["build"]["dockerfile"] == "infra/images/ray.Dockerfile"


# ---- ports ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(SERVICES))
def test_compose_ports_use_the_local_port_variables_and_defaults(compose, name) -> None:
    spec = SERVICES[name]
    ports = compose["services"][COMPOSE_OF[name]]["ports"]
    expected = f"${{{spec.port_env}:-{spec.default_port}}}:{spec.default_port}"
    assert expected in ports, f"{COMPOSE_OF[name]} should publish {expected} (radfm/services/specs.py)"
    example = (INFRA / "env.example").read_text()
    assert f"{spec.port_env}={spec.default_port}" in example


def test_local_readme_documents_every_port(compose) -> None:
    readme = (INFRA / "local" / "README.md").read_text()
    for spec in SERVICES.values():
        assert spec.port_env in readme and str(spec.default_port) in readme


def test_compose_clients_use_the_container_ports(compose) -> None:
    env = compose["x-radfm-client-env"]
    assert env["MLFLOW_TRACKING_URI"] == f"http://mlflow:{SERVICES['mlflow'].default_port}"
    assert env["PREFECT_API_URL"] == f"http://prefect-server:{SERVICES['prefect'].default_port}/api"
    assert env["RADFM_S3_ENDPOINT_URL"] == f"http://minio:{SERVICES['s3'].default_port}"
    head = compose["services"]["ray-head"]
    assert f"--port={SERVICES['ray'].default_port}" in head["command"]
    assert "--ray-client-server-port=10001" in head["command"]
    assert env["RAY_ADDRESS"] == "ray://ray-head:10001"
    assert "--address=ray-head:6379" in compose["services"]["ray-worker"]["command"]


# ---- env wiring ----------------------------------------------------------------------------------------
def test_the_client_variables_are_the_ones_radfm_reads(monkeypatch) -> None:
    from radfm import services
    from radfm.data.versioning import ENDPOINT_ENV, endpoint_from_env
    from radfm.registry.registry import default_tracking_uri

    endpoints = {n: services.Endpoint(n, SERVICES[n].url(p), p, 1, Path("log"), Path("w"))
                 for n, p in {"mlflow": 1, "prefect": 2, "ray": 3, "s3": 4}.items()}
    emitted = services.client_env(endpoints)
    assert set(emitted) >= CLIENT_VARS
    for key in [*ENDPOINT_ENV, "MLFLOW_TRACKING_URI"]:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", emitted["MLFLOW_TRACKING_URI"])
    monkeypatch.setenv("RADFM_S3_ENDPOINT_URL", emitted["RADFM_S3_ENDPOINT_URL"])
    assert default_tracking_uri() == emitted["MLFLOW_TRACKING_URI"]
    assert endpoint_from_env() == emitted["RADFM_S3_ENDPOINT_URL"]
    assert "oc.env:RAY_ADDRESS" in (ROOT / "conf" / "trainer" / "ray.yaml").read_text()
    assert "oc.env:MLFLOW_TRACKING_URI" in (ROOT / "conf" / "paths" / "default.yaml").read_text()


def test_compose_wires_the_client_env_into_radfm_processes(compose) -> None:
    assert set(compose["x-radfm-client-env"]) >= CLIENT_VARS
    worker = _env(compose["services"]["prefect-worker"])
    assert set(worker) >= CLIENT_VARS
    # prefect.yaml's pull step changes into {{ $RADFM_REPO }}; the worker serves the pool its deployments name.
    prefect_yaml = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    assert worker["RADFM_REPO"] == "/opt/radfm"
    pools = {d["work_pool"]["name"] for d in prefect_yaml["deployments"]}
    command = compose["services"]["prefect-worker"]["command"]
    assert pools == {command[command.index("--pool") + 1]}
    assert command[command.index("--type") + 1] == "process"
    ray_worker = _env(compose["services"]["ray-worker"])
    assert {"MLFLOW_TRACKING_URI", "RADFM_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID"} <= set(ray_worker)


def test_mlflow_uses_postgres_and_minio(compose) -> None:
    svc = compose["services"]["mlflow"]
    env = _env(svc)
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert env["BACKEND_URI"].startswith("postgresql://") and "@postgres:5432/mlflow" in env["BACKEND_URI"]
    assert env["ARTIFACTS"].startswith("s3://")
    assert "--serve-artifacts" in " ".join(svc["command"])
    prefect = _env(compose["services"]["prefect-server"])
    assert prefect["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    assert prefect["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert "CREATE DATABASE prefect" in (INFRA / "postgres" / "init.sql").read_text()


def test_secrets_come_from_the_env_file_only(compose) -> None:
    text = (INFRA / "compose.yaml").read_text()
    used = set(re.findall(r"\$\{(\w+)", text))
    example = (INFRA / "env.example").read_text()
    defined = set(re.findall(r"^(\w+)=", example, re.M))
    assert used <= defined, f"not in infra/env.example: {sorted(used - defined)}"
    for service in compose["services"].values():
        for key, value in _env(service).items():
            if "PASSWORD" in key or "SECRET" in key:
                assert value.startswith("${") and ":?" in value, f"{key} must come from infra/.env"
    assert ".env" in (INFRA / ".gitignore").read_text().split()


# ---- health checks -------------------------------------------------------------------------------------
def test_every_compose_service_has_a_healthcheck(compose) -> None:
    services = compose["services"]
    for name, svc in services.items():
        if svc.get("restart") == "no":  # a one-shot job: its dependants wait for it to finish instead
            dependants = [s for s in services.values() if name in (s.get("depends_on") or {})]
            assert dependants and all(s["depends_on"][name]["condition"] == "service_completed_successfully"
                                      for s in dependants), name
            continue
        assert svc.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services
            assert cond["condition"] in ("service_healthy", "service_completed_successfully")


def test_every_k8s_container_has_probes(k8s) -> None:
    containers = []
    cluster = _kind(k8s, "RayCluster")
    containers += cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"]
    for group in cluster["spec"]["workerGroupSpecs"]:
        containers += group["template"]["spec"]["containers"]
    containers += _kind(k8s, "Deployment", "prefect-worker")["spec"]["template"]["spec"]["containers"]
    for container in containers:
        assert container.get("readinessProbe") and container.get("livenessProbe"), container["name"]


# ---- kubernetes ----------------------------------------------------------------------------------------
def test_raycluster_matches_the_ray_version_and_has_cpu_and_gpu_groups(k8s) -> None:
    cluster = _kind(k8s, "RayCluster")
    assert cluster["apiVersion"] == "ray.io/v1"
    assert cluster["spec"]["rayVersion"] == RAY
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in head["ports"]}
    assert ports["gcs"] == SERVICES["ray"].default_port and ports["client"] == 10001
    groups = {g["groupName"]: g for g in cluster["spec"]["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    gpu = groups["gpu"]["template"]["spec"]["containers"][0]
    assert gpu["image"].endswith("-gpu") and gpu["resources"]["limits"]["nvidia.com/gpu"] == "1"
    cpu = groups["cpu"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in cpu["resources"]["limits"] and not cpu["image"].endswith("-gpu")
    for group in groups.values():
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


def test_k8s_env_wiring_points_at_the_cluster(k8s) -> None:
    config = _kind(k8s, "ConfigMap", "radfm-env")["data"]
    assert CLIENT_VARS - {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(config)
    cluster = _kind(k8s, "RayCluster")
    assert config["RAY_ADDRESS"] == f"ray://{cluster['metadata']['name']}-head-svc:10001"
    assert config["PREFECT_API_URL"].endswith("/api")
    # Everything lives in one namespace, the one the work pool's Jobs default to.
    pool = json.loads((INFRA / "k8s" / "prefect-work-pool.json").read_text())
    namespaces = {d["metadata"].get("namespace") for d in k8s if d["kind"] != "Namespace"}
    assert namespaces == {pool["variables"]["properties"]["namespace"]["default"]}
    # The RayCluster's containers and the flow-run Jobs read the same ConfigMap and Secret.
    job = pool["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    refs = {next(iter(ref.values()))["name"] for ref in job["envFrom"]}
    assert refs == {"radfm-env", "radfm-s3-credentials"}
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {next(iter(ref.values()))["name"] for ref in head["envFrom"]} == refs


def test_prefect_worker_and_work_pool_template(k8s) -> None:
    deployment = _kind(k8s, "Deployment", "prefect-worker")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == f"prefecthq/prefect:{PREFECT}-python3.11-kubernetes"
    command = container["command"]
    assert command[command.index("--type") + 1] == "kubernetes" and "--with-healthcheck" in command
    assert command[command.index("--pool") + 1] == "radfm-kubernetes"
    env = {e["name"]: e for e in container["env"]}
    assert env["PREFECT_API_URL"]["valueFrom"]["configMapKeyRef"]["name"] == "radfm-env"
    binding = _kind(k8s, "RoleBinding", "prefect-worker")
    assert binding["subjects"][0]["name"] == pod["serviceAccountName"]
    rules = _kind(k8s, "Role", "prefect-worker")["rules"]
    assert any("jobs" in r["resources"] and "create" in r["verbs"] for r in rules)

    pool = json.loads((INFRA / "k8s" / "prefect-work-pool.json").read_text())
    declared = set(pool["variables"]["properties"])
    used = set(TEMPLATE_VAR.findall(json.dumps(pool["job_configuration"])))
    assert used <= declared, f"undeclared template variables: {sorted(used - declared)}"
    assert pool["job_configuration"]["job_manifest"]["kind"] == "Job"


# ---- local scripts -------------------------------------------------------------------------------------
@pytest.mark.parametrize("action", ["up", "down", "status"])
def test_local_scripts_call_radfm_services(action) -> None:
    script = INFRA / "local" / f"{action}.sh"
    assert os.access(script, os.X_OK), f"{script} is not executable"
    assert f'services {action} "$@"' in script.read_text()
