"""Bad input at the DICOM importer (issue 25), one named case each: identifiers planted in folder names, file
names, headers and report text never leave it (every file written, log line, warning and message is searched),
links out of the DICOM folder are refused unread, oversized headers are refused before any pixel is read,
reports tables without rows are one error. Real pydicom test files, copied and edited; no mocks."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from radfm.data.errors import Quarantine, SampleError
from radfm.data.importers import find_dicom_file, ingest_dicom_folder
from radfm.data.importers.deid import file_id
from tests.data.importers.test_import_bad_input import _no_leak, _outside  # one copy of each
from tests.data.importers.test_import_dicom import _testdata

# ------------------------------------------------------------------------------------------------- DICOM


# Identifiers planted in folder names, file names, headers and report text; none may come out.
PLANTED = ("Kowalczyk", "Jolanta", "MRN123456", "19610314", "1961-03-14", "ACC555777",
           "Nowak", "Piotr", "MRN654321", "19550102",
           "Wisniewska", "Agnieszka", "MRN777888", "19800505", "1980-05-05",
           "Zielinski", "Marek", "MRN999000",
           "Lewandowski", "Tomasz", "MRN246810",
           "Kaminska", "MRN000111")


def _patient(ds, name: str, mrn: str, birth: str, study_uid: str) -> None:
    ds.PatientName = name
    ds.PatientID = mrn
    ds.OtherPatientIDs = mrn
    ds.PatientBirthDate = birth
    ds.AccessionNumber = "ACC555777"
    ds.StudyInstanceUID = study_uid


def _planted_studies(root: Path, outside: Path) -> None:
    """Five studies whose folder and file names carry the patient's name, MRN or birth date:
    one that reads, one unreadable file, one whose pixels are cut, one a link out, one a giant header."""
    import pydicom
    from pydicom.uid import generate_uid

    ok = root / "Kowalczyk_Jolanta_MRN123456"
    ok.mkdir(parents=True)
    for k in range(2):  # a two-slice series
        ds = pydicom.dcmread(_testdata("CT_small.dcm"))
        _patient(ds, "Kowalczyk^Jolanta", "MRN123456", "19610314", "1.2.826.0.1.3680043.99.1")
        ds.SeriesInstanceUID = "1.2.826.0.1.3680043.99.1.1"
        ds.SOPInstanceUID = generate_uid()
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + 2.0 * k]
        ds.InstanceNumber = k + 1
        ds.save_as(ok / f"MRN123456_Kowalczyk_{k}.dcm")

    broken = root / "Nowak_Piotr_19550102"
    broken.mkdir()
    (broken / "Nowak_Piotr_MRN654321.dcm").write_bytes(b"Nowak^Piotr MRN654321 not DICOM" * 8)

    cut = root / "MRN777888_Wisniewska"
    cut.mkdir()
    ds = pydicom.dcmread(_testdata("MR_small.dcm"))
    _patient(ds, "Wisniewska^Agnieszka", "MRN777888", "19800505", "1.2.826.0.1.3680043.99.3")
    ds.PixelData = ds.PixelData[:100]  # a header that reads, pixels that do not
    ds.save_as(cut / "Wisniewska_Agnieszka_1980-05-05.dcm")

    linked = root / "Zielinski_Marek_MRN999000"
    linked.mkdir()
    ds = pydicom.dcmread(_testdata("CT_small.dcm"))
    _patient(ds, "Zielinski^Marek", "MRN999000", "19700101", "1.2.826.0.1.3680043.99.4")
    ds.save_as(outside / "Zielinski.dcm")
    os.symlink(outside / "Zielinski.dcm", linked / "MRN999000_Zielinski.dcm")

    giant = root / "Lewandowski_Tomasz_MRN246810"
    giant.mkdir()
    ds = pydicom.dcmread(_testdata("CT_small.dcm"))
    _patient(ds, "Lewandowski^Tomasz", "MRN246810", "19650707", "1.2.826.0.1.3680043.99.5")
    ds.Rows, ds.Columns, ds.NumberOfFrames = 65535, 65535, 1000  # the pixel data stays 128×128
    ds.save_as(giant / "MRN246810_Lewandowski.dcm")


REPORTS = ("folder,patient_name,report\n"
           'Kowalczyk_Jolanta_MRN123456,Kowalczyk Jolanta,"Patient Jolanta Kowalczyk (MRN123456, DOB 1961-03-14, '
           'acc. ACC555777), folder Kowalczyk_Jolanta_MRN123456: KOWALCZYK^JOLANTA has no acute findings."\n'
           'Nowak_Piotr_19550102,Nowak Piotr,"Piotr Nowak, MRN654321: normal chest."\n'
           'MRN777888_Wisniewska,Wisniewska Agnieszka,"Agnieszka Wisniewska born 1980-05-05: normal brain."\n'
           'Zielinski_Marek_MRN999000,Zielinski Marek,"Marek Zielinski MRN999000: normal."\n'
           'Lewandowski_Tomasz_MRN246810,Lewandowski Tomasz,"Tomasz Lewandowski MRN246810: normal."\n'
           'Kaminska_MRN000111,Kaminska,"No images for Kaminska MRN000111."\n')


def _assert_clean(text: str, what: str) -> None:
    low = text.lower()
    for secret in PLANTED:
        assert secret.lower() not in low, f"{secret!r} in {what}: {text[:500]}"


def _assert_clean_tree(out: Path) -> None:
    for path in out.rglob("*"):
        _assert_clean(path.relative_to(out).as_posix(), "a written file's name")
        if path.is_file():
            data = path.read_bytes()
            if path.suffix in (".jsonl", ".json", ".yaml", ".txt", ".csv"):
                _assert_clean(data.decode(), str(path.relative_to(out)))
            else:  # compressed pixels: the exact bytes only
                for secret in PLANTED:
                    assert secret.encode() not in data, (secret, path)


def test_dicom_identifiers_never_leave_in_any_mode(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                    recwarn: pytest.WarningsRecorder,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)
    root, outside = tmp_path / "dicom", _outside(tmp_path)
    _planted_studies(root, outside)
    lines = REPORTS.splitlines()
    (tmp_path / "reports.csv").write_text(REPORTS)

    # Raise mode, one run per failing study (each raises on its own row), and the good one alone.
    raised: dict[str, SampleError] = {}
    for i, line in enumerate(lines[2:], start=2):
        (tmp_path / "one.csv").write_text(f"{lines[0]}\n{line}\n")
        with pytest.raises(SampleError) as err:
            ingest_dicom_folder(root, tmp_path / "one.csv", tmp_path / f"raise{i}", salt="pepper")
        raised[line.split(",")[0]] = err.value
    (tmp_path / "one.csv").write_text(f"{lines[0]}\n{lines[1]}\n")
    good, _ = ingest_dicom_folder(root, tmp_path / "one.csv", tmp_path / "raise-ok", salt="pepper")
    assert len(good) == 1 and good[0].images[0].kind == "3d"

    # Each failure says why, names its row and an opaque file id that maps back to the file on this machine.
    reasons = {k: e.reason for k, e in raised.items()}
    assert "not a readable DICOM file" in reasons["Nowak_Piotr_19550102"]
    assert "cannot read the pixels" in reasons["MRN777888_Wisniewska"]
    assert "resolves outside the image root" in reasons["Zielinski_Marek_MRN999000"]
    assert "max_voxels" in reasons["Lewandowski_Tomasz_MRN246810"]
    assert "no readable DICOM" in reasons["Kaminska_MRN000111"]
    for folder, e in raised.items():
        assert "one.csv row 2" in e.reason and e.sample_id.startswith("dicom-")
        _assert_clean(str(e), f"the raise-mode error of {folder}")
        if e.file.startswith("file-"):
            found = find_dicom_file(root, e.file, salt="pepper")
            assert found is not None and Path(found).parent.name == folder
    assert raised["Zielinski_Marek_MRN999000"].file == file_id(
        "Zielinski_Marek_MRN999000/MRN999000_Zielinski.dcm", "pepper")

    # Quarantine mode, every row at once: rows in = rows written + quarantined.
    out = tmp_path / "quarantine"
    samples, quarantine = ingest_dicom_folder(root, tmp_path / "reports.csv", out, salt="pepper",
                                              on_error="quarantine")
    assert len(samples) == 1 and len(quarantine) == 5 and len(lines) - 1 == len(samples) + len(quarantine)
    assert len((out / "manifest.quarantine.jsonl").read_text().splitlines()) == 5
    assert "[redacted]" in samples[0].answer and "no acute findings" in samples[0].answer
    assert all(r.file.startswith("file-") or r.file == "reports.csv" for r in quarantine.items)

    # Keyed by StudyInstanceUID instead of the folder: the same verdicts, the same silence.
    (tmp_path / "by_uid.csv").write_text("StudyInstanceUID,report\n"
                                         + "".join(f"1.2.826.0.1.3680043.99.{k},Study {k} of Kowalczyk.\n"
                                                   for k in (1, 3, 4, 5)))
    by_uid, q_uid = ingest_dicom_folder(root, tmp_path / "by_uid.csv", tmp_path / "by-uid", salt="pepper",
                                        on_error="quarantine")
    assert len(by_uid) + len(q_uid) == 4

    # Nothing written anywhere, no log line, no warning, nothing printed carries a planted identifier.
    for written in tmp_path.iterdir():
        if written.name.startswith(("raise", "quarantine", "by-uid")):
            _assert_clean_tree(written)
    assert caplog.records and "rows in" in caplog.text  # the logs were captured at all
    for record in caplog.records:
        _assert_clean(record.getMessage(), f"log line {record.name}")
    for w in recwarn:
        _assert_clean(str(w.message), "a warning")
    printed = capsys.readouterr()
    _assert_clean(printed.out + printed.err, "stdout/stderr")


def _one_study(root: Path, folder: str, name: str = "image.dcm") -> Path:
    import pydicom

    (root / folder).mkdir(parents=True, exist_ok=True)
    ds = pydicom.dcmread(_testdata("CT_small.dcm"))
    ds.StudyInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(root / folder / name)
    return root / folder / name


def _dicom_both(tmp_path: Path, root: Path, reports: str, reason: str, rows: int) -> Quarantine:
    """Raise mode: the first bad row's SampleError names an opaque file and ``reason``. Quarantine mode:
    rows in = written + quarantined, and the outside file's bytes were never copied."""
    (tmp_path / "reports.csv").write_text(reports)
    with pytest.raises(SampleError) as err:
        ingest_dicom_folder(root, tmp_path / "reports.csv", tmp_path / "raise", salt="s")
    assert reason in err.value.reason and "reports.csv row" in err.value.reason
    assert err.value.file.startswith("file-") and err.value.sample_id.startswith("dicom-")
    samples, quarantine = ingest_dicom_folder(root, tmp_path / "reports.csv", tmp_path / "q", salt="s",
                                              on_error="quarantine")
    assert len(samples) + len(quarantine) == rows
    assert any(reason in r.reason for r in quarantine.items)
    _no_leak(tmp_path / "q")
    return quarantine


