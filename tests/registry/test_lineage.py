"""Lineage where people look, without training: the dataset input on a real MLflow store (digest = data version,
source without this machine's paths, profile in aggregates), the model card's sections, its reproduce command,
its gate section, and no patient identifier anywhere. The pipeline end to end: tests/flows/test_flow_lineage.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import pytest

from radfm.registry.model_card import (
    DESCRIPTION_LIMIT,
    GATE_HEADING,
    GATE_PENDING,
    NOT_FOR_CLINICAL_USE,
    REGISTRY_MAX,
    SHORT_FORM,
    CardInputs,
    description,
    description_with_gate,
    gate_markdown,
    render,
    reproduce_command,
    run_description,
    with_gate,
)
from radfm.registry.tracking import dataset_source_uri, log_dataset_input, profile_summary

PATIENTS = ["PAT-93817", "PAT-55102", "PAT-20466"]


def write_manifest(root: Path) -> Path:
    """A small manifest whose ids and meta carry patient identifiers (what a hospital export looks like)."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(36):
        patient = PATIENTS[i % 3]
        split = ("train", "train", "train", "val", "test", "test")[i % 6]
        rows.append({"id": f"{patient}-study{i:03d}", "task": "vqa", "split": split,
                     "question": "Is there a nodule?", "answer": ("yes", "no")[i % 2],
                     "meta": {"patient_id": patient, "family": "nodule"}})
        rows.append({"id": f"{patient}-mod{i:03d}", "task": "modality", "split": split,
                     "question": "Which modality is this?", "answer": ("CT", "MRI")[i % 2],
                     "meta": {"patient_id": patient}})
    path = root / "manifest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def fam(model: float, n: int, closed: bool = True) -> dict[str, Any]:
    """One entry of a RadBench summary, shaped like radfm.eval.radbench.summarise's."""
    entry = {"model": {"n": float(n), "headline": model}, "blind": {"n": float(n), "headline": 0.5},
             "ablated": {"n": float(n), "headline": 0.55}, "beats_both": model > 0.55}
    return {**entry, "n": n, "closed": closed}


SUMMARY = {"tasks": {"vqa": {k: v for k, v in fam(0.8, 24).items() if k not in ("n", "closed")},
                     "modality": {k: v for k, v in fam(0.5, 12).items() if k not in ("n", "closed")}},
           "families": {"vqa/nodule": fam(0.8, 24), "modality/which modality is this": fam(0.5, 12)}}


def test_dataset_source_is_never_an_absolute_path(tmp_path: Path, radfm_home: Path) -> None:
    repo = tmp_path / "repo"
    manifest = write_manifest(repo / "data" / "set")
    (repo / "data.dvc").write_text("outs:\n- md5: abc.dir\n  path: data\n")
    assert dataset_source_uri(manifest) == "data/set/manifest.jsonl"  # inside the DVC target
    elsewhere = write_manifest(tmp_path / "loose" / "set")
    assert dataset_source_uri(elsewhere, tmp_path / "loose" / "set") == "set/manifest.jsonl"
    under_home = write_manifest(radfm_home / "data" / "mine")
    assert dataset_source_uri(under_home) == "$RADFM_HOME/data/mine/manifest.jsonl"
    assert dataset_source_uri("s3://bucket/set/manifest.jsonl") == "s3://bucket/set/manifest.jsonl"


