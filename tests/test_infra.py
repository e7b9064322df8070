"""infra/ cannot run here (no Docker, no Kubernetes): these tests parse the compose file, the Caddyfile, the
Kubernetes manifests and the Dockerfiles and check they agree with the code — image tags with constraints.txt,
ports with radfm.services, env names with what radfm reads, a health check on every long-running service — and
that the team server exposes nothing without TLS and a login, with every secret from infra/.env."""

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
# The local services the team server publishes (through the proxy); Ray has no login, so it publishes nothing.
PUBLISHED = ("mlflow", "prefect", "s3")
PROXY = "proxy"
# An environment variable that holds a secret, by its name.
SECRET_NAME = re.compile(r"PASSWORD|SECRET|AUTH_STRING|TOKEN|ACCESS_KEY")
# The whole value is one reference to infra/.env that refuses to start when the variable is unset.
ENV_REF = re.compile(r"\$\{\w+:\?[^}]*\}")
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


def _caddy_sites() -> dict[int, str]:
    """Container port → the body of its site block in infra/proxy/Caddyfile (snippets expanded)."""
    text = (INFRA / "proxy" / "Caddyfile").read_text()
    blocks: dict[str, str] = {}
    depth, head, body = 0, "", []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if depth == 0 and line.endswith("{"):  # a block opens: global options "", a snippet "(x)" or a site
            head, body = line[:-1].strip(), []
        elif not (depth == 1 and line == "}"):
            body.append(line)
        depth += line.count("{") - line.count("}")  # "{$VAR}" placeholders count zero
        if depth == 0 and head:
            blocks[head] = "\n".join(body)
            head = ""
    snippets = {h[1:-1]: b for h, b in blocks.items() if h.startswith("(")}
    sites = {}
    for address, body in blocks.items():
        if m := re.fullmatch(r"https://\{\$RADFM_SERVER_NAME\}:(\d+)", address):
            sites[int(m[1])] = re.sub(r"import (\S+)", lambda i: snippets[i[1]], body)
    return sites


def _published(service: dict[str, Any]) -> list[tuple[str, int]]:
    """(host part, container port) of each ``ports`` entry."""
    result = []
    for entry in service.get("ports") or []:
        host, _, container = str(entry).rpartition(":")
        result.append((host, int(container.split("/")[0])))
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
    assert {"mlflow", "prefect", "ray", "postgres", "minio", "mc", "caddy"} <= repos


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
    example = (INFRA / "env.example").read_text()
    assert f"{spec.port_env}={spec.default_port}" in example
    target = compose["services"][COMPOSE_OF[name]]
    assert not target.get("ports"), f"{COMPOSE_OF[name]} publishes ports of its own: only the proxy may"
    ports = compose["services"][PROXY]["ports"]
    expected = f"${{{spec.port_env}:-{spec.default_port}}}:{spec.default_port}"
    if name not in PUBLISHED:
        assert not any(str(p).endswith(f":{spec.default_port}") for p in ports), f"{name} has no login"
        return
    assert expected in ports, f"the proxy should publish {expected} (radfm/services/specs.py)"
    # ...and that port of the proxy leads to this service, at the port the service listens on in the network.
    site = _caddy_sites()[spec.default_port]
    assert f"reverse_proxy {COMPOSE_OF[name]}:{spec.default_port}" in site


def test_every_published_port_goes_through_the_tls_proxy(compose) -> None:
    services = compose["services"]
    for name, svc in services.items():
        assert svc.get("network_mode") != "host", f"{name} shares the host's network: its ports bypass the proxy"
        if name != PROXY:
            assert not svc.get("ports"), f"{name} publishes {svc['ports']}: publish it through the proxy"
    proxy = services[PROXY]
    assert proxy["image"].startswith("caddy:")
    sites = _caddy_sites()
    published = _published(proxy)
    assert published and {port for _, port in published} == set(sites), "a published port without a site"
    for port, site in sites.items():
        # TLS from the operator's files (no plain-HTTP site, no certificate fetched from the internet)...
        assert "tls /certs/tls.crt /certs/tls.key" in site, f"site :{port} serves no operator certificate"
        # ...to a service of this file.
        upstream = re.search(r"reverse_proxy (\S+):\d+", site)
        assert upstream and upstream[1] in services, f"site :{port} proxies to no service"
    mounts = {str(v).rsplit(":", 2)[1]: str(v).rsplit(":", 2)[0] for v in proxy["volumes"] if ":" in str(v)}
    assert ENV_REF.fullmatch(mounts["/certs/tls.crt"]) and "RADFM_TLS_CERT" in mounts["/certs/tls.crt"]
    assert ENV_REF.fullmatch(mounts["/certs/tls.key"]) and "RADFM_TLS_KEY" in mounts["/certs/tls.key"]
    assert mounts["/etc/caddy/Caddyfile"] == "./proxy/Caddyfile"
    assert _env(proxy)["RADFM_SERVER_NAME"].startswith("${RADFM_SERVER_NAME:?")
    # The proxy starts once what it fronts answers.
    upstreams = {re.search(r"reverse_proxy (\S+):", s)[1] for s in sites.values()}
    assert upstreams <= set(proxy["depends_on"])


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
    defined = dict(re.findall(r"^(\w+)=(.*)$", example, re.M))
    assert used <= set(defined), f"not in infra/env.example: {sorted(used - set(defined))}"
    envs = {name: _env(svc) for name, svc in compose["services"].items()}
    envs["x-radfm-client-env"] = {k: str(v) for k, v in compose["x-radfm-client-env"].items()}
    secrets = set()
    for name, env in envs.items():
        for key, value in env.items():
            if SECRET_NAME.search(key):
                assert ENV_REF.fullmatch(value), f"{name}: {key}={value!r} must be one ${{VAR:?…}} from infra/.env"
                secrets.add(re.match(r"\$\{(\w+)", value)[1])
            # A URL's password (a database URI) is a reference too, never a literal.
            for userinfo in re.findall(r"://[^/@\s]*:([^/@\s]*)@", value):
                assert ENV_REF.fullmatch(userinfo), f"{name}: {key} has a literal password in its URL"
    # Commands carry no secret either, and the example file carries only placeholders.
    for name, svc in compose["services"].items():
        command = " ".join(svc.get("command") or []) if isinstance(svc.get("command"), list) else svc.get("command")
        assert not re.search(r"(password|secret|token)[= ]+[^$\s\"]", command or "", re.I), name
    assert {"POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "MLFLOW_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY",
            "PREFECT_AUTH_STRING"} <= secrets
    for var in secrets - {"MINIO_ROOT_USER", "MLFLOW_ADMIN_USERNAME"}:
        assert "change-me" in defined[var], f"infra/env.example must hold a placeholder for {var}"
    ignored = (INFRA / ".gitignore").read_text().split()
    assert ".env" in ignored and "tls/" in ignored


