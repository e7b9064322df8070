"""The DICOM importer: a folder of DICOM studies + a CSV of reports → de-identified report samples, each
series converted (NIfTI for a series or multi-frame file, PNG for one frame) so no header travels."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from radfm.data import prompts
from radfm.data.errors import Quarantine, SampleError
from radfm.data.importers.deid import _PHI_COLUMN_HINTS, _id_salt, _quiet_pydicom, opaque_id, scrub
from radfm.data.importers.dicom_pixels import DicomImage, _nifti_ready, _png_ready, dicom_to_array
from radfm.data.importers.dicom_scan import _DicomFile, _DicomIndex, _scan_dicom
from radfm.data.importers.run import (
    DEFAULT_FRACTIONS,
    _Run,
    _split_value,
    _write_nifti,
    _write_png,
    assign_split,
)
from radfm.data.manifest import Sample, _validate_row

log = logging.getLogger(__name__)

_KEY_COLUMNS = {
    "uid": ("studyinstanceuid", "study_instance_uid", "study_uid", "studyuid"),
    "accession": ("accessionnumber", "accession_number", "accession"),
    "folder": ("folder", "study_folder", "study", "path", "directory"),
}


def ingest_dicom_folder(
    dicom_root: str | Path,
    reports_csv: str | Path,
    out_root: str | Path,
    *,
    source: str = "dicom",
    key: str | None = None,
    report_col: str = "report",
    split_col: str = "split",
    split_fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    salt: str | None = None,
    on_error: str = "raise",
    manifest_path: str | Path | None = None,
) -> tuple[list[Sample], Quarantine]:
    """A folder of DICOM studies + a CSV of reports → de-identified report samples.

    ``dicom_root`` holds one sub-folder per study or series (any depth), or DICOM files directly. Each CSV row
    is one sample, keyed (``key``, else the first column found) by StudyInstanceUID, AccessionNumber or the
    sub-folder name; its text is ``report_col`` (or ``findings`` + ``impression``). Every series of the study
    becomes one image: NIfTI (H×W×D, spacing in the affine) for a series or multi-frame file, PNG for a single
    frame (16-bit when needed; ``meta.images[i].intensity`` maps pixels back to modality units). The sample id
    is ``<source>-`` + a salted sha256 of the study UID (see :func:`_id_salt`). Errors name the CSV row and
    the input file relative to ``dicom_root``, never a header value.
    """
    import pandas as pd

    dicom_root, reports_csv = Path(dicom_root), Path(reports_csv)
    if not dicom_root.is_dir():
        raise FileNotFoundError(f"DICOM folder {dicom_root} does not exist")
    salt = _id_salt(salt)
    run = _Run(source, out_root, manifest_path, on_error, "ingest")
    df = pd.read_csv(reports_csv, dtype=str, keep_default_na=False)
    columns = {c.strip().lower(): c for c in df.columns}
    key_col, key_type = _key_column(columns, key, reports_csv)
    text_cols = _report_columns(columns, report_col, reports_csv)
    phi_cols = [c for low, c in columns.items()
                if any(h in low for h in _PHI_COLUMN_HINTS) and c not in (key_col, *text_cols)]
    with _quiet_pydicom():
        index = _scan_dicom(dicom_root)
        used: set[str] = set()
        for i, rec in enumerate(df.to_dict("records")):
            where = f"{reports_csv.name} row {i + 2}"
            run.row(lambda where=where, rec=rec: _dicom_row(
                run, index, rec, where, key_col, key_type, text_cols, phi_cols, split_col, split_fractions,
                seed, salt, reports_csv.name, used))
    orphans = sum(len(v) for f, v in index.unreadable.items() if f"folder:{f}" not in used)
    if orphans:
        log.warning("%s: %d files under the DICOM folder could not be read and belong to no reported study",
                    source, orphans)
    unreported = len({f.study_uid for f in index.files if f"study:{f.study_uid}" not in used})
    if unreported:
        log.info("%s: %d studies have no report row and were not imported", source, unreported)
    return run.finish()


def _key_column(columns: dict[str, str], key: str | None, csv: Path) -> tuple[str, str]:
    if key is not None:
        if key.strip().lower() not in columns:
            raise ValueError(f"{csv} has no column {key!r}")
        low = key.strip().lower()
        kind = next((t for t, names in _KEY_COLUMNS.items() if low in names), "folder")
        return columns[low], kind
    for kind, names in _KEY_COLUMNS.items():
        for n in names:
            if n in columns:
                return columns[n], kind
    raise ValueError(f"{csv} needs a key column: StudyInstanceUID, AccessionNumber or folder")


def _report_columns(columns: dict[str, str], report_col: str, csv: Path) -> list[str]:
    if report_col.lower() in columns:
        return [columns[report_col.lower()]]
    parts = [columns[c] for c in ("findings", "impression") if c in columns]
    if not parts:
        raise ValueError(f"{csv} needs a {report_col!r} column (or findings/impression)")
    return parts


def _dicom_row(run: _Run, index: _DicomIndex, rec: dict[str, str], where: str, key_col: str, key_type: str,
               text_cols: list[str], phi_cols: list[str], split_col: str, fractions: Sequence[float],
               seed: int, salt: str, csv_name: str, used: set[str]) -> list[Sample]:
    key = str(rec.get(key_col, "")).strip()
    if not key:
        raise SampleError(where, csv_name, f"{where}: the key column {key_col!r} is empty")
    files, study_uids, sid = _row_files(run, index, key, key_type, key_col, where, salt, csv_name, used)
    run.check_id(sid, files[0].rel, where)
    converted, images_meta = _convert_series(run, sid, where, files)

    terms = set().union(*(f.terms for f in files))
    terms.update(str(rec[c]).strip() for c in phi_cols if len(str(rec[c]).strip()) >= 2)
    if key_type == "accession":
        terms.add(key)
    text_parts = [f"{c.strip().capitalize()}: {rec[c].strip()}" if len(text_cols) > 1 else rec[c].strip()
                  for c in text_cols if str(rec.get(c, "")).strip()]
    split_given = str(rec.get(split_col, "") or "").strip()
    row = {
        "id": sid,
        "task": "report",
        # By the UID, not the salted id: the same split on every machine, whatever its salt.
        "split": _split_value(split_given) if split_given else assign_split(study_uids[0], seed, fractions),
        "question": prompts.render("report", None),
        "answer": scrub("\n".join(text_parts), terms),
        "images": [{"path": rel, "kind": "3d" if image.is_3d else "2d"} for rel, image, _ in converted],
        "source": run.source,
        "meta": {"template": "report", "images": images_meta},
    }
    sample = _validate_row(row, where)
    _write_converted(run, sid, where, converted)
    return run.claim([sample])


def _row_files(run: _Run, index: _DicomIndex, key: str, key_type: str, key_col: str, where: str, salt: str,
               csv_name: str, used: set[str]) -> tuple[list[_DicomFile], list[str], str]:
    """The DICOM files of a row's study, its study UIDs and its sample id; raises when a file of the study
    (or the row's folder) is unreadable or nothing matches. Marks what was used in ``used``."""
    files = index.lookup(key_type, key)
    if not files and key_type == "folder" and index.unreadable.get(key):
        used.add(f"folder:{key}")
        rel, reason = index.unreadable[key][0]
        raise SampleError(opaque_id(f"{key_type}:{key}", salt, run.slug), rel,
                          f"{where}: not a readable DICOM file ({reason}); fix or remove it")
    if not files:
        # The key itself may be an accession number: the error names the row, not the value.
        raise SampleError(opaque_id(f"{key_type}:{key}", salt, run.slug), csv_name,
                          f"{where}: no readable DICOM under the DICOM folder matches this row's {key_col}")
    study_uids = sorted({f.study_uid for f in files if f.study_uid}) or [f"{key_type}:{key}"]
    sid = opaque_id(study_uids[0], salt, run.slug)
    folders = {f.folder for f in files if "/" in f.rel}
    used.update(f"folder:{f}" for f in folders)
    used.update(f"study:{u}" for u in study_uids)
    for folder in sorted(folders):
        for rel, reason in index.unreadable.get(folder, []):
            raise SampleError(sid, rel, f"{where}: not a readable DICOM file ({reason}); fix or remove it")
    return files, study_uids, sid


def _convert_series(run: _Run, sid: str, where: str, files: list[_DicomFile]
                    ) -> tuple[list[tuple[str, DicomImage, np.ndarray]], list[dict[str, Any]]]:
    """Each series of the study (by SeriesNumber, then path) → (its output path, image, pixels to write) and
    its ``meta.images`` entry."""
    series: dict[str, list[_DicomFile]] = {}
    for f in files:
        series.setdefault(f.series_uid, []).append(f)
    ordered = sorted(series.values(), key=lambda fs: (fs[0].series_number, fs[0].rel))
    converted: list[tuple[str, DicomImage, np.ndarray]] = []
    images_meta: list[dict[str, Any]] = []
    for j, group in enumerate(ordered):
        try:
            image = dicom_to_array([f.path for f in group], sid)
        except SampleError as err:
            bad = next((f.rel for f in group if err.file and Path(err.file) == f.path), group[0].rel)
            raise SampleError(sid, bad, f"{where}: cannot read the pixels: {_safe_message(err.reason, group)}"
                              ) from None
        except Exception as exc:  # a header that broke between the scan and the read
            raise SampleError(sid, group[0].rel, f"{where}: cannot read the pixels ({type(exc).__name__}: "
                                                 f"{_safe_message(str(exc), group)})") from None
        meta = {"modality": image.modality, "spacing": [round(float(s), 6) for s in image.spacing],
                "shape": list(image.array.shape)}
        if image.is_3d:
            pixels = _nifti_ready(image.array)
        else:
            pixels, meta["intensity"] = _png_ready(image.array)
        rel = f"images/{run.slug}/{sid}/series{j:02d}" + (".nii.gz" if image.is_3d else ".png")
        converted.append((rel, image, pixels))
        images_meta.append(meta)
    return converted, images_meta


def _write_converted(run: _Run, sid: str, where: str,
                     converted: list[tuple[str, DicomImage, np.ndarray]]) -> None:
    for rel, image, pixels in converted:
        try:
            if image.is_3d:
                _write_nifti(pixels, run.out_root / rel, image.spacing)
            else:
                _write_png(pixels, run.out_root / rel)
        except (OSError, ValueError, TypeError) as exc:
            raise SampleError(sid, rel, f"{where}: could not write the converted image ({exc})") from None


def _safe_message(msg: str, group: list[_DicomFile]) -> str:
    """A reader's message with input paths made relative and the patient's identifiers scrubbed."""
    msg = (msg.splitlines()[0] if msg else "")[:300]
    for f in group:
        msg = msg.replace(str(f.path), f.rel)
    return scrub(msg, set().union(*(f.terms for f in group)))