def test_dataset_input_on_a_real_store(tmp_path: Path) -> None:
    from radfm.data.profile import profile_manifest

    manifest = write_manifest(tmp_path / "data" / "hospital")
    profile = profile_manifest(manifest)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    try:
        # this store's own experiment: an earlier test may leave another store's experiment active (MLflow's
        # fluent state), which start_run() would look up here
        experiment = mlflow.create_experiment("lineage", artifact_location=(tmp_path / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=experiment) as run:
            log_dataset_input(manifest, "0123456789abcdef0123456789abcdef", name="hospital",
                              data_root=manifest.parent, profile=profile)
        got = mlflow.MlflowClient().get_run(run.info.run_id)
    finally:
        mlflow.set_tracking_uri(None)
    (inp,) = got.inputs.dataset_inputs
    ds = inp.dataset
    assert ds.name == "hospital" and ds.digest == "0123456789abcdef0123456789abcdef"
    assert {t.key: t.value for t in inp.tags}["mlflow.data.context"] == "training"
    source = json.loads(ds.source)["uri"]
    assert source == "hospital/manifest.jsonl" and str(tmp_path) not in ds.source
    stored = json.loads(ds.profile)
    assert stored["rows"] == {"train": 36, "val": 12, "test": 24} and stored["families"] == 2
    assert stored["kinds"] == {"yesno": 1, "closed": 1}
    text = ds.source + ds.profile
    assert not any(p in text for p in PATIENTS), "a patient identifier reached the tracking store"


def inputs(tmp_path: Path, **kw: Any) -> CardInputs:
    from radfm.data.profile import profile_manifest

    manifest = write_manifest(tmp_path / "data" / "hospital")
    config = {"model": {"name": "tiny"}, "trainer": {"max_steps": 350, "backend": "lightning",
                                                     "accelerator": "cpu", "precision": "32-true"},
              "objective": {"answer": {"weight": 1.0}, "label_head": {"weight": 3.0}},
              "callbacks": {"vision_warmup": {"steps": 2000}}, "optim": {"lr": 1e-3}, "seed": 0,
              "data": {"name": "hospital", "batch_size_2d": 16, "batch_size_3d": 8}}
    base = {"name": "radfm", "version": "3", "model_id": "m-1", "run_id": "r1", "git_commit": "abc123",
            "data_version": "feedface" * 4, "dataset_name": "hospital", "dataset_source": "hospital/manifest.jsonl",
            "profile": profile_summary(profile_manifest(manifest)), "summary": SUMMARY, "config": config,
            "command": "radfm pipeline experiment=demo_tiny", "command_notes": ["a note"]}
    return CardInputs(**{**base, **kw})


def test_model_card_sections(tmp_path: Path) -> None:
    card = render(inputs(tmp_path))
    assert card.startswith("# Model card: `radfm` version 3")
    assert NOT_FOR_CLINICAL_USE in card and "## Intended use" in card
    assert "feedface" * 4 in card and "hospital/manifest.jsonl" in card
    assert "| nodule | yesno | 18 | 6 | 12 | 2 |" in card  # the profile: kind and rows per split
    assert "| vqa/nodule | closed | 24 | 0.800 | 0.500 | 0.550 | yes |" in card  # beside its baselines
    assert GATE_HEADING in card and GATE_PENDING in card
    limits = card.split("## Limitations")[1].split("## Training configuration")[0]
    assert "**modality/which modality is this**" in limits and "does not beat both baselines" in limits
    assert "Too few test rows to judge (< 20): modality/which modality is this (12)" in limits
    assert "| model preset | tiny |" in card and "| steps (joint fit) | 350 |" in card
    assert "| recipe | experiment=demo_tiny |" in card
    assert "label_head (weight 3.0)" in card and "| vision warm-up steps | 2000 |" in card
    assert "```\nradfm pipeline experiment=demo_tiny\n```" in card and "commit `abc123`" in card
    assert not any(p in card for p in PATIENTS), "a patient identifier reached the model card"


def test_card_without_run_data_says_what_it_lacks() -> None:
    card = render(CardInputs(name="radfm"))
    assert NOT_FOR_CLINICAL_USE in card and "data version `unknown`" in card
    assert "no question profile was recorded" in card and "No RadBench result." in card
    assert "the run's parameters were not recorded" in card


def test_reproduce_command() -> None:
    defaults = {"overrides": ["experiment=demo_tiny"], "config_name": "train", "model_name": "radfm",
                "data": {"kind": "config"}, "eval": {"limit": None, "batch_size": 64}, "gate": None,
                "registry": True, "promote": True, "validation_config": None, "validate_images": True}
    dvc = {**defaults, "overrides": ["experiment=demo_tiny", "seed=1"], "model_name": "radfm-x",
           "data": {"kind": "dvc", "repo": ".", "target": "data", "version": None},
           "eval": {"limit": 50, "batch_size": 8}, "gate": "gate file.yaml", "promote": False}
    command, notes = reproduce_command(dvc, defaults, "d" * 32)
    assert command == ("radfm pipeline experiment=demo_tiny seed=1 --data-kind dvc --data-repo . --data-target data "
                       f"--data-version {'d' * 32} --gate 'gate file.yaml' --no-promote --eval-limit 50")
    assert any("model_name='radfm-x'" in n for n in notes) and any('"batch_size": 8' in n for n in notes)
    command, notes = reproduce_command(defaults, defaults, "v1")
    assert command == "radfm pipeline experiment=demo_tiny"
    assert notes == ["the Hydra data group makes or finds the data; it must come out as data version `v1` (the "
                     "run's `radfm.data_version`), or this is another data set"]


def test_gate_decision_replaces_the_pending_section(tmp_path: Path) -> None:
    card = render(inputs(tmp_path))
    # promotion.promote appends its own line to the description before the flow fills the section in
    described = card.rstrip("\n") + "\n[promotion vs floors] REJECTED: failed the gate"
    decision = {"promoted": False, "refused": True, "reason": "failed the gate", "champion_version": None,
                "failed_families": {"vqa/nodule": {"n": 24, "model": 0.5, "blind": 0.5, "ablated": 0.55,
                                                   "short_by": 0.05}},
                "checks": ["closed family vqa/nodule (n=24) beats both baselines: no"]}
    filled = with_gate(described, gate_markdown(decision))
    assert GATE_PENDING not in filled and "**Refused by the promotion gate** (champion stays unset)" in filled
    assert "| vqa/nodule | 24 | 0.5 | 0.5 | 0.55 | 0.05 |" in filled
    gate = filled.split(GATE_HEADING)[1].split("## Limitations")[0]
    assert "Checks:" in gate and "## How to reproduce" in filled  # the sections after it are kept
    assert filled.rstrip().endswith("[promotion vs floors] REJECTED: failed the gate")
    assert with_gate(filled, gate_markdown(decision)) == filled  # a retry writes the same card
    assert with_gate("no card here", "body") == f"no card here\n\n{GATE_HEADING}\n\nbody\n"


def test_description_is_the_whole_card_or_its_short_form(tmp_path: Path) -> None:
    small = inputs(tmp_path)
    assert description(small, limit=100_000) == render(small)
    many = {f"vqa/family {i}": fam(0.4, 5) for i in range(60)}  # a table of many small families
    big = inputs(tmp_path, summary={"tasks": SUMMARY["tasks"], "families": many})
    text = description(big)
    assert len(render(big)) > len(text) and SHORT_FORM in text and len(text) <= DESCRIPTION_LIMIT
    for needed in (NOT_FOR_CLINICAL_USE, "feedface" * 4, "radfm pipeline experiment=demo_tiny", GATE_PENDING):
        assert needed in text
    assert "Does not beat both baselines" in text and "and 52 more" in text
    # a command line too long for even the short form: the expendable sections go, the command stays
    command = "radfm pipeline " + " ".join(f"option{i}=value" for i in range(150))
    squeezed = description(inputs(tmp_path, summary=big.summary, command=command))
    assert len(squeezed) <= DESCRIPTION_LIMIT and command in squeezed and "In `MODEL_CARD.md`." in squeezed
    refused = {"promoted": False, "refused": True, "reason": "x" * 900, "checks": ["check"] * 200,
               "failed_families": {k: {"n": 5} for k in many}}
    filled = description_with_gate(text + "\n[promotion vs floors] REJECTED: " + "x" * 900, refused)
    assert len(filled) <= REGISTRY_MAX and "**Refused by the promotion gate**" in filled and "Checks:" not in filled
    # no room at all: the description stays as it was rather than be refused by the registry
    assert description_with_gate(squeezed + "x" * 1500, refused) == squeezed + "x" * 1500


def test_run_description_holds_the_radbench_table() -> None:
    text = run_description(SUMMARY, "v9")
    assert "data version `v9`" in text and "| family | kind | n | model | blind | image-ablated | beats both |" in text
    assert "| modality/which modality is this | closed | 12 | 0.500 | 0.500 | 0.550 | **no** |" in text
    assert run_description({}, None).count("No RadBench result.") == 1
    many = {"tasks": {}, "families": {f"vqa/a long family name {i:04d}": fam(0.4, 5) for i in range(400)}}
    long = run_description(many, "v")
    assert len(long) <= 7500 and "more families: `radbench/summary.md`" in long


@pytest.mark.parametrize("digest", ["x" * 40])
def test_long_digest_is_cut_to_mlflows_limit(tmp_path: Path, digest: str) -> None:
    manifest = write_manifest(tmp_path / "d")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    try:
        # this store's own experiment: an earlier test may leave another store's experiment active (MLflow's
        # fluent state), which start_run() would look up here
        experiment = mlflow.create_experiment("lineage", artifact_location=(tmp_path / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=experiment) as run:
            log_dataset_input(manifest, digest)
        ds = mlflow.MlflowClient().get_run(run.info.run_id).inputs.dataset_inputs[0].dataset
    finally:
        mlflow.set_tracking_uri(None)
    assert ds.digest == digest[:36] and ds.name == "d" and json.loads(ds.profile) == {}
