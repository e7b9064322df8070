"""Importers on real files: PneumoniaMNIST (../shared/data), pydicom's CT/MR test files made into studies with
a patient name and ID that must never come out, and tables with good and bad rows."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from radfm.data import prompts
from radfm.data.errors import SampleError
from radfm.data.importers import (
    assign_split,
    ingest_dicom_folder,
    ingest_medmnist,
    ingest_table,
    scrub,
)
from radfm.data.manifest import read_manifest, resolve_image_path

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
PNEUMONIA = SHARED_DATA / "pneumoniamnist.npz"
SECRETS = ("Doe", "Jane", "SECRET123", "ACC777", "19700101", "Elsewhere", "House", "Gregory")


def _png(path: Path, seed: int = 0, size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size), dtype=np.uint8)).save(path)
    return path


def _nifti(path: Path) -> Path:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.float32), np.eye(4)), str(path))
    return path


# ------------------------------------------------------------------------------------------------ splits


def test_assign_split_is_stable_seeded_and_proportional() -> None:
    ids = [f"s{i}" for i in range(4000)]
    splits = [assign_split(i) for i in ids]
    assert splits == [assign_split(i) for i in ids]
    frac = {s: splits.count(s) / len(ids) for s in ("train", "val", "test")}
    assert abs(frac["train"] - 0.8) < 0.03 and abs(frac["val"] - 0.1) < 0.03 and abs(frac["test"] - 0.1) < 0.03
    assert [assign_split(i, seed=1) for i in ids] != splits
    assert {assign_split(i, fractions=(0, 0, 1)) for i in ids[:50]} == {"test"}


# ------------------------------------------------------------------------------------------------ MedMNIST


@pytest.mark.shared_data
def test_medmnist_pneumonia_keeps_official_splits_and_pixels(tmp_path: Path) -> None:
    if not PNEUMONIA.is_file():
        pytest.skip(f"real PneumoniaMNIST not found at {PNEUMONIA} (see ../shared/data/README.md)")
    samples, quarantine = ingest_medmnist(PNEUMONIA, tmp_path / "out", max_per_split=12, modality_samples=True)
    assert len(quarantine) == 0
    diag = [s for s in samples if s.task == "diagnosis"]
    assert len(diag) == 36 and len(samples) == 72
    assert {s.split for s in diag} == {"train", "val", "test"}
    manifest = tmp_path / "out" / "manifests" / "pneumoniamnist.jsonl"
    assert read_manifest(manifest) == samples
    npz = np.load(PNEUMONIA)
    for s in diag:
        split, i = s.id.split("-")[1], int(s.id.split("-")[2])
        assert s.question == "Is there pneumonia in this chest X-ray?" and s.choices == ["yes", "no"]
        label = int(npz[f"{split}_labels"][i].ravel()[0])
        assert s.answer == ("yes" if label == 1 else "no")
        assert s.labels == (["pneumonia"] if label == 1 else [])
        png = np.asarray(Image.open(resolve_image_path(tmp_path / "out", s.images[0].path)))
        np.testing.assert_array_equal(png, npz[f"{split}_images"][i])
        assert s.images[0].kind == "2d"
    test_answers = {s.answer for s in diag if s.split == "test"}
    assert test_answers <= {"yes", "no"}
    modality = [s for s in samples if s.task == "modality"]
    assert {s.answer for s in modality} == {"X-ray"}
    assert {s.question for s in modality} == {prompts.render("modality", None)}


def test_medmnist_3d_volumes_and_generic_labels(tmp_path: Path) -> None:
    import nibabel as nib

    rng = np.random.default_rng(0)
    vols = rng.integers(0, 255, (3, 6, 8, 10), dtype=np.uint8)  # N×D×H×W
    npz = tmp_path / "organmnist3d.npz"
    np.savez(npz, train_images=vols, train_labels=np.array([[0], [2], [1]]),
             test_images=vols[:1], test_labels=np.array([[1]]))
    samples, _ = ingest_medmnist(npz, tmp_path / "out")
    assert [s.split for s in samples] == ["train"] * 3 + ["test"]
    s = samples[1]
    assert s.answer == "class 2" and s.images[0].kind == "3d" and s.images[0].path.endswith(".nii.gz")
    assert s.choices == ["class 0", "class 1", "class 2"]  # every class seen in the file, for every sample
    vol = nib.load(resolve_image_path(tmp_path / "out", s.images[0].path)).get_fdata()
    np.testing.assert_array_equal(vol, np.transpose(vols[1], (1, 2, 0)))  # stored H×W×D
    named, _ = ingest_medmnist(npz, tmp_path / "named", task_labels={0: "liver", 1: "kidney", 2: "spleen"})
    assert named[1].answer == "spleen" and named[1].choices == ["liver", "kidney", "spleen"]


def test_medmnist_bad_label_raises_or_is_quarantined(tmp_path: Path) -> None:
    imgs = np.zeros((4, 5, 5), np.uint8)
    npz = tmp_path / "pneumoniamnist.npz"
    np.savez(npz, val_images=imgs, val_labels=np.array([[0], [1], [7], [1]]))
    with pytest.raises(SampleError) as err:
        ingest_medmnist(npz, tmp_path / "out")
    assert err.value.sample_id == "pneumoniamnist-val-00002"
    assert "val_labels[2]" in err.value.file and "label 7" in err.value.reason
    samples, quarantine = ingest_medmnist(npz, tmp_path / "out", on_error="quarantine")
    assert len(samples) + len(quarantine) == 4 and len(quarantine) == 1
    assert (tmp_path / "out" / "manifests" / "pneumoniamnist.quarantine.jsonl").is_file()
    with pytest.raises(ValueError, match="no train_images"):
        np.savez(tmp_path / "empty.npz", x=imgs)
        ingest_medmnist(tmp_path / "empty.npz", tmp_path / "out")


# ------------------------------------------------------------------------------------------------ tables


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
    assert read_manifest(out / "manifests" / "table.jsonl") == samples


def test_table_jsonl_with_splits_kinds_links_and_task(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _png(src / "x.png")
    (src / "scan.bin").write_bytes(_png(src / "tmp.png").read_bytes())  # a suffix nobody knows: kind is given
    rows = [
        {"id": "j1", "images": [{"path": "x.png", "position": 0}], "question": "Modality?", "answer": "X-ray",
         "split": "validation", "site": "A", "patient_name": "Doe^Jane"},
        {"id": "j2", "image": "scan.bin", "kind": "2d", "question": "Q?", "answer": "A.", "split": "test"},
    ]
    (src / "t.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    samples, _ = ingest_table(src / "t.jsonl", tmp_path / "out", task="modality", source="mine", link=True,
                              meta_cols=["site"])
    assert [s.split for s in samples] == ["val", "test"]
    assert samples[0].task == "modality" and samples[0].images[0].position == 0
    assert samples[0].meta == {"site": "A"}  # other columns (a patient name) are not copied
    assert samples[0].source == "mine" and samples[1].images[0].kind == "2d"
    assert "Doe" not in (tmp_path / "out" / "manifests" / "mine.jsonl").read_text()


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
    assert "leaves the image root" in by_id["escape"].reason
    assert "answer" in by_id["noanswer"].reason
    assert "duplicate" in by_id["good"].reason
    report = out / "manifests" / "bad.quarantine.jsonl"
    assert len(report.read_text().splitlines()) == 5
    assert not (out / "images" / "outside.png").exists()


def test_table_invalid_json_line_is_a_sample_error(tmp_path: Path) -> None:
    (tmp_path / "t.jsonl").write_text('{"id": "a", "question": "Q?", "answer": "A."}\n{oops\n')
    samples, q = ingest_table(tmp_path / "t.jsonl", tmp_path / "out", on_error="quarantine")
    assert len(samples) == 1 and len(q) == 1 and "not valid JSON" in q.items[0].reason
    assert q.items[0].sample_id == "t.jsonl line 2"


# ------------------------------------------------------------------------------------------------ DICOM


def _testdata(name: str) -> str:
    pydicom_data = pytest.importorskip("pydicom.data")
    try:
        return pydicom_data.get_testdata_file(name)
    except Exception as exc:  # pydicom-data missing or offline
        pytest.skip(f"pydicom test file {name} is unavailable ({exc})")


def _identify(ds, study_uid: str) -> None:
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "SECRET123"
    ds.AccessionNumber = "ACC777"
    ds.PatientBirthDate = "19700101"
    ds.InstitutionName = "St Elsewhere"
    ds.ReferringPhysicianName = "House^Gregory"
    ds.StudyInstanceUID = study_uid


def _make_studies(root: Path) -> dict[str, str]:
    """study_ct: one CT slice; study_mr: one MR slice; study_ser: a 4-slice CT series written out of order."""
    import pydicom
    from pydicom.uid import generate_uid

    uids = {name: generate_uid() for name in ("study_ct", "study_mr", "study_ser")}
    for name, src in (("study_ct", "CT_small.dcm"), ("study_mr", "MR_small.dcm")):
        ds = pydicom.dcmread(_testdata(src))
        _identify(ds, uids[name])
        (root / name).mkdir(parents=True)
        ds.save_as(root / name / "image.dcm")
    base = pydicom.dcmread(_testdata("CT_small.dcm"))
    series_uid = generate_uid()
    (root / "study_ser").mkdir()
    for k in (2, 0, 3, 1):  # file order and InstanceNumber both disagree with the slice positions
        ds = pydicom.dcmread(_testdata("CT_small.dcm"))
        _identify(ds, uids["study_ser"])
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = 4 - k
        x, y, z = (float(v) for v in base.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + 2.5 * k]
        ds.PixelData = (base.pixel_array + 10 * k).astype(np.int16).tobytes()
        ds.save_as(root / "study_ser" / f"slice_{'cadb'[k]}.dcm")
    return uids


def _all_text(out: Path) -> str:
    return "\n".join(p.read_text() for p in out.rglob("*.jsonl"))


def test_dicom_folder_converts_and_deidentifies(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    import nibabel as nib
    import pydicom
    from pydicom.pixels import apply_modality_lut

    caplog.set_level(logging.DEBUG)
    root = tmp_path / "dicom"
    uids = _make_studies(root)
    (tmp_path / "reports.csv").write_text(
        "folder,patient_name,report\n"
        'study_ct,Jane Doe,"Patient Jane Doe (MRN SECRET123, DOB 1970-01-01), ref. Dr Gregory House. '
        'Findings: no nodule. DOE^JANE tolerated the exam."\n'
        "study_mr,Jane Doe,Findings: normal brain MRI for doe. Accession ACC777.\n"
        "study_ser,Jane Doe,Impression: unremarkable CT series at St Elsewhere.\n"
    )
    out = tmp_path / "out"
    samples, quarantine = ingest_dicom_folder(root, tmp_path / "reports.csv", out, salt="pepper")
    assert len(samples) == 3 and len(quarantine) == 0
    by_folder = dict(zip(("study_ct", "study_mr", "study_ser"), samples))

    # Opaque ids, report task, templated question, scrubbed text.
    for s in samples:
        assert re.fullmatch(r"dicom-[0-9a-f]{16}", s.id)
        assert s.task == "report" and s.question == prompts.render("report", None)
        assert "[redacted]" in s.answer or "Impression" in s.answer
    assert "no nodule" in by_folder["study_ct"].answer and "[redacted]" in by_folder["study_ct"].answer
    assert by_folder["study_mr"].answer == "Findings: normal brain MRI for [redacted]. Accession [redacted]."
    assert by_folder["study_ser"].answer == "Impression: unremarkable CT series at [redacted]."

    # One frame → PNG holding the CT's Hounsfield units (pixel * scale + offset); a series → H×W×D NIfTI.
    ct = by_folder["study_ct"]
    assert ct.images[0].kind == "2d" and ct.images[0].path.endswith(".png")
    meta = ct.meta["images"][0]
    assert meta["modality"] == "CT" and meta["spacing"] == [0.661468, 0.661468] and meta["shape"] == [128, 128]
    png = np.asarray(Image.open(out / ct.images[0].path)).astype(np.float64)
    hu = apply_modality_lut(pydicom.dcmread(_testdata("CT_small.dcm")).pixel_array, pydicom.dcmread(_testdata("CT_small.dcm")))
    np.testing.assert_allclose(png * meta["intensity"]["scale"] + meta["intensity"]["offset"], hu)
    assert by_folder["study_mr"].meta["images"][0]["modality"] == "MR"
    ser = by_folder["study_ser"]
    assert ser.images[0].kind == "3d" and ser.images[0].path.endswith(".nii.gz")
    vol = np.asarray(nib.load(out / ser.images[0].path).dataobj)
    assert vol.shape == (128, 128, 4)
    for k in range(4):  # ordered by position along the slice normal
        np.testing.assert_array_equal(vol[..., k] - vol[..., 0], 10 * k)
    assert ser.meta["images"][0]["spacing"] == [0.661468, 0.661468, 2.5]

    # No identifier, UID or DICOM header anywhere in what was written, logged or printed.
    text = _all_text(out)
    written = [p for p in out.rglob("*") if p.is_file()]
    assert not [p for p in written if p.suffix == ".dcm"]
    for p in written:
        data = p.read_bytes()
        assert b"SECRET123" not in data and b"Doe^Jane" not in data and b"DICM" not in data, p
    printed = capsys.readouterr()
    for secret in (*SECRETS, *uids.values()):
        assert secret.lower() not in text.lower(), secret
        assert not [p for p in out.rglob("*") if secret.lower() in p.name.lower()], secret
        assert secret.lower() not in json.dumps([s.meta for s in samples]).lower(), secret
        assert secret.lower() not in caplog.text.lower(), secret
        assert secret.lower() not in (printed.out + printed.err).lower(), secret
    assert "3 rows in" in caplog.text  # the logs were captured at all

    # Same salt → same ids; another salt → other ids.
    again, _ = ingest_dicom_folder(root, tmp_path / "reports.csv", tmp_path / "again", salt="pepper")
    assert [s.id for s in again] == [s.id for s in samples]
    salted, _ = ingest_dicom_folder(root, tmp_path / "reports.csv", tmp_path / "salted", salt="other")
    assert not {s.id for s in salted} & {s.id for s in samples}


def test_dicom_keys_by_study_uid_or_accession_and_merges_series(tmp_path: Path) -> None:
    import pydicom

    root = tmp_path / "dicom"
    uids = _make_studies(root)
    # Put the MR slice in the CT study: one study, two series → one sample with two images.
    mr = pydicom.dcmread(root / "study_mr" / "image.dcm")
    mr.StudyInstanceUID = uids["study_ct"]
    mr.save_as(root / "study_mr" / "image.dcm")
    (tmp_path / "by_uid.csv").write_text(f"StudyInstanceUID,report,split\n{uids['study_ct']},Two series.,test\n")
    samples, _ = ingest_dicom_folder(root, tmp_path / "by_uid.csv", tmp_path / "out", salt="s")
    assert len(samples) == 1 and len(samples[0].images) == 2 and samples[0].split == "test"
    assert [m["modality"] for m in samples[0].meta["images"]] == ["CT", "MR"]

    for f in (root / "study_ser").iterdir():
        ds = pydicom.dcmread(f)
        ds.AccessionNumber = "ACC888"
        ds.save_as(f)
    (tmp_path / "by_acc.csv").write_text("AccessionNumber,findings,impression\nACC888,Clear lungs.,Normal.\n")
    acc, _ = ingest_dicom_folder(root, tmp_path / "by_acc.csv", tmp_path / "acc", salt="s")
    assert acc[0].answer == "Findings: Clear lungs.\nImpression: Normal."
    assert "ACC888" not in _all_text(tmp_path / "acc")


def test_dicom_unreadable_file_and_unmatched_row(tmp_path: Path) -> None:
    import pydicom

    root = tmp_path / "dicom"
    _make_studies(root)
    (root / "study_bad").mkdir()
    (root / "study_bad" / "broken.dcm").write_bytes(b"this is not a DICOM file" * 10)
    ds = pydicom.dcmread(root / "study_mr" / "image.dcm")
    ds.PixelData = ds.PixelData[:100]  # a header that reads, pixels that do not
    (root / "study_trunc").mkdir()
    ds.StudyInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(root / "study_trunc" / "image.dcm")
    (tmp_path / "reports.csv").write_text(
        "folder,report\nstudy_ct,Fine.\nstudy_bad,Broken.\nstudy_none,Nothing here.\nstudy_trunc,Cut.\n"
    )
    with pytest.raises(SampleError) as err:
        ingest_dicom_folder(root, tmp_path / "reports.csv", tmp_path / "out", salt="s")
    assert err.value.file == "study_bad/broken.dcm" and err.value.sample_id.startswith("dicom-")
    assert "reports.csv row 3" in err.value.reason and "not a readable DICOM" in err.value.reason

    samples, quarantine = ingest_dicom_folder(root, tmp_path / "reports.csv", tmp_path / "out", salt="s",
                                              on_error="quarantine")
    assert len(samples) == 1 and len(samples) + len(quarantine) == 4
    files = [r.file for r in quarantine.items]
    assert files == ["study_bad/broken.dcm", "reports.csv", "study_trunc/image.dcm"]
    assert "cannot read the pixels" in quarantine.items[2].reason and "corrupt" in quarantine.items[2].reason
    assert "row 4" in quarantine.items[1].reason and "study_none" not in quarantine.items[1].reason


def test_scrub_is_whole_word_and_case_insensitive() -> None:
    assert scrub("Doe, doe, DOE^JANE and Doeville", {"Doe", "DOE^JANE"}) == (
        "[redacted], [redacted], [redacted] and Doeville")
