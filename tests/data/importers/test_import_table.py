"""The table importer on CSV/JSONL tables with good and bad rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from radfm.data import prompts
from radfm.data.errors import SampleError
from radfm.data.importers import assign_split, ingest_table
from radfm.data.manifest import read_manifest


def _png(path: Path, seed: int = 0, size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size), dtype=np.uint8)).save(path)
    return path


def _nifti(path: Path) -> Path:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.float32), np.eye(4)), str(path))
    return path

def test_table_csv_copies_images_infers_kind_and_templates_reports(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _png(src / "cxr" / "a.png", 1)
    _png(src / "cxr" / "b.png", 2)
    _nifti(src / "ct" / "vol.nii.gz")
    (src / "table.csv").write_text(
        "id,image,image_1,image_2,images,question,answer,report,labels\n"
        "r1,cxr/a.png,,,,Is there a nodule?,No.,,\n"
        "r2,ct/vol.nii.gz,,,,,,Findings: normal CT. Impression: no acute disease.,\n"
        "r3,,cxr/a.png,cxr/b.png,,Compare the two images.,Stable.,,\n"
        "r4,,,,cxr/a.png;cxr/b.png,Any effusion?,Yes.,,effusion;pneumonia\n"
    )
    out = tmp_path / "out"
    samples, quarantine = ingest_table(src / "table.csv", out)
    assert len(quarantine) == 0 and [s.id for s in samples] == ["r1", "r2", "r3", "r4"]
    r1, r2, r3, r4 = samples
    assert r1.task == "vqa" and r1.images[0].path == "images/table/cxr/a.png" and r1.images[0].kind == "2d"
    assert r2.task == "report" and r2.question == prompts.render("report", None)
    assert r2.answer.startswith("Findings") and r2.images[0].kind == "3d" and r2.meta == {"template": "report"}
    assert [i.path for i in r3.images] == ["images/table/cxr/a.png", "images/table/cxr/b.png"]
    assert len(r4.images) == 2 and r4.labels == ["effusion", "pneumonia"]
    assert [s.split for s in samples] == [assign_split(s.id) for s in samples]
    assert (out / "images/table/cxr/a.png").read_bytes() == (src / "cxr/a.png").read_bytes()
    assert (out / "images/table/ct/vol.nii.gz").is_file()
    assert read_manifest(out / "manifest.jsonl") == samples
    assert (out / "manifest.profile.json").is_file() and not (out / "manifests").exists()


def test_table_jsonl_with_splits_kinds_links_and_task(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _png(src / "x.png")
    # A DICOM file named by its UID (no suffix): the reader knows it by content, the kind column says 2d.
    pydicom_data = pytest.importorskip("pydicom.data")
    (src / "scan").write_bytes(Path(pydicom_data.get_testdata_file("CT_small.dcm")).read_bytes())
    rows = [
        {"id": "j1", "images": [{"path": "x.png", "position": 0}], "question": "Modality?", "answer": "X-ray",
         "split": "validation", "site": "A", "patient_name": "Doe^Jane"},
        {"id": "j2", "image": "scan", "kind": "2d", "question": "Q?", "answer": "A.", "split": "test"},
    ]
    (src / "t.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    samples, _ = ingest_table(src / "t.jsonl", tmp_path / "out", task="modality", source="mine", link=True,
                              meta_cols=["site"])
    assert [s.split for s in samples] == ["val", "test"]
    assert samples[0].task == "modality" and samples[0].images[0].position == 0
    assert samples[0].meta == {"site": "A"}  # other columns (a patient name) are not copied
    assert samples[0].source == "mine" and samples[1].images[0].kind == "2d"
    for written in ("manifest.jsonl", "manifest.profile.json"):
        assert "Doe" not in (tmp_path / "out" / written).read_text()


def test_table_bad_rows_name_sample_and_file_and_quarantine_adds_up(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _png(src / "ok.png")
    _png(tmp_path / "outside.png")
    (src / "bad.csv").write_text(
        "id,image,question,answer,task\n"
        "good,ok.png,Q?,A.,vqa\n"
        "missing,nope.png,Q?,A.,vqa\n"
        "schema,ok.png,Q?,A.,segmentation\n"
        "escape,../outside.png,Q?,A.,vqa\n"
        "noanswer,ok.png,Q?,,vqa\n"
        "good,ok.png,Q?,A.,vqa\n"
    )
    out = tmp_path / "out"
    with pytest.raises(SampleError) as err:
        ingest_table(src / "bad.csv", out)
    assert err.value.sample_id == "missing" and err.value.file.endswith("nope.png")
    assert "bad.csv row 3" in str(err.value) and "not found" in str(err.value)

    samples, quarantine = ingest_table(src / "bad.csv", out, on_error="quarantine")
    assert [s.id for s in samples] == ["good"]
    assert len(samples) + len(quarantine) == 6
    by_id = {r.sample_id: r for r in quarantine.items}
    assert set(by_id) == {"missing", "schema", "escape", "noanswer", "good"}
    assert "task" in by_id["schema"].reason and by_id["schema"].file == "images/bad/ok.png"
    assert "resolves outside the image root" in by_id["escape"].reason
    assert "answer" in by_id["noanswer"].reason
    assert "duplicate" in by_id["good"].reason
    report = out / "manifest.quarantine.jsonl"
    assert len(report.read_text().splitlines()) == 5
    assert not (out / "images" / "outside.png").exists()


def test_table_invalid_json_line_is_a_sample_error(tmp_path: Path) -> None:
    (tmp_path / "t.jsonl").write_text('{"id": "a", "question": "Q?", "answer": "A."}\n{oops\n')
    samples, q = ingest_table(tmp_path / "t.jsonl", tmp_path / "out", on_error="quarantine")
    assert len(samples) == 1 and len(q) == 1 and "not valid JSON" in q.items[0].reason
    assert q.items[0].sample_id == "t.jsonl line 2"


def test_table_family_column_and_empty_question(tmp_path: Path) -> None:
    """A ``family`` column is kept as ``meta["family"]``; a row with no question gets its task's default one."""
    src = tmp_path / "src"
    _png(src / "a.png")
    (src / "t.csv").write_text(
        "id,image,question,answer,task,family\n"
        "f1,a.png,Which view?,PA,vqa,view\n"
        "f2,a.png,,CT,modality,\n"
        "f3,a.png,,normal,,\n"
    )
    samples, _ = ingest_table(src / "t.csv", tmp_path / "out")
    assert samples[0].meta == {"family": "view"}
    assert samples[1].question == prompts.render("modality", None)
    assert samples[1].meta == {"template": "modality", "question_missing": True}
    assert samples[2].task == "vqa" and samples[2].question == prompts.render("diagnosis", None)
    profile = json.loads((tmp_path / "out" / "manifest.profile.json").read_text())
    assert "view" in {f["name"] for f in profile["families"]}
    assert any("had an empty question" in m for f in profile["families"] for m in f["messages"])