def test_mlflow_runs_basic_auth_with_credentials_from_the_env_file(compose) -> None:
    svc = compose["services"]["mlflow"]
    env = _env(svc)
    command = " ".join(svc["command"])
    assert "mlflow server --app-name basic-auth" in command
    for key in ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert ENV_REF.fullmatch(env[key]), f"{key} must come from infra/.env"
    # The auth config is a mounted file of this repository, with no credentials in it, and its user database
    # lives on a volume (users outlive the container).
    mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in svc["volumes"]}
    ini_path = mounts[env["MLFLOW_AUTH_CONFIG_PATH"]]
    ini = (INFRA / ini_path).read_text()
    assert not re.search(r"^\s*admin_(password|username)\s*=", ini, re.M)
    db = re.search(r"^database_uri = sqlite:///(/\S+)/basic_auth.db$", ini, re.M)
    assert db and mounts[db[1]] in compose["volumes"]
    assert '"Flask-WTF==' in (INFRA / "images" / "mlflow.Dockerfile").read_text()  # mlflow[auth]
    # Host header and CORS: the server's own name only, never "*".
    assert "--allowed-hosts \"$$ALLOWED_HOSTS\"" in command and "--cors-allowed-origins \"$$CORS_ORIGINS\"" in command
    assert "*" not in env["CORS_ORIGINS"] and not env["ALLOWED_HOSTS"].startswith("*")
    # Every radfm process that talks to MLflow signs in.
    for name in ("prefect-worker", "ray-head", "ray-worker"):
        client = _env(compose["services"][name])
        assert client["MLFLOW_TRACKING_USERNAME"] == env["MLFLOW_AUTH_ADMIN_USERNAME"], name
        assert client["MLFLOW_TRACKING_PASSWORD"] == env["MLFLOW_AUTH_ADMIN_PASSWORD"], name


def test_prefect_server_and_clients_share_the_auth_string(compose) -> None:
    services = compose["services"]
    server = _env(services["prefect-server"])
    auth = server["PREFECT_SERVER_API_AUTH_STRING"]
    assert ENV_REF.fullmatch(auth)
    clients = {name: _env(svc) for name, svc in services.items() if "PREFECT_API_URL" in _env(svc)}
    assert "prefect-worker" in clients
    for name, env in clients.items():
        assert env.get("PREFECT_API_AUTH_STRING") == auth, f"{name} calls the Prefect API without its auth string"
    assert compose["x-radfm-client-env"]["PREFECT_API_AUTH_STRING"] == auth
    # The UI calls the API through the proxy, and no other origin may.
    assert server["PREFECT_UI_API_URL"].startswith("https://")
    assert server["PREFECT_SERVER_CORS_ALLOWED_ORIGINS"] == server["PREFECT_UI_API_URL"].removesuffix("/api")


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


def test_the_make_targets_the_scripts_name_exist() -> None:
    """A script that tells the user to run ``make X`` names a target the Makefile has (one said ``make install``,
    which it never had). ``make -n`` only prints what it would run."""
    import shutil
    import subprocess

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    named = {t for f in INFRA.rglob("*.sh") for t in re.findall(r"[`'\"]make ([\w./-]+)", f.read_text())}
    assert named, "no `make …` instruction found under infra/: the pattern no longer reads the scripts"
    for target in sorted(named):
        out = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, f"`make {target}` named in infra/: {out.stderr.strip()}"
