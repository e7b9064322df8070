"""The DICOM importer: a folder of DICOM studies + a CSV of reports → de-identified report samples, each
series converted (NIfTI for a series or multi-frame file, PNG for one frame) so no header travels."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from radfm.data import prompts
from radfm.data.errors import Quarantine, SampleError
from radfm.data.importers.deid import (
    _PHI_COLUMN_HINTS,
    _id_salt,
    _quiet_pydicom,
    opaque_id,
    scrub,
    scrub_message,
)
from radfm.data.importers.dicom_pixels import DicomImage, _nifti_ready, _png_ready, dicom_to_array
from radfm.data.importers.dicom_scan import _DicomFile, _DicomIndex, _scan_dicom
from radfm.data.importers.probe import check_image, check_series, has_probe
from radfm.data.importers.run import (
    DEFAULT_FRACTIONS,
    _Run,
    _split_value,
    _write_nifti,
    _write_png,
    assign_split,
)
from radfm.data.importers.table import read_csv_table
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
    limits: Any = None,
) -> tuple[list[Sample], Quarantine]:
    """A folder of DICOM studies + a CSV of reports → de-identified report samples.

    ``dicom_root`` holds one sub-folder per study or series (any depth), or DICOM files directly. Each CSV row
    is one sample, keyed (``key``, else the first column found) by StudyInstanceUID, AccessionNumber or the
    sub-folder name; its text is ``report_col`` (or ``findings`` + ``impression``). Every series of the study
    becomes one image: NIfTI (H×W×D, spacing in the affine) for a series or multi-frame file, PNG for a single
    frame (16-bit when needed; ``meta.images[i].intensity`` maps pixels back to modality units). The sample id
    is ``<source>-`` + a salted sha256 of the study UID (see :func:`_id_salt`). Errors, quarantine records and
    logs name the CSV row and an input file by its opaque id (``file-`` + a salted hash of its path:
    :func:`radfm.data.importers.find_dicom_file` maps it back on this machine), never a file or folder name
    from ``dicom_root`` (they often hold a name or a record number) nor a header value. A file or folder that
    resolves outside ``dicom_root`` (a link out) is never opened: its study is refused. Each image is probed
    (:mod:`.probe`, against ``limits``: a :class:`radfm.data.limits.ImageLimits`, None: the defaults): each
    input file and the series it stacks into before any pixel is read, the converted file after it is written.
    A reports table with no rows is a ValueError; nothing is written.
    """
    dicom_root, reports_csv = Path(dicom_root), Path(reports_csv)
    if not dicom_root.is_dir():
        raise FileNotFoundError(f"DICOM folder {dicom_root} does not exist")
    salt = _id_salt(salt)
    run = _Run(source, out_root, manifest_path, on_error, "ingest")
    run.limits = limits
    df = read_csv_table(reports_csv)
    if df.empty:
        raise ValueError(f"reports table {reports_csv}: no rows (only a header); nothing was written")
    columns = {c.strip().lower(): c for c in df.columns}
    key_col, key_type = _key_column(columns, key, reports_csv)
    text_cols = _report_columns(columns, report_col, reports_csv)
    phi_cols = [c for low, c in columns.items()
                if any(h in low for h in _PHI_COLUMN_HINTS) and c not in (key_col, *text_cols)]
    run.total = len(df)
    with _quiet_pydicom():
        index = _scan_dicom(dicom_root, salt)
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
    run.check_id(sid, files[0].fid, where)
    secrets = _secrets(files, index)
    converted, images_meta = _convert_series(run, sid, where, files, secrets)

    terms = set().union(*(f.terms for f in files))
    terms.update(str(rec[c]).strip() for c in phi_cols if len(str(rec[c]).strip()) >= 2)
    terms.add(key)  # an accession number, or a folder name such as Doe_Jane_MRN123 pasted into the report
    terms.update(_name_terms(files))
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
    _write_converted(run, sid, where, converted, secrets)
    return run.claim([sample])


def _name_terms(files: list[_DicomFile]) -> set[str]:
    """The study's folder and file names (and stems) that could be pasted into its report: those with a
    digit or a separator (``Doe_Jane_MRN123``); a plain word such as ``image`` or ``chest`` stays in the text."""
    parts = {p for f in files for seg in f.rel.split("/") for p in (seg, Path(seg).stem)}
    return {p for p in parts if len(p) >= 4 and re.search(r"[\d_\-.^ ]", p)}


def _secrets(files: list[_DicomFile], index: _DicomIndex) -> set[str]:
    """What no message may carry: the study's header identifiers and every file and folder name found."""
    return set().union(*(f.terms for f in files), index.names)


