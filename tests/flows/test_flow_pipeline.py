"""The radfm-pipeline flow end to end on a tiny config, a failed run resumed from its failed task, and the
retrain flow skipping unchanged data and training on changed data — on a real Prefect API (test harness),
a real MLflow store and registry, and real files."""

from __future__ import annotations

import mlflow
import pytest

from flows.params import EvalSpec, PipelineParams
from flows.pipeline import radfm_pipeline
from flows.retrain import RetrainParams, radfm_retrain

EVAL = EvalSpec(batch_size=8, max_new_tokens=24, embedding=False)
WORK_STAGES = ["validate-data", "train", "radbench", "register"]


def params(overrides: list[str], **kw) -> PipelineParams:
    return PipelineParams(overrides=overrides, eval=EVAL, **kw)


@pytest.fixture(scope="module")
def relaxed_gate(flow_home):
    """A 4-step model on 48 samples cannot show that it learns from the images (its closed families have a few
    test rows each): the built-in gate refuses it (test_default_gate_refuses_a_few_step_model). Tests that need
    a champion say so explicitly, the documented way: a gate file with ``baselines: false``."""
    path = flow_home / "relaxed-gate.yaml"
    path.write_text("baselines: false\n")
    return str(path)


@pytest.fixture(scope="module")
def first_run(prefect_harness, pipeline_overrides, flow_home, relaxed_gate):
    p = params(pipeline_overrides(), model_name="radfm-e2e", gate=relaxed_gate)
    return p, radfm_pipeline(p), flow_home


def client(flow_home):
    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{flow_home}/mlflow.db")


def test_pipeline_runs_from_data_to_champion(first_run):
    p, result, home = first_run
    stages = result["timings"]["stages"]
    assert list(stages) == ["compose-config", "prepare-data", "validate-data", "train", "radbench", "register",
                            "promote"]
    # Cached: test_flow_lineage.py's run of the same config and data trained and scored it first in this session.
    assert all(s["state"] in ("Completed", "Cached") for s in stages.values()), stages
    # The first version has no champion to beat and the relaxed gate has no floors: it becomes champion.
    assert result["version"] == "1" and result["decision"]["promoted"] is True
    c = client(home)
    champion = c.get_model_version_by_alias("radfm-e2e", "champion")
    assert str(champion.version) == "1"
    assert champion.tags["radfm.data_version"] == result["data_version"]
    assert champion.run_id == result["run_id"]
    assert any(k.startswith("radbench.") for k in champion.tags), champion.tags
    run = c.get_run(result["run_id"])
    assert any(k.startswith("radbench/tasks/") for k in run.data.metrics)
    assert run.data.tags["radfm.data_version"] == result["data_version"]
    logged = {a.path for a in c.list_artifacts(result["run_id"], "validation")}
    assert "validation/validation.json" in logged  # the Great Expectations report that cleared the data
    t = result["timings"]
    assert 0 < t["work_s"] <= t["flow_wall_s"] and t["overhead_s"] >= 0
    assert (home / "home" / "runs" / result["run_name"] / "radbench" / "report.html").is_file()


def test_pipeline_publishes_a_markdown_artifact(first_run):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def read():
        async with get_client() as c:
            return await c.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["radfm-pipeline"])))

    import asyncio

    artifacts = asyncio.run(read())
    assert artifacts and "RadBench" in artifacts[-1].data and "orchestration" in artifacts[-1].data


def test_failed_run_resumes_from_the_failed_task(prefect_harness, pipeline_overrides, flow_home, tmp_path):
    gate = tmp_path / "gate.yaml"  # absent on the first run: promotion fails after registration
    p = params(pipeline_overrides("seed=1"), model_name="radfm-resume", gate=str(gate))
    state = radfm_pipeline(p, return_state=True)
    assert state.is_failed()
    with pytest.raises(FileNotFoundError, match="gate.yaml"):
        state.result()
    c = client(flow_home)
    assert [str(v.version) for v in c.search_model_versions("name='radfm-resume'")] == ["1"]

    gate.write_text("max_regression: {'*': 1.0}\nbaselines: false\n")
    result = radfm_pipeline(p)
    stages = result["timings"]["stages"]
    assert [stages[s]["state"] for s in WORK_STAGES] == ["Cached"] * len(WORK_STAGES), stages
    assert stages["promote"]["state"] == "Completed" and result["decision"]["promoted"] is True
    # Cached work costs nothing this time, and the model was registered once, not twice.
    assert all(stages[s]["work_s"] == 0.0 for s in WORK_STAGES)
    assert [str(v.version) for v in c.search_model_versions("name='radfm-resume'")] == ["1"]


def test_default_gate_refuses_a_few_step_model(first_run, pipeline_overrides, flow_home, capsys):
    """The same run under the built-in gate: the flow completes and returns its result, the refusal is recorded
    in the registry, the summary says why, and the command line would exit 2."""
    from flows.pipeline import exit_code, summary_markdown

    p = params(pipeline_overrides(), model_name="radfm-refused")
    result = radfm_pipeline(p)
    stages = result["timings"]["stages"]
    assert [stages[s]["state"] for s in ("train", "radbench")] == ["Cached", "Cached"]  # the first run's work
    d = result["decision"]
    assert d["refused"] is True and d["promoted"] is False and d["champion_version"] is None
    assert "closed family" in d["reason"], d["reason"]
    c = client(flow_home)
    assert "champion" not in c.get_registered_model("radfm-refused").aliases
    mv = c.get_model_version("radfm-refused", result["version"])
    assert mv.tags["promotion.decision"] == "rejected" and mv.tags["promotion.reason"] == d["reason"]
    assert any(k.startswith("radbench.family.") and k.endswith(".closed") for k in mv.tags)
    text = summary_markdown(result)
    assert "REFUSED by the promotion gate" in text and d["reason"] in text
    capsys.readouterr()
    assert exit_code(result) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("radfm pipeline: radfm-refused version 1 REFUSED")
    assert exit_code(first_run[1]) == 0


def test_retrain_skips_unchanged_data_and_trains_on_changed_data(first_run, pipeline_overrides, flow_home):
    p, first, home = first_run
    same = radfm_retrain(RetrainParams(pipeline=p))
    assert same["action"] == "skipped" and same["data_version"] == first["data_version"]

    changed = p.model_copy(update={"overrides": pipeline_overrides("data.synth.seed=3",
                                                                   data_dir=flow_home / "data-v2")})
    out = radfm_retrain(RetrainParams(pipeline=changed))
    assert out["action"] == "trained" and out["trained_on"] == first["data_version"]
    assert out["data_version"] != first["data_version"]
    assert out["pipeline"]["version"] == "2"
    assert client(home).get_model_version("radfm-e2e", "2").tags["radfm.data_version"] == out["data_version"]


def test_preload_imports_loads_modules_and_leaves_failures_to_their_task():
    """The start-up preload imports what it can in the background; a module that cannot be imported is not an
    error there (its task imports it again and fails with its own message)."""
    import sys

    from flows.pipeline import PRELOAD, preload_imports

    sys.modules.pop("colorsys", None)
    thread = preload_imports(("radfm_no_such_module", "colorsys"))
    thread.join(timeout=60)
    assert not thread.is_alive() and thread.daemon
    assert "colorsys" in sys.modules and "radfm_no_such_module" not in sys.modules
    # Every preloaded name is a module the tasks import (a typo would silently preload nothing).
    import importlib.util

    assert all(importlib.util.find_spec(name) is not None for name in PRELOAD)
