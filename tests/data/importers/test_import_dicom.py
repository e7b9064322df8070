"""The DICOM importer on pydicom's CT/MR test files made into studies with a patient name and ID that must
never come out."""

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
from radfm.data.importers import find_dicom_file, ingest_dicom_folder, scrub
from radfm.data.importers.deid import file_id

SECRETS = ("Doe", "Jane", "SECRET123", "ACC777", "19700101", "Elsewhere", "House", "Gregory")


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
    # Files are named by their opaque id (input names may hold identifiers); find_dicom_file maps it back.
    assert err.value.file == file_id("study_bad/broken.dcm", "s") and err.value.sample_id.startswith("dicom-")
    assert find_dicom_file(root, err.value.file, salt="s") == str(root / "study_bad" / "broken.dcm")
    assert "reports.csv row 3" in err.value.reason and "not a readable DICOM" in err.value.reason
    assert "study_bad" not in str(err.value) and "broken" not in str(err.value)

    samples, quarantine = ingest_dicom_folder(root, tmp_path / "reports.csv", tmp_path / "out", salt="s",
                                              on_error="quarantine")
    assert len(samples) == 1 and len(samples) + len(quarantine) == 4
    files = [r.file for r in quarantine.items]
    assert files == [file_id("study_bad/broken.dcm", "s"), "reports.csv", file_id("study_trunc/image.dcm", "s")]
    assert "cannot read the pixels" in quarantine.items[2].reason and "corrupt" in quarantine.items[2].reason
    assert "row 4" in quarantine.items[1].reason and "study_none" not in quarantine.items[1].reason


def test_scrub_is_whole_word_and_case_insensitive() -> None:
    assert scrub("Doe, doe, DOE^JANE and Doeville", {"Doe", "DOE^JANE"}) == (
        "[redacted], [redacted], [redacted] and Doeville")
