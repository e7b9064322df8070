"""The ``radfm-sweep`` flow: a Hydra multirun sweep (Optuna by default) whose best trial is benchmarked and
registered as the challenger. Trials are child runs of one MLflow parent run (radfm.train.sweep)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from pydantic import BaseModel, Field

from flows import tasks
from flows.params import DataSpec, EvalSpec


class SweepParams(BaseModel):
    """Hydra overrides of the sweep (``hparams_search=…`` picks the sweeper and its search space)."""

    overrides: list[str] = Field(default_factory=lambda: ["experiment=demo_tiny", "hparams_search=optuna"])
    eval: EvalSpec = Field(default_factory=EvalSpec)
    registry: bool = Field(True, description="log the model to MLflow and register it as the challenger")
    model_name: str = "radfm"
    timeout_s: float = 6 * 3600


BEST_RUN = re.compile(r"best trial:.*\| child run (\S+)")


@task(name="hydra-multirun")
def run_sweep(overrides: list[str], timeout_s: float) -> dict[str, Any]:
    """``python -m radfm.train -m <overrides>`` in a child process (Hydra owns its command line and its
    multirun launcher); returns the best trial's MLflow run id from the sweep callback's summary line."""
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "radfm.train", "-m", *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=os.environ.copy())
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"the sweep `{' '.join(cmd[1:])}` failed (exit {proc.returncode}):\n{output[-4000:]}")
    match = BEST_RUN.search(output)
    if not match:
        raise RuntimeError(f"the sweep finished but reported no best trial (no trial returned the optimised "
                           f"metric?):\n{output[-4000:]}")
    return {"best_run_id": match.group(1), "best_line": match.group(0), "seconds": time.perf_counter() - t0}


@task(name="fetch-best-model", retries=2, retry_delay_seconds=[2, 10])
def fetch_model(run_id: str, tracking_uri: str, dst: str) -> dict[str, Any]:
    """The best trial's checkpoint, downloaded from its run's ``model`` artifacts (works with any store)."""
    import mlflow

    t0 = time.perf_counter()
    mlflow.set_tracking_uri(tracking_uri)
    Path(dst).mkdir(parents=True, exist_ok=True)
    model_dir = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="model", dst_path=dst)
    return {"run_id": run_id, "run_dir": dst, "model_dir": model_dir, "seconds": time.perf_counter() - t0}


def base_overrides(overrides: list[str]) -> list[str]:
    """The overrides of one trial's config without the sweep itself (sweeper choice, sweep values)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    keep = []
    for text in overrides:
        if text.startswith(("hparams_search=", "hydra.")):
            continue
        if parser.parse_override(text).is_sweep_override():
            continue
        keep.append(text)
    return keep


@flow(name="radfm-sweep", log_prints=True, persist_result=True)
def radfm_sweep(params: SweepParams = SweepParams()) -> dict[str, Any]:  # noqa: B008 (pydantic default)
    """Sweep, then RadBench and register the best trial (it becomes the challenger; promotion is a separate,
    gated decision)."""
    from radfm.paths import home_path

    logger = get_run_logger()
    # The data is prepared (and versioned) once here so every trial finds it ready.
    base = base_overrides(params.overrides)
    composed = tasks.compose_config("train", base)
    data = tasks.prepare_data(composed["cfg"], DataSpec())
    uri = str(data["cfg"].get("logger", {}).get("tracking_uri") or data["cfg"]["paths"]["mlflow_uri"])
    sweep = run_sweep(params.overrides, params.timeout_s)
    logger.info(sweep["best_line"])
    best = fetch_model(sweep["best_run_id"], uri, str(home_path("sweeps", sweep["best_run_id"])))
    bench = tasks.radbench(best, data["manifest"], data["root"], params.eval, uri)
    result: dict[str, Any] = {"best_run_id": sweep["best_run_id"], "radbench_dir": bench["dir"],
                              "summary": bench["summary"]}
    if params.registry:
        reg = tasks.register_model(best, bench["dir"], params.model_name, uri, None)
        result.update(version=reg["version"], model_id=reg["model_id"])
    return result


if __name__ == "__main__":
    out = radfm_sweep(SweepParams(overrides=sys.argv[1:] or SweepParams().overrides))
    print(out["best_run_id"], out.get("version"))