def test_dicom_file_linked_out_of_the_folder_is_refused_unread(tmp_path: Path) -> None:
    root, outside = tmp_path / "dicom", _outside(tmp_path)
    _one_study(root, "study_ok")
    _one_study(outside, "elsewhere")
    (root / "study_link").mkdir()
    os.symlink(outside / "elsewhere" / "image.dcm", root / "study_link" / "image.dcm")
    q = _dicom_both(tmp_path, root, "folder,report\nstudy_ok,Fine.\nstudy_link,Linked.\n",
                    "resolves outside the image root", rows=2)
    assert len(q) == 1


def test_dicom_folder_linked_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "dicom", _outside(tmp_path)
    _one_study(root, "study_ok")
    _one_study(outside, "series")
    os.symlink(outside / "series", root / "study_link", target_is_directory=True)
    q = _dicom_both(tmp_path, root, "folder,report\nstudy_ok,Fine.\nstudy_link,Linked.\n",
                    "resolves outside the image root", rows=2)
    assert len(q) == 1


def test_dicom_named_pipe_is_refused_without_blocking(tmp_path: Path) -> None:
    root = tmp_path / "dicom"
    _one_study(root, "study_ok")
    (root / "study_pipe").mkdir()
    try:
        os.mkfifo(root / "study_pipe" / "image.dcm")
    except (AttributeError, OSError) as exc:
        pytest.skip(f"no named pipes here ({exc})")
    _dicom_both(tmp_path, root, "folder,report\nstudy_ok,Fine.\nstudy_pipe,Piped.\n", "not a regular file",
                rows=2)


