"""The ``radfm-retrain`` flow: retrain only when the dataset version differs from the champion's.

Scheduled by the ``nightly-retrain`` deployment in ``prefect.yaml`` (``radfm flows serve`` runs it here).
"""

from __future__ import annotations

import sys
from typing import Any

from prefect import flow, get_run_logger, task
from pydantic import BaseModel, Field

from flows import tasks
from flows.params import PipelineParams
from flows.pipeline import radfm_pipeline


class RetrainParams(BaseModel):
    """The pipeline to run when the data changed, and the registry alias to compare with."""

    pipeline: PipelineParams = Field(default_factory=PipelineParams)
    alias: str = "champion"
    force: bool = Field(False, description="retrain even when the data version is unchanged")


@task(name="trained-data-version", retries=2, retry_delay_seconds=[2, 10])
def trained_data_version(name: str, alias: str, tracking_uri: str) -> str | None:
    """The data version ``name@alias`` was trained on (None when there is no such version yet)."""
    from radfm.registry.registry import health_check
    from radfm.registry.registry import trained_data_version as lookup

    health_check(tracking_uri)
    return lookup(name, alias, tracking_uri=tracking_uri)


@flow(name="radfm-retrain", log_prints=True, persist_result=True)
def radfm_retrain(params: RetrainParams = RetrainParams()) -> dict[str, Any]:  # noqa: B008 (pydantic default)
    """Look at the data version now and at the one the champion was trained on; run the pipeline if they differ."""
    logger = get_run_logger()
    p = params.pipeline
    composed = tasks.compose_config(p.config_name, p.overrides)
    data = tasks.prepare_data(composed["cfg"], p.data)
    uri = str(data["cfg"].get("logger", {}).get("tracking_uri") or data["cfg"]["paths"]["mlflow_uri"])
    before = trained_data_version(p.model_name, params.alias, uri)
    if before == data["version"] and not params.force:
        logger.info("data version %s is what %s@%s was trained on: nothing to do", data["version"], p.model_name,
                    params.alias)
        return {"action": "skipped", "data_version": data["version"], "trained_on": before}
    logger.info("data version %s differs from %s@%s's (%s): retraining", data["version"], p.model_name,
                params.alias, before)
    result = radfm_pipeline(p)
    decision = result.get("decision") or {}
    if decision.get("refused"):
        # A normal outcome of a scheduled retrain: the champion stays, the refusal is recorded on the version.
        logger.warning("version %s was refused by the promotion gate: %s", result.get("version"), decision["reason"])
    return {"action": "trained", "data_version": data["version"], "trained_on": before, "pipeline": result,
            "promoted": bool(decision.get("promoted")), "refused": bool(decision.get("refused"))}


if __name__ == "__main__":
    out = radfm_retrain(RetrainParams(pipeline=PipelineParams(overrides=sys.argv[1:] or ["experiment=demo_tiny"])))
    print(out["action"], out["data_version"], *(["refused by the promotion gate"] if out.get("refused") else []))
