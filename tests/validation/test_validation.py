"""Validation suites on MedMD-synth: a clean dataset passes; each injected defect fails the right expectation
and names the offending sample; `mostly` from config is honoured; reports never hold a group key's value."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from radfm.validation import ValidationConfig, ValidationFailed, ValidationReport, validate_dataset

SECRET = "PATIENT-7f3-SECRET"


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small MedMD-synth per session (40 images, ~310 rows, 2D PNG + 3D NIfTI); tests copy it."""
    from radfm.data.synth import SynthConfig, generate

    root = tmp_path_factory.mktemp("synth") / "medmd"
    generate(SynthConfig(n_samples=40, seed=0, variant="easy"), root)
    return root


@pytest.fixture()
def data(synth_root: Path, tmp_path: Path) -> Path:
    """A private copy of the session dataset to inject a defect into."""
    dest = tmp_path / "medmd"
    shutil.copytree(synth_root, dest)
    return dest


def rows(root: Path) -> tuple[str, list[dict[str, Any]]]:
    header, *body = (root / "manifest.jsonl").read_text().splitlines()
    return header, [json.loads(line) for line in body]


def edit(root: Path, fn: Callable[[list[dict[str, Any]]], None]) -> None:
    """Rewrite the manifest as raw JSON lines (bypassing pydantic, so invalid rows can be written)."""
    header, recs = rows(root)
    fn(recs)
    (root / "manifest.jsonl").write_text("\n".join([header, *(json.dumps(r) for r in recs)]) + "\n")


def failure(report: ValidationReport, check: str) -> dict[str, Any]:
    found = [f for f in report.failures if f["check"] == check]
    assert found, f"expected {check} to fail; failures: {[f['check'] for f in report.failures]}"
    return found[0]


def raised(report: ValidationReport) -> str:
    with pytest.raises(ValidationFailed) as info:
        report.raise_for_failures()
    assert isinstance(info.value, ValueError)
    return str(info.value)