def test_dicom_links_inside_the_folder_are_read_once(tmp_path: Path) -> None:
    """A second link to a slice, and a folder link to a study, both inside the root: one slice, one study."""
    root = tmp_path / "dicom"
    real = _one_study(root, "study_ct")
    os.symlink(real, root / "study_ct" / "again.dcm")
    os.symlink(root / "study_ct", root / "alias", target_is_directory=True)
    (tmp_path / "reports.csv").write_text("folder,report\nstudy_ct,Fine.\n")
    samples, quarantine = ingest_dicom_folder(root, tmp_path / "reports.csv", tmp_path / "out", salt="s")
    assert len(samples) == 1 and len(quarantine) == 0
    assert samples[0].images[0].kind == "2d" and samples[0].meta["images"][0]["shape"] == [128, 128]
    _no_leak(tmp_path / "out")


def test_dicom_header_claiming_a_giant_image_is_refused_before_pixels(tmp_path: Path) -> None:
    import pydicom

    root = tmp_path / "dicom"
    _one_study(root, "study_ok")
    big = _one_study(root, "study_big")
    ds = pydicom.dcmread(big)
    ds.Rows, ds.Columns, ds.NumberOfFrames = 65535, 65535, 1000
    ds.save_as(big)
    _dicom_both(tmp_path, root, "folder,report\nstudy_ok,Fine.\nstudy_big,Big.\n", "max_voxels", rows=2)


