"""Lineage where people look, end to end: one pipeline run on a real Prefect API and a real MLflow store leaves
the data set as the training run's dataset input, the RadBench table as the run's description, and the model
card as the registered version's description, beside the checkpoint and in the run's artifacts.

Its parameters are test_flow_pipeline's, so in one session the two share the cached training and RadBench."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import mlflow
import pytest

from flows.params import EvalSpec, PipelineParams
from flows.pipeline import radfm_pipeline
from radfm.registry.model_card import (
    CARD_FILE,
    GATE_HEADING,
    GATE_PENDING,
    NOT_FOR_CLINICAL_USE,
    REGISTRY_MAX,
    SHORT_FORM,
)

EVAL = EvalSpec(batch_size=8, max_new_tokens=24, embedding=False)
NAME = "radfm-lineage"


@pytest.fixture(scope="module")
def lineage_run(prefect_harness, pipeline_overrides, flow_home):
    """The pipeline under the built-in gate (which refuses a 4-step model: the card records a refusal)."""
    params = PipelineParams(overrides=pipeline_overrides(), eval=EVAL, model_name=NAME)
    result = radfm_pipeline(params)
    result["overrides"] = params.overrides
    return result, mlflow.MlflowClient(tracking_uri=f"sqlite:///{flow_home}/mlflow.db"), flow_home


def test_training_run_has_the_dataset_as_input(lineage_run):
    result, c, home = lineage_run
    run = c.get_run(result["run_id"])
    training = [i for i in run.inputs.dataset_inputs
                if {t.key: t.value for t in i.tags}.get("mlflow.data.context") == "training"]
    assert len(training) == 1, run.inputs.dataset_inputs
    ds = training[0].dataset
    assert ds.digest == run.data.tags["radfm.data_version"] == result["data_version"]
    assert ds.name == "medmd-synth"
    source = json.loads(ds.source)["uri"]
    assert source == "medmd-synth/manifest.jsonl" and str(home) not in ds.source and not source.startswith("/")
    profile = json.loads(ds.profile)
    assert profile["families"] > 0 and sum(profile["rows"].values()) > 0


def test_run_description_holds_the_radbench_table(lineage_run):
    result, c, _ = lineage_run
    note = c.get_run(result["run_id"]).data.tags["mlflow.note.content"]
    assert f"data version `{result['data_version']}`" in note
    assert "| family | kind | n | model | blind | image-ablated | beats both |" in note
    for key in result["summary"]["families"]:
        assert f"| {key} |" in note, key


def test_registered_version_description_is_the_model_card(lineage_run):
    result, c, _ = lineage_run
    card = c.get_model_version(NAME, result["version"]).description
    assert card.startswith(f"# Model card: `{NAME}` version {result['version']}")
    assert NOT_FOR_CLINICAL_USE in card and f"data version `{result['data_version']}`" in card
    # the exact command of this run: its overrides, in order; what the command line cannot set is a note
    assert f"```\n{shlex.join(['radfm', 'pipeline', *result['overrides']])}\n```" in card
    assert f"model_name='{NAME}'" in card and '"max_new_tokens": 24' in card
    # the whole card is longer than the registry holds: the description is its short form
    assert SHORT_FORM in card and len(card) <= REGISTRY_MAX
    assert "model preset tiny" in card and "steps (joint fit) 4" in card
    # the promotion step filled in the gate's decision (the built-in gate refuses a 4-step model)
    gate = card.split(GATE_HEADING)[1].split("## Limitations")[0]
    assert GATE_PENDING not in gate and "**Refused by the promotion gate**" in gate
    assert "[promotion vs floors] REJECTED" in card  # promotion's own line, kept


def test_whole_card_is_beside_the_checkpoint_and_in_the_run(lineage_run, tmp_path: Path):
    result, c, _ = lineage_run
    local = (Path(result["model_dir"]) / CARD_FILE).read_text()
    logged = Path(c.download_artifacts(result["run_id"], CARD_FILE, str(tmp_path))).read_text()
    for card in (local, logged):
        assert NOT_FOR_CLINICAL_USE in card and "| model preset | tiny |" in card
        assert all(f"| {key} |" in card for key in result["summary"]["families"])
    # the same card; pipeline.py does not give the promote task the checkpoint folder, so only the run's copy
    # is sure to hold the decision
    assert local.split(GATE_HEADING)[0] == logged.split(GATE_HEADING)[0]
    assert local.split("## Limitations")[1] == logged.split("## Limitations")[1]
    gate = logged.split(GATE_HEADING)[1].split("## Limitations")[0]
    assert "**Refused by the promotion gate**" in gate and "Checks:" in gate


def test_gate_decision_reaches_every_copy_of_the_card(tmp_path: Path):
    """record_gate_decision on a real registry: the description, the run's MODEL_CARD.md and the checkpoint's."""
    from flows.tasks import record_gate_decision
    from radfm.registry.model_card import CardInputs, render

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    c = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    card = render(CardInputs(name="carded", version="1", data_version="v1"))
    run = c.create_run(c.create_experiment("cards", artifact_location=(tmp_path / "art").as_uri()))
    c.log_text(run.info.run_id, card, CARD_FILE)
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / CARD_FILE).write_text(card)
    c.create_registered_model("carded")
    c.create_model_version("carded", source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id,
                           description=card)
    decision = {"promoted": True, "refused": False, "reason": "passed the gate against the floors",
                "checks": ["closed family vqa/nodule (n=30) beats both baselines: yes"]}
    record_gate_decision("carded", "1", decision, uri, str(tmp_path / "ckpt"))
    logged = Path(c.download_artifacts(run.info.run_id, CARD_FILE, str(tmp_path / "dl"))).read_text()
    for text in (c.get_model_version("carded", "1").description, logged, (tmp_path / "ckpt" / CARD_FILE).read_text()):
        assert GATE_PENDING not in text and "**Promoted to champion.** passed the gate against the floors" in text
    # already champion: no new decision, nothing rewritten
    record_gate_decision("carded", "1", {"promoted": False, "reason": "already champion"}, uri, None)
    assert "**Promoted to champion.**" in c.get_model_version("carded", "1").description


def test_no_row_id_of_the_data_in_the_card(lineage_run):
    from radfm.data.manifest import read_manifest

    result, c, home = lineage_run
    card = c.get_model_version(NAME, result["version"]).description
    manifest = next((home / "data").rglob("manifest.jsonl"))
    rows = read_manifest(manifest)
    ids = {s.id for s in rows} | {str((s.meta or {}).get("scene_id")) for s in rows}
    assert len(ids) > 48 and not [i for i in ids if i in card]
