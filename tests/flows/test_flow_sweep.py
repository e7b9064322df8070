"""The radfm-sweep flow: a real Hydra multirun (child process, MLflow parent + child runs), then the best trial
downloaded from MLflow, benchmarked and registered as challenger."""

from __future__ import annotations

import mlflow

from flows.params import EvalSpec
from flows.sweep import SweepParams, base_overrides, radfm_sweep


def test_base_overrides_drop_the_sweep_itself():
    assert base_overrides(["experiment=demo_tiny", "hparams_search=optuna", "hydra.sweeper.n_trials=2",
                           "optim.lr=1e-4,3e-4", "seed=2"]) == ["experiment=demo_tiny", "seed=2"]


def test_sweep_registers_its_best_trial(prefect_harness, pipeline_overrides, flow_home, tmp_path):
    overrides = pipeline_overrides("optim.lr=1e-4,3e-3",
                                   data_dir=flow_home / "data")
    result = radfm_sweep(SweepParams(overrides=overrides, model_name="radfm-sweep",
                                     eval=EvalSpec(batch_size=8, max_new_tokens=16, embedding=False, ablate=False)))
    c = mlflow.MlflowClient(tracking_uri=f"sqlite:///{flow_home}/mlflow.db")
    best = c.get_run(result["best_run_id"])
    assert best.data.tags.get("radfm.sweep.job_num") in {"0", "1"}
    parent = c.get_run(best.data.tags["mlflow.parentRunId"])
    assert parent.data.tags["radfm.sweep.best_run_id"] == result["best_run_id"]
    mv = c.get_model_version("radfm-sweep", result["version"])
    assert mv.run_id == result["best_run_id"] and mv.aliases == ["challenger"]
