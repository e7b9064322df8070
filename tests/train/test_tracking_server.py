"""A remote MLflow tracking server (real `mlflow server` on loopback) receives a run like the local store."""

from __future__ import annotations

import time

import mlflow
import pytest

from radfm.registry.tracking import check_server
from radfm.train.train import train
from tests.mlflow_server import free_port


def test_training_logs_to_a_remote_server(make_cfg, mlflow_server):
    cfg = make_cfg(f"paths.mlflow_uri={mlflow_server.uri}", "trainer.max_steps=3", "run_name=remote")
    metrics = train(cfg)
    client = mlflow.MlflowClient(tracking_uri=mlflow_server.uri)
    run = client.get_run(metrics["run_id"])
    assert run.info.status == "FINISHED"
    assert "train/loss" in run.data.metrics and run.data.tags["radfm.model_preset"] == "tiny"
    paths = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert "model/model.safetensors" in paths
    # artifacts went through the server into its own artifact store, not into the working directory
    assert any((mlflow_server.root / "artifacts").rglob("model.safetensors"))


def test_dead_server_fails_fast():
    uri = f"http://127.0.0.1:{free_port()}"
    t0 = time.perf_counter()
    with pytest.raises(ConnectionError, match="not reachable"):
        check_server(uri)
    assert time.perf_counter() - t0 < 10