def _row_files(run: _Run, index: _DicomIndex, key: str, key_type: str, key_col: str, where: str, salt: str,
               csv_name: str, used: set[str]) -> tuple[list[_DicomFile], list[str], str]:
    """The DICOM files of a row's study, its study UIDs and its sample id; raises when a file of the study
    (or the row's folder) is unreadable or nothing matches. Marks what was used in ``used``."""
    files = index.lookup(key_type, key)
    if not files and key_type == "folder" and index.unreadable.get(key):
        used.add(f"folder:{key}")
        fid, reason = index.unreadable[key][0]
        raise _unreadable(opaque_id(f"{key_type}:{key}", salt, run.slug), fid, where, reason, index)
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
        for fid, reason in index.unreadable.get(folder, []):
            raise _unreadable(sid, fid, where, reason, index)
    return files, study_uids, sid


def _unreadable(sid: str, fid: str, where: str, reason: str, index: _DicomIndex) -> SampleError:
    return SampleError(sid, fid, f"{where}: {scrub_message(reason, index.names)}; fix or remove it{_find(fid)}")


def _find(fid: str) -> str:
    """What to do with an opaque file id: the call that turns it back into the path, on this machine."""
    return f" (radfm.data.importers.find_dicom_file(dicom_root, {fid!r}) gives its path)"


def _convert_series(run: _Run, sid: str, where: str, files: list[_DicomFile], secrets: set[str]
                    ) -> tuple[list[tuple[str, DicomImage, np.ndarray]], list[dict[str, Any]]]:
    """Each series of the study (by SeriesNumber, then path) → (its output path, image, pixels to write) and
    its ``meta.images`` entry. Each file's header, and the volume they stack into, is probed before any pixel
    is read (when the reader has a header probe: else the pixel read below is the check)."""
    series: dict[str, list[_DicomFile]] = {}
    for f in files:
        series.setdefault(f.series_uid, []).append(f)
    ordered = sorted(series.values(), key=lambda fs: (fs[0].series_number, fs[0].rel))
    converted: list[tuple[str, DicomImage, np.ndarray]] = []
    images_meta: list[dict[str, Any]] = []
    for j, group in enumerate(ordered):
        if has_probe():
            headers = [_probe(f.path, sid, f.fid, where, secrets, run.limits, _find(f.fid)) for f in group]
            check_series(headers, sid, group[0].fid, where, run.limits)
        try:
            image = dicom_to_array([f.path for f in group], sid)
        except SampleError as err:
            bad = next((f.fid for f in group if err.file and Path(err.file) == f.path), group[0].fid)
            raise SampleError(sid, bad, f"{where}: cannot read the pixels: "
                                        f"{_safe_message(err.reason, group, secrets)}{_find(bad)}") from None
        except Exception as exc:  # a header that broke between the scan and the read
            raise SampleError(sid, group[0].fid, f"{where}: cannot read the pixels ({type(exc).__name__}: "
                                                 f"{_safe_message(str(exc), group, secrets)}){_find(group[0].fid)}"
                              ) from None
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


def _write_converted(run: _Run, sid: str, where: str, converted: list[tuple[str, DicomImage, np.ndarray]],
                     secrets: set[str]) -> None:
    """Write each converted image, then probe it as training will read it; a row that fails leaves none of
    its files behind (rows out are exactly the samples whose images are there)."""
    written: list[Path] = []
    try:
        for rel, image, pixels in converted:
            dest = run.out_root / rel
            written.append(dest)
            try:
                if image.is_3d:
                    _write_nifti(pixels, dest, image.spacing)
                else:
                    _write_png(pixels, dest)
            except (OSError, ValueError, TypeError) as exc:
                raise SampleError(sid, rel, f"{where}: could not write the converted image "
                                            f"({scrub_message(str(exc), secrets)})") from None
            _probe(dest, sid, rel, where, secrets, run.limits)
    except SampleError:
        for dest in written:
            dest.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # the sample's own folder, if nothing else is in it
            (run.out_root / converted[0][0]).parent.rmdir()
        raise


def _probe(path: Path, sid: str, shown: str, where: str, secrets: set[str], limits: Any, hint: str = "") -> Any:
    """:func:`.probe.check_image`, its reason made safe (it may quote the path it was given)."""
    try:
        return check_image(path, sid, shown, where, limits)
    except SampleError as err:
        raise SampleError(sid, shown, _safe_message(err.reason, [], secrets, {str(path): shown}) + hint) from None


def _safe_message(msg: str, group: list[_DicomFile], secrets: set[str], paths: dict[str, str] | None = None
                  ) -> str:
    """A reader's message with input paths replaced by their file ids and every identifier and file or folder
    name scrubbed (:func:`.deid.scrub_message`)."""
    spelled = dict(paths or {})
    for f in group:  # the resolved path and the path under the DICOM folder
        spelled.update({str(f.path): f.fid, f.rel: f.fid})
    # Paths become placeholders first, so scrubbing cannot touch the ids that replace them.
    ids = []
    for i, (path, shown) in enumerate(sorted(spelled.items(), key=lambda kv: len(kv[0]), reverse=True)):
        if path in msg:
            msg = msg.replace(path, f"\x00{i}\x00")
            ids.append((f"\x00{i}\x00", shown))
    msg = scrub_message(msg, secrets)
    for mark, shown in ids:
        msg = msg.replace(mark, shown)
    return msg