def test_clean_synth_passes_and_writes_json_and_data_docs(synth_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # GE must write nothing into the working directory
    out = tmp_path / "out"
    report = validate_dataset(synth_root, out_dir=out)
    assert report.success, report.message()
    report.raise_for_failures()
    assert set(report.suites) == {"manifest", "class_balance", "images"}
    assert all(s["evaluated"] == s["successful"] > 0 for s in report.suites.values())
    assert report.json_path == out / "validation.json" and report.json_path.is_file()
    assert report.docs_path == out / "data_docs" / "index.html" and report.docs_path.is_file()
    assert (out / "gx" / "manifest.json").is_file() and (out / "gx" / "images.json").is_file()
    saved = json.loads(report.json_path.read_text())
    assert saved["success"] is True and saved["statistics"]["images_checked"] == 40
    assert saved["statistics"]["group_keys_used"] == {"meta.scene_id": saved["statistics"]["rows"]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_default_config_file_matches_dataclass_and_buckets():
    from radfm.data.transforms import DEFAULT_BUCKETS

    cfg = ValidationConfig.default()
    assert cfg == ValidationConfig()
    assert cfg.depth_buckets == DEFAULT_BUCKETS
    assert ValidationConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown keys"):
        ValidationConfig.from_dict({"mostlyy": 0.9})
    with pytest.raises(ValueError, match="strict names unknown"):
        ValidationConfig(strict=("nope",))


def test_missing_image_names_samples_and_path(data, tmp_path):
    _, recs = rows(data)
    victim = recs[0]["images"][0]["path"]
    ids = {r["id"] for r in recs if any(i["path"] == victim for i in r["images"])}
    (data / victim).unlink()
    report = validate_dataset(data, out_dir=tmp_path / "out")
    f = failure(report, "images_exist")
    assert f["suite"] == "manifest" and f["expectation"] == "expect_column_values_to_be_in_set"
    assert set(f["offending"]) == ids
    img = failure(report, "image_readable")
    assert img["offending"] == [victim] and set(img["samples"]) <= ids and "file not found" in img["detail"]
    msg = raised(report)
    assert "images_exist" in msg and recs[0]["id"] in msg and victim in msg and str(report.json_path) in msg
    assert str(data) not in msg  # paths are named relative to the data root


def test_emptyish_answer_fails_answer_content(data):
    target: dict[str, str] = {}

    def empty(recs):
        row = next(r for r in recs if r["task"] == "report")
        row["answer"] = " ... "
        target["id"] = row["id"]

        other = next(r for r in recs if r["task"] == "report" and r["id"] != row["id"])
        other["answer"] = "N/A"
        target["placeholder"] = other["id"]

    edit(data, empty)
    report = validate_dataset(data, images=False)
    f = failure(report, "answer_content")
    assert f["expectation"] == "expect_column_value_lengths_to_be_between" and f["column"] == "answer_text"
    assert f["offending"] == [target["id"]] and f["mostly"] == 1.0  # strict: one row in ~310 is enough
    assert failure(report, "answer_placeholder")["offending"] == [target["placeholder"]]
    msg = raised(report)
    assert target["id"] in msg and target["placeholder"] in msg and "'na'" in msg


def test_unknown_split_and_task_fail_their_expectations(data):
    _, recs = rows(data)
    bad_split, bad_task = recs[3]["id"], recs[7]["id"]

    def corrupt(recs):
        recs[3]["split"] = "holdout"
        recs[7]["task"] = "segmentation"

    edit(data, corrupt)
    report = validate_dataset(data, images=False)
    assert failure(report, "allowed_splits")["offending"] == [bad_split]
    assert failure(report, "allowed_tasks")["offending"] == [bad_task]
    schema = failure(report, "schema_valid")
    assert set(schema["offending"]) == {bad_split, bad_task} and "split" in schema["detail"]
    msg = raised(report)
    assert "allowed_splits" in msg and "allowed_tasks" in msg and bad_split in msg and bad_task in msg
    assert "'holdout'" in msg and "'segmentation'" in msg
    assert "no_group_overlap" not in msg  # an unknown split is not a second split of its scene


def test_patient_in_two_splits_fails_and_its_key_never_leaks(data, tmp_path):
    _, recs = rows(data)
    scene = next(r["meta"]["scene_id"] for r in recs if r["split"] == "train")
    group = [r["id"] for r in recs if r["meta"]["scene_id"] == scene]
    moved = group[-1]

    def leak(recs):
        for r in recs:
            if r["meta"]["scene_id"] == scene:
                r["meta"]["patient_id"] = SECRET  # the first configured key wins over meta.scene_id
            if r["id"] == moved:
                r["split"] = "test"

    edit(data, leak)
    out = tmp_path / "out"
    report = validate_dataset(data, out_dir=out)
    f = failure(report, "no_group_overlap")
    assert set(f["offending"]) == set(group) and f["mostly"] == 1.0
    msg = raised(report)
    assert moved in msg and SECRET not in msg
    written = [p for p in out.rglob("*") if p.is_file() and p.suffix in (".json", ".html")]
    assert written and not [p for p in written if SECRET in p.read_text(errors="ignore")]
    assert report.statistics["group_keys_used"]["meta.patient_id"] == len(group)


def test_nan_image_fails_image_finite(data):
    from PIL import Image

    _, recs = rows(data)
    row = next(r for r in recs if r["images"][0]["kind"] == "2d")
    arr = np.asarray(Image.open(data / row["images"][0]["path"]), dtype=np.float32)
    arr[5:9, 5:9] = np.nan
    np.save(data / "images" / "nan.npy", arr)

    def point(recs):
        next(r for r in recs if r["id"] == row["id"])["images"][0]["path"] = "images/nan.npy"

    edit(data, point)
    report = validate_dataset(data)
    f = failure(report, "image_finite")
    assert f["suite"] == "images" and f["offending"] == ["images/nan.npy"] and f["samples"] == [row["id"]]
    assert [x["check"] for x in report.failures] == ["image_finite"]  # shape, depth, intensity all fine
    msg = raised(report)
    assert "image_finite" in msg and row["id"] in msg and "images/nan.npy" in msg


def test_class_imbalance_fails_per_split(data):
    def all_yes(recs):
        for r in recs:
            if r["split"] == "train" and r.get("choices") == ["yes", "no"]:
                r["answer"] = "yes"

    edit(data, all_yes)
    report = validate_dataset(data, images=False)
    f = failure(report, "class_balance")
    assert f["suite"] == "class_balance" and f["offending"] == ["train"]
    balance = {b["split"]: b for b in report.statistics["class_balance"]}
    assert balance["train"]["n_no"] == 0 and balance["train"]["minority_share"] == 0.0
    assert "class_balance" in raised(report)


def test_mostly_from_config_tolerates_a_small_defect_rate(data, tmp_path):
    _, recs = rows(data)
    (data / recs[0]["images"][0]["path"]).unlink()  # 1 of 40 images, ~8 of ~310 rows
    assert not validate_dataset(data).success  # default mostly 0.99
    yaml_path = tmp_path / "loose.yaml"
    yaml_path.write_text("mostly: 0.9\n")
    cfg = ValidationConfig.from_yaml(yaml_path)
    assert cfg.mostly == 0.9 and cfg.strict == ValidationConfig().strict
    report = validate_dataset(data, config=cfg)
    assert report.success, report.message()
    exists = next(e for e in report.suites["manifest"]["expectations"] if e["check"] == "images_exist")
    assert exists["unexpected_count"] > 0 and exists["mostly"] == 0.9


def test_parquet_manifest_and_max_images(synth_root, tmp_path):
    from radfm.data.manifest import read_manifest, write_manifest

    data = tmp_path / "pq"
    shutil.copytree(synth_root, data)
    write_manifest(read_manifest(data / "manifest.jsonl"), data / "manifest.parquet")
    (data / "manifest.jsonl").unlink()
    report = validate_dataset(data, config=ValidationConfig(max_images=5))
    assert report.success, report.message()
    assert report.statistics["images_checked"] == 5


def test_cli_exit_codes(synth_root, data, tmp_path, capsys):
    from radfm.cli import main

    assert main(["validate", str(synth_root), "--out", str(tmp_path / "ok"), "--no-images"]) == 0
    assert "validation passed" in capsys.readouterr().out
    _, recs = rows(data)
    (data / recs[0]["images"][0]["path"]).unlink()
    assert main(["validate", str(data), "--out", str(tmp_path / "bad")]) == 1
    out = capsys.readouterr().out
    assert "FAIL manifest/images_exist" in out and recs[0]["id"] in out and "validation FAILED" in out
    assert main(["validate", str(data), "--out", str(tmp_path / "loose"), "--mostly", "0.9"]) == 0
    assert main(["validate", str(tmp_path / "nowhere")]) == 2
    assert "no manifest" in capsys.readouterr().out


def test_cli_default_out_under_radfm_home(synth_root, capsys):
    from radfm.cli import main
    from radfm.paths import radfm_home

    assert main(["validate", str(synth_root), "--no-images"]) == 0
    assert (radfm_home() / "validation" / synth_root.name / "validation.json").is_file()


def test_import_turns_gx_analytics_off_unless_set():
    code = "import os, radfm.validation; print(os.environ['GX_ANALYTICS_ENABLED'])"
    env = {k: v for k, v in os.environ.items() if k != "GX_ANALYTICS_ENABLED"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "false"
    env["GX_ANALYTICS_ENABLED"] = "true"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "true"


def test_report_logged_as_mlflow_artifacts(synth_root, tmp_path):
    mlflow = pytest.importorskip("mlflow")

    report = validate_dataset(synth_root, out_dir=tmp_path / "out", images=False)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    try:
        # An experiment of its own: an earlier test in this process may have left another store's one active.
        experiment = mlflow.set_experiment("validation-report")
        with mlflow.start_run(experiment_id=experiment.experiment_id) as run:
            report.log_to_mlflow()
        client = mlflow.MlflowClient()
        names = {a.path for a in client.list_artifacts(run.info.run_id, "validation")}
        assert {"validation/validation.json", "validation/data_docs", "validation/gx"} <= names
        assert client.get_run(run.info.run_id).data.metrics["validation_success"] == 1.0
    finally:
        mlflow.set_tracking_uri(None)
