"""The ``radfm-retrain`` flow: retrain only when the dataset version differs from the champion's.

Scheduled by the ``nightly-retrain`` deployment in ``prefect.yaml`` (``radfm flows serve`` runs it here). The data
version is the one every run records (:func:`radfm.data.versioning.version_of`: the md5 of the DVC-tracked
``data/`` as ``data.dvc`` records it), so the data of ``make demo``'s champion compares equal to the same data
here. Data that a version was already trained on and refused by the promotion gate is not retrained either: the
same config on the same data makes the same model, and the gate would refuse it again every night.
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


@task(name="refused-on-data", retries=2, retry_delay_seconds=[2, 10])
def refused_on_data(name: str, data_version: str, tracking_uri: str) -> str | None:
    """The newest version of ``name`` trained on ``data_version`` that the promotion gate refused (None when
    there is none). A version without a gate decision does not count: its run stopped before promotion, and
    running the pipeline again resumes it from its cached stages."""
    from radfm.registry.registry import client

    versions = client(tracking_uri).search_model_versions(f"name = '{name}'")
    refused = [int(v.version) for v in versions if (v.tags or {}).get("radfm.data_version") == data_version
               and (v.tags or {}).get("promotion.decision") == "rejected"]
    return str(max(refused)) if refused else None


@flow(name="radfm-retrain", log_prints=True, persist_result=True)
def radfm_retrain(params: RetrainParams = RetrainParams()) -> dict[str, Any]:  # noqa: B008 (pydantic default)
    """Look at the data version now and at the one the champion was trained on; run the pipeline if they differ
    (and the gate has not already refused a model of this data)."""
    from prefect.artifacts import create_markdown_artifact

    logger = get_run_logger()
    p = params.pipeline
    composed = tasks.compose_config(p.config_name, p.overrides)
    data = tasks.prepare_data(composed["cfg"], p.data)
    uri = str(data["cfg"].get("logger", {}).get("tracking_uri") or data["cfg"]["paths"]["mlflow_uri"])
    version = data["version"]
    before = trained_data_version(p.model_name, params.alias, uri)
    target = f"{p.model_name}@{params.alias}"
    skip = None
    if not params.force and before == version:
        skip = f"data version `{version}` is what {target} was trained on: nothing to do"
    elif not params.force:
        refused = refused_on_data(p.model_name, version, uri)
        if refused is not None:
            stays = f"{target} stays on data version `{before}`" if before else f"there is no {target} yet"
            skip = (f"data version `{version}` already trained {p.model_name} version {refused}, which the "
                    f"promotion gate refused ({stays}): nothing to do until the data changes (force=true "
                    "retrains anyway)")
    if skip is not None:
        logger.info(skip)
        create_markdown_artifact(f"# radfm retrain: skipped\n\n{skip}\n", key="radfm-retrain",
                                 description="what the scheduled retrain decided")
        return {"action": "skipped", "data_version": version, "trained_on": before}
    logger.info("data version %s differs from %s's (%s): retraining", version, target, before)
    result = radfm_pipeline(p)
    decision = result.get("decision") or {}
    if decision.get("refused"):
        # A normal outcome of a scheduled retrain: the champion stays, the refusal is recorded on the version.
        logger.warning("version %s was refused by the promotion gate: %s", result.get("version"), decision["reason"])
    verdict = ("promoted to champion" if decision.get("promoted") else
               "refused by the promotion gate" if decision.get("refused") else "not promoted")
    create_markdown_artifact(f"# radfm retrain: trained\n\ndata version `{version}` (was `{before}`): "
                             f"{p.model_name} version {result.get('version')}, {verdict}\n", key="radfm-retrain",
                             description="what the scheduled retrain decided")
    return {"action": "trained", "data_version": version, "trained_on": before, "pipeline": result,
            "promoted": bool(decision.get("promoted")), "refused": bool(decision.get("refused"))}


if __name__ == "__main__":
    out = radfm_retrain(RetrainParams(pipeline=PipelineParams(overrides=sys.argv[1:] or ["experiment=demo_tiny"])))
    print(out["action"], out["data_version"], *(["refused by the promotion gate"] if out.get("refused") else []))
