"""The pipeline against the local services of `radfm services up` (infra/local): the data comes from a DVC remote
on the S3 API, tracking and the registry go over HTTP to `mlflow server`, the flow reports to `prefect server`,
training runs on the Ray head — then everything stops and no process is left behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import mlflow
import psutil
import pytest

from tests.flows.conftest import FAST

ROOT = Path(__file__).resolve().parents[2]


def _git_repo(path: Path) -> Path:
    path.mkdir()
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "t@example.org"],
                ["git", "config", "user.name", "radfm tests"], ["git", "config", "commit.gpgsign", "false"]):
        subprocess.run(cmd, cwd=path, check=True, capture_output=True)
    return path


@pytest.mark.timeout(900)
def test_pipeline_on_local_services(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    import boto3

    from radfm import services
    from radfm.data import versioning
    from radfm.data.synth import SynthConfig, generate
    from radfm.services.process import free_port

    ports = {name: free_port() for name in ("mlflow", "prefect", "ray", "s3")}
    with services.running(home=tmp_path / "services", ports=ports) as endpoints:
        pids = [e.pid for e in endpoints.values()]
        env = {**os.environ, **services.client_env(endpoints), "RADFM_HOME": str(tmp_path / "home")}
        env.pop("PREFECT_HOME", None)
        s3_url = endpoints["s3"].url

        # A dataset versioned by DVC and pushed to the S3 API, then wiped here: the flow must pull it.
        repo = _git_repo(tmp_path / "repo")
        versioning.init_repo(repo)
        generate(SynthConfig(n_samples=48, seed=0, variant="easy", image_size=64, depth=16), repo / "data")
        boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1", aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                     aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"]).create_bucket(Bucket="radfm-dvc")
        versioning.configure_remote(repo, "s3://radfm-dvc/store", endpoint_url=s3_url)
        old = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
        os.environ.update({k: env[k] for k in old})
        try:
            version = versioning.add(repo, "data")
            versioning.push(repo)
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        shutil.rmtree(repo / "data")
        shutil.rmtree(repo / ".dvc" / "cache")

        out = tmp_path / "result.json"
        overrides = [f"paths.home={tmp_path / 'home'}", *FAST, "trainer=ray", "trainer.ray.num_workers=1",
                     "trainer.ray.checkpoint_every_n_steps=2"]
        # A 4-step model cannot show it learns from the images: promoting it takes an explicit, relaxed gate.
        gate = tmp_path / "gate.yaml"
        gate.write_text("baselines: false\n")
        cmd = [sys.executable, "-m", "flows.pipeline", "--data-kind", "dvc", "--data-repo", str(repo),
               "--data-version", version, "--eval-limit", "40", "--gate", str(gate), "--json", str(out), *overrides]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=800)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
        result = json.loads(out.read_text())
        assert result["data_version"] == version
        assert result["tracking_uri"] == endpoints["mlflow"].url

        # Tracking and the registry are on the server, over HTTP.
        client = mlflow.MlflowClient(tracking_uri=endpoints["mlflow"].url)
        champion = client.get_model_version_by_alias("radfm", "champion")
        assert str(champion.version) == result["version"]
        assert champion.tags["radfm.data_version"] == version
        run = client.get_run(result["run_id"])
        assert run.data.tags["radfm.data_version"] == version
        assert any(k.startswith("radbench/tasks/") for k in run.data.metrics)

        # The flow run is recorded by the Prefect server.
        runs = httpx.post(f"{env['PREFECT_API_URL']}/flow_runs/filter", json={}, timeout=10).json()
        assert any(r["state_type"] == "COMPLETED" for r in runs), runs
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