def test_dicom_series_over_the_limit_is_refused_before_stacking(tmp_path: Path) -> None:
    """Each 128×128 slice passes a 40,000-voxel limit; the three stacked do not."""
    import pydicom

    from radfm.data.limits import ImageLimits

    root = tmp_path / "dicom"
    first = _one_study(root, "study_ser", "s0.dcm")
    base = pydicom.dcmread(first)
    for k in (1, 2):
        ds = pydicom.dcmread(first)
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        x, y, z = (float(v) for v in base.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + 2.0 * k]
        ds.save_as(root / "study_ser" / f"s{k}.dcm")
    (tmp_path / "reports.csv").write_text("folder,report\nstudy_ser,Three slices.\n")
    with pytest.raises(SampleError, match="the series of 3 files") as err:
        ingest_dicom_folder(root, tmp_path / "reports.csv", tmp_path / "out", salt="s",
                            limits=ImageLimits(max_voxels=40_000))
    assert "max_voxels" in str(err.value) and err.value.file.startswith("file-")


@pytest.mark.parametrize("content", [b"", b"folder,report\n"], ids=["empty", "header-only"])
def test_dicom_reports_table_without_rows_is_one_error(tmp_path: Path, content: bytes) -> None:
    root = tmp_path / "dicom"
    _one_study(root, "study_ok")
    (tmp_path / "reports.csv").write_bytes(content)
    for on_error in ("raise", "quarantine"):
        with pytest.raises(ValueError, match=r"reports\.csv: no rows"):
            ingest_dicom_folder(root, tmp_path / "reports.csv", tmp_path / "out", salt="s", on_error=on_error)
    assert not (tmp_path / "out").exists()
