"""Hydra multirun sweeps in MLflow: one parent run per sweep, one child run per trial, the best trial reported.

``radfm train -m optim.lr=1e-4,3e-4`` (basic sweeper) and ``radfm train -m hparams_search=optuna`` (Optuna,
SQLite study under RADFM_HOME, resumable) both get :class:`MLflowSweepCallback` from
``conf/hydra/callbacks/mlflow_parent.yaml``. The parent's id reaches the jobs through ``RADFM_MLFLOW_PARENT_RUN_ID``
rather than MLflow's active-run stack, so the link holds whether a launcher runs jobs in this process or in others
that inherit its environment; :class:`radfm.registry.tracking.RunTracker` reads it and tags every job's run with
its Hydra job number, which is how the callback finds each trial's run again.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

BEST_LINE = "best trial:"


@dataclass
class Trial:
    """One job of the sweep as the parent run records it."""

    num: int
    overrides: list[str] = field(default_factory=list)
    completed: bool = True
    value: float | None = None
    run_id: str | None = None


class MLflowSweepCallback(Callback):
    """Parent MLflow run for a Hydra multirun; a no-op in single runs and with ``logger=none``."""

    def __init__(self) -> None:
        self.parent_run_id: str | None = None
        self.experiment_id: str | None = None
        self.client: Any = None
        self.metric = "val/loss"
        self.maximize = False
        self.space_keys: set[str] = set()
        self.trials: list[Trial] = []
        self._env_before: str | None = None

    # -- Hydra hooks ---------------------------------------------------------------------------------------------
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if OmegaConf.select(config, "logger.name", default="none") != "mlflow":
            return
        import mlflow
        from mlflow.entities import Param

        from radfm.registry.tracking import PARENT_RUN_ENV, check_server, ensure_experiment, git_commit

        lg = config.logger
        uri = lg.get("tracking_uri")
        check_server(uri or "")
        ensure_sqlite_dir(uri)
        mlflow.set_tracking_uri(uri)
        self.experiment_id = ensure_experiment(lg.get("experiment_name", "radfm"), lg.get("artifact_location"))
        self.client = mlflow.MlflowClient(uri)
        self.metric = str(config.get("optimized_metric") or "val/loss")
        direction = OmegaConf.select(config, "hydra.sweeper.direction", default="minimize")
        self.maximize = str(direction).lower().endswith("maximize")

        sweeper = config.hydra.sweeper
        kind = "optuna" if "optuna" in str(sweeper.get("_target_", "")).lower() else "basic"
        task = [str(o) for o in config.hydra.overrides.task]
        space = sweep_space(task, sweeper.get("params"))
        self.space_keys = set(space)
        params = {"sweep.sweeper": kind, "sweep.metric": self.metric,
                  "sweep.direction": "maximize" if self.maximize else "minimize",
                  "sweep.overrides": " ".join(task)[:5000] or "(none)",
                  **{f"sweep.space.{k}": v for k, v in space.items()}}
        tags = {"radfm.sweep": "true", "radfm.sweep.sweeper": kind, "radfm.git_commit": git_commit(),
                "radfm.sweep.dir": str(config.hydra.sweep.dir)}
        if kind == "optuna":
            params.update({"sweep.n_trials": str(sweeper.get("n_trials")),
                           "sweep.study_name": str(sweeper.get("study_name")),
                           "sweep.storage": str(sweeper.get("storage"))})
            tags.update({"radfm.sweep.study_name": str(sweeper.get("study_name")),
                         "radfm.sweep.storage": str(sweeper.get("storage"))})
        run = self.client.create_run(self.experiment_id, run_name=f"{config.run_name}-sweep", tags=tags)
        self.parent_run_id = run.info.run_id
        self.client.log_batch(self.parent_run_id, params=[Param(_key(k), str(v)[:6000]) for k, v in params.items()])
        self._env_before = os.environ.get(PARENT_RUN_ENV)
        os.environ[PARENT_RUN_ENV] = self.parent_run_id
        atexit.register(self._abandon)
        log.info("sweep parent MLflow run %s (experiment %s, %s)", self.parent_run_id,
                 lg.get("experiment_name"), uri)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if self.parent_run_id is None:
            return
        num = int(OmegaConf.select(config, "hydra.job.num", default=len(self.trials)))
        completed = job_return.status == JobStatus.COMPLETED
        if not completed:
            _end_orphaned_child(self.parent_run_id)
        trial = Trial(num, [str(o) for o in job_return.overrides or []], completed)
        child = self._child_run(num)
        trial.run_id = child.info.run_id if child is not None else None
        returned = _as_float(job_return._return_value) if completed else None
        trial.value = returned if returned is not None else self._child_value(child)
        self.trials.append(trial)
        if trial.value is not None:
            self.client.log_metric(self.parent_run_id, _key(f"trials/{self.metric}"), trial.value, step=num)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.parent_run_id is None:
            return
        status = "FAILED"
        try:
            status = self._report_best()
        finally:
            self._close(status)

    # -- internals -----------------------------------------------------------------------------------------------
    def _report_best(self) -> str:
        from mlflow.entities import Metric, Param, RunTag

        pid = self.parent_run_id
        # Jobs run by a remote launcher call on_job_end over there: then the children in MLflow are the record.
        trials = self.trials or self._trials_from_children()
        scored = [t for t in trials if t.value is not None and math.isfinite(t.value)]
        failed = sum(not t.completed for t in trials)
        tags = [RunTag("radfm.sweep.n_trials", str(len(trials))), RunTag("radfm.sweep.n_failed", str(failed))]
        if not scored:
            self.client.log_batch(pid, tags=tags)
            line = f"{BEST_LINE} none - {len(trials)} trial(s), none reported {self.metric} (parent run {pid})"
            print(line, flush=True)
            return "FAILED"
        best = (max if self.maximize else min)(scored, key=lambda t: float(t.value))  # type: ignore[arg-type]
        chosen = {k: v for k, v in _pairs(best.overrides).items() if k in self.space_keys} or _pairs(best.overrides)
        shown = " ".join(f"{k}={v}" for k, v in chosen.items()) or "(no overrides)"
        tags += [RunTag("radfm.sweep.best_run_id", best.run_id or "unknown"),
                 RunTag("radfm.sweep.best_job_num", str(best.num)),
                 RunTag("radfm.sweep.best_overrides", shown[:5000])]
        self.client.log_batch(
            pid, tags=tags,
            params=[Param(_key(f"best.{k}"), str(v)[:6000]) for k, v in chosen.items()],
            metrics=[Metric(_key(f"best/{self.metric}"), float(best.value), int(time.time() * 1000), 0)])  # type: ignore[arg-type]
        line = (f"{BEST_LINE} {shown} | {self.metric}={best.value:.6g} | child run {best.run_id} "
                f"(job #{best.num}, {len(scored)}/{len(trials)} trials scored, parent run {pid})")
        print(line, flush=True)
        return "FINISHED"

    def _child_run(self, num: int) -> Any:
        runs = self.client.search_runs(
            [self.experiment_id], max_results=1, order_by=["attributes.start_time DESC"],
            filter_string=f"tags.`mlflow.parentRunId` = '{self.parent_run_id}' "
                          f"and tags.`radfm.sweep.job_num` = '{num}'")
        return runs[0] if runs else None

    def _child_value(self, child: Any) -> float | None:
        if child is None:
            return None
        metrics = child.data.metrics
        # final/<metric> is what train(cfg) returned; the plain key is its last logged value.
        for key in (_key(f"final/{self.metric.replace('/', '_')}"), self.metric):
            if key in metrics:
                return float(metrics[key])
        return None

    def _trials_from_children(self) -> list[Trial]:
        runs = self.client.search_runs([self.experiment_id], max_results=10000,
                                       filter_string=f"tags.`mlflow.parentRunId` = '{self.parent_run_id}'")
        trials = []
        for run in runs:
            tags = run.data.tags
            trials.append(Trial(int(tags.get("radfm.sweep.job_num", -1)),
                                tags.get("radfm.sweep.overrides", "").split(), run.info.status == "FINISHED",
                                self._child_value(run), run.info.run_id))
        return sorted(trials, key=lambda t: t.num)

    def _close(self, status: str) -> None:
        from radfm.registry.tracking import PARENT_RUN_ENV

        pid, self.parent_run_id = self.parent_run_id, None
        if self._env_before is None:
            os.environ.pop(PARENT_RUN_ENV, None)
        else:
            os.environ[PARENT_RUN_ENV] = self._env_before
        atexit.unregister(self._abandon)
        if pid is not None:
            self.client.set_terminated(pid, status=status)

    def _abandon(self) -> None:
        """The sweep died before on_multirun_end (e.g. Optuna's max_failure_rate): do not leave a RUNNING parent."""
        if self.parent_run_id is not None:
            with contextlib.suppress(Exception):  # interpreter shutdown: nothing left to tell
                self._close("FAILED")


class OptunaResumeCallback(Callback):
    """Prepares a resumable Optuna study: its SQLite folder, and a sampler seed that moves on when resumed.

    With a fixed seed, a second ``radfm train -m hparams_search=optuna`` on the same study would draw exactly the
    points of the first (TPE samples at random for its first trials), so the seed advances by the number of trials
    the study already holds: a fresh study keeps ``seed``, and a sweep run in the same chunks is reproducible.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweeper = OmegaConf.select(config, "hydra.sweeper")
        if sweeper is None or "optuna" not in str(sweeper.get("_target_", "")).lower():
            return
        storage = sweeper.get("storage")
        # SQLite does not create folders: a first sweep under a fresh RADFM_HOME needs the study's folder.
        ensure_sqlite_dir(storage)
        seed = OmegaConf.select(config, "hydra.sweeper.sampler.seed", default=None)
        if storage is None or seed is None or not sweeper.get("study_name"):
            return
        held = stored_trials(str(storage), str(sweeper.study_name))
        if held:
            config.hydra.sweeper.sampler.seed = int(seed) + held
            log.info("resuming Optuna study %s (%d trials stored): sampler seed %d", sweeper.study_name, held,
                     int(seed) + held)


def stored_trials(storage: str, study_name: str) -> int:
    """How many trials (any state) the study ``study_name`` in ``storage`` holds; 0 when there is no such study."""
    import optuna

    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return 0
    return len(study.get_trials(deepcopy=False))


def sweep_space(task_overrides: list[str], sweeper_params: Any) -> dict[str, str]:
    """What the sweep varies: sweeper ``params`` (Optuna's search space) and command-line sweep overrides."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    space = {str(k): str(v) for k, v in (sweeper_params or {}).items()}
    for ov in OverridesParser.create().parse_overrides(task_overrides):
        if ov.is_sweep_override():
            space[ov.get_key_element()] = ov.input_line.split("=", 1)[1] if ov.input_line else ""
    return space


def ensure_sqlite_dir(uri: Any) -> None:
    if isinstance(uri, str) and uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)


def _end_orphaned_child(parent_run_id: str) -> None:
    """A job that raised left its run active in this process; close it so the next trial is not nested in it."""
    import mlflow

    active = mlflow.active_run()
    if active is not None and active.data.tags.get("mlflow.parentRunId") == parent_run_id:
        mlflow.end_run(status="FAILED")


def _pairs(overrides: list[str]) -> dict[str, str]:
    return dict(o.split("=", 1) for o in overrides if "=" in o)


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _key(name: str) -> str:
    """MLflow keys allow letters, digits, ``_ - . / space``; Hydra keys may carry ``+``, ``~`` or ``@``."""
    return re.sub(r"[^\w\-. /]", "_", name)
