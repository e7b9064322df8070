"""Hydra multirun for real (``python -m radfm.train -m``): MLflow parent + child runs, the best trial, Optuna resume."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "data.synth.n_samples=24", "data.batch_size_2d=4", "data.batch_size_3d=2",
    "trainer.max_steps=4", "trainer.val_check_interval=3", "trainer.limit_val_batches=2",
    "callbacks.checkpoint_every_n_steps=2", "trainer.log_every_n_steps=1", "logger.log_system_metrics=false",
]

pytestmark = [pytest.mark.timeout(400),
              # hydra-optuna-sweeper 1.3 builds Optuna's pre-3.0 distributions (still accepted by Optuna 5).
              pytest.mark.filterwarnings("ignore:.*Distribution has been deprecated:FutureWarning")]


@pytest.fixture(scope="module")
def sweep_data_dir(tmp_path_factory) -> Path:
    """One MedMD-synth for every sweep here (the first job generates it)."""
    return tmp_path_factory.mktemp("sweep_data")


def multirun(home: Path, data_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RADFM_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("RADFM_MLFLOW_PARENT_RUN_ID", None)
    cmd = [sys.executable, "-m", "radfm.train", "-m", *overrides, f"paths.home={home}",
           f"paths.data_dir={data_dir}", f"paths.mlflow_uri=sqlite:///{home}/mlflow.db", *TINY]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=360)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    # Hydra turns a callback's exception into a warning: a broken callback must still fail the test.
    assert "Callback" not in proc.stderr or " raised " not in proc.stderr, proc.stderr[-5000:]
    return proc


def runs_of(home: Path) -> tuple[list, list]:
    """(sweep parent runs, child runs) in the ``radfm`` experiment."""
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{home}/mlflow.db")
    exp = client.get_experiment_by_name("radfm")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("radfm.sweep") == "true"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) + len(children) == len(runs)
    return parents, children


def best_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("best trial:")]


def check_parent(parent, children, metric: str = "val/loss") -> None:
    """The parent finished and names the child with the lowest metric, with its params and value."""
    assert parent.info.status == "FINISHED"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert all(c.info.status == "FINISHED" for c in children)
    best = min(children, key=lambda c: c.data.metrics[metric])
    tags = parent.data.tags
    assert tags["radfm.sweep.best_run_id"] == best.info.run_id
    assert tags["radfm.sweep.n_trials"] == str(len(children)) and tags["radfm.sweep.n_failed"] == "0"
    assert parent.data.metrics[f"best/{metric}"] == pytest.approx(best.data.metrics[metric])
    assert float(parent.data.params["best.optim.lr"]) == pytest.approx(float(best.data.params["cfg.optim.lr"]))


def test_basic_multirun_has_parent_children_and_best_trial(tmp_path, sweep_data_dir):
    home = tmp_path / "home"
    proc = multirun(home, sweep_data_dir, "optim.lr=1e-4,3e-4")

    parents, children = runs_of(home)
    assert len(parents) == 1 and len(children) == 2
    parent = parents[0]
    assert sorted(float(c.data.params["cfg.optim.lr"]) for c in children) == pytest.approx([1e-4, 3e-4])
    assert sorted(c.data.tags["radfm.sweep.job_num"] for c in children) == ["0", "1"]
    assert parent.data.params["sweep.space.optim.lr"] == "1e-4,3e-4"
    assert parent.data.params["sweep.sweeper"] == "basic"
    check_parent(parent, children)

    lines = best_lines(proc.stdout)
    assert len(lines) == 1, proc.stdout[-3000:]
    best_id = parent.data.tags["radfm.sweep.best_run_id"]
    assert best_id in lines[0] and "val/loss=" in lines[0] and "optim.lr=" in lines[0]
    assert "paths.home" not in lines[0]  # only what the sweep varies


def test_optuna_sweep_is_tracked_and_resumes_its_study(tmp_path, sweep_data_dir):
    import optuna

    home = tmp_path / "home"  # not created yet: the sweep makes the SQLite folder itself
    storage = f"sqlite:///{home}/optuna.db"
    proc = multirun(home, sweep_data_dir, "hparams_search=optuna", "hydra.sweeper.n_trials=2")

    study = optuna.load_study(study_name="radfm-train", storage=storage)
    first = study.get_trials(deepcopy=False)
    assert [t.state for t in first] == [optuna.trial.TrialState.COMPLETE] * 2
    parents, children = runs_of(home)
    assert len(parents) == 1 and len(children) == 2
    assert parents[0].data.params["sweep.sweeper"] == "optuna"
    assert parents[0].data.params["sweep.space.optim.lr"] == "tag(log, interval(1e-4, 3e-3))"
    check_parent(parents[0], children)
    # Optuna's objective is what each job returned: the child's val/loss.
    assert sorted(t.value for t in first) == pytest.approx(sorted(c.data.metrics["val/loss"] for c in children))
    assert len(best_lines(proc.stdout)) == 1

    proc = multirun(home, sweep_data_dir, "hparams_search=optuna", "hydra.sweeper.n_trials=1")

    trials = optuna.load_study(study_name="radfm-train", storage=storage).get_trials(deepcopy=False)
    assert len(trials) == 3 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    # The resumed sweep samples a new point instead of replaying the first sweep's seed.
    assert trials[2].params not in [t.params for t in first]
    parents, children = runs_of(home)
    assert len(parents) == 2 and len(children) == 3
    second = max(parents, key=lambda r: r.info.start_time)
    mine = [c for c in children if c.data.tags["mlflow.parentRunId"] == second.info.run_id]
    assert len(mine) == 1
    check_parent(second, mine)
    assert second.data.tags["radfm.sweep.best_run_id"] in best_lines(proc.stdout)[0]


def test_run_tracker_links_to_the_parent_named_by_the_environment(tmp_path, monkeypatch):
    """No active run in this process: the env var alone nests the run; an unknown id leaves it top-level."""
    from radfm.registry.tracking import PARENT_RUN_ENV, RunTracker

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment("radfm", artifact_location=(tmp_path / "art").as_uri())
    parent = client.create_run(exp_id, run_name="sweep").info.run_id
    assert mlflow.active_run() is None

    monkeypatch.setenv(PARENT_RUN_ENV, parent)
    child = RunTracker(True, tracking_uri=uri, tags={"radfm.sweep.job_num": "0"})
    mlflow.end_run()
    monkeypatch.setenv(PARENT_RUN_ENV, "0" * 32)
    orphan = RunTracker(True, tracking_uri=uri)
    mlflow.end_run()

    tags = client.get_run(child.run_id).data.tags
    assert tags["mlflow.parentRunId"] == parent and tags["radfm.sweep.job_num"] == "0"
    assert "mlflow.parentRunId" not in client.get_run(orphan.run_id).data.tags
