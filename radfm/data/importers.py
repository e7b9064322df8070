"""Importers (``radfm ingest``): a user's table, a MedMNIST ``.npz`` or a folder of DICOM studies → a MedMD
manifest plus its images under one output data root.

Each importer returns ``(samples, quarantine)`` and writes ``<out_root>/manifests/<source>.jsonl`` (and
``<source>.quarantine.jsonl`` when something was rejected) with images under ``<out_root>/images/<source>/``.
A bad row raises a :class:`SampleError` naming the sample, the file and the reason, or with
``on_error="quarantine"`` is recorded, so rows in = rows out + quarantined.

The DICOM importer de-identifies: pixels are converted (NIfTI for a series or multi-frame file, PNG for one
frame) so no header travels, the sample id is a salted hash of the study UID, and the patient's identifiers
found in the headers (name, IDs, birth date, accession number, physicians…) are scrubbed from report text and
never written to manifests, meta, file names or logs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from radfm.data import prompts
from radfm.data.errors import Quarantine, SampleError, check_on_error
from radfm.data.manifest import SPLITS, Sample, _validate_row, write_manifest

log = logging.getLogger(__name__)

DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
SUFFIX_2D = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom")
SUFFIX_3D = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".npz")
SPLIT_ALIASES = {"valid": "val", "validation": "val", "dev": "val", "training": "train", "testing": "test"}
REDACTED = "[redacted]"


# ----------------------------------------------------------------------------------------------- shared


def assign_split(sample_id: str, seed: int = 0, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> str:
    """train/val/test from a seeded hash of the id: stable across runs, machines and row order."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise ValueError(f"split fractions must be three non-negative numbers (train, val, test), got {fractions}")
    digest = hashlib.sha256(f"{seed}:{sample_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64 * sum(fractions)
    cum = 0.0
    for split, frac in zip(SPLITS, fractions):
        cum += frac
        if u < cum:
            return split
    return SPLITS[-1]


def _slug(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")
    if not slug:
        raise ValueError(f"source name {name!r} has no usable characters for a folder name")
    return slug


def _split_value(value: Any) -> str:
    v = str(value).strip().lower()
    return SPLIT_ALIASES.get(v, v)


def _list_value(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, list):
        return [str(v).strip() for v in value if str(v).strip()]
    text = str(value).strip()
    if not text:
        return None
    if text.startswith("["):
        with contextlib.suppress(json.JSONDecodeError):
            return [str(v) for v in json.loads(text)]
    return [v.strip() for v in text.split(";") if v.strip()]


class _Run:
    """Counts rows in, samples out and rejects; writes the manifest and the quarantine report."""

    def __init__(self, source: str, out_root: str | Path, manifest_path: str | Path | None, on_error: str,
                 stage: str) -> None:
        check_on_error(on_error)
        self.source = source
        self.slug = _slug(source)
        self.out_root = Path(out_root)
        self.manifest_path = Path(manifest_path) if manifest_path else (
            self.out_root / "manifests" / f"{self.slug}.jsonl")
        self.on_error = on_error
        self.stage = stage
        self.quarantine = Quarantine()
        self.samples: list[Sample] = []
        self.ids: set[str] = set()
        self.rows_in = 0
        self.rows_out = 0

    def row(self, fn: Callable[[], list[Sample]]) -> None:
        """Run one input row; its samples are kept, or its SampleError raised / quarantined."""
        self.rows_in += 1
        try:
            samples = fn()
        except SampleError as err:
            if self.on_error == "raise":
                raise
            self.quarantine.add(err, self.stage)
            return
        self.samples.extend(samples)
        self.rows_out += 1

    def check_id(self, sample_id: str, file: str | None, where: str) -> None:
        if sample_id in self.ids:
            raise SampleError(sample_id, file, f"{where}: duplicate sample id (ids must be unique)")

    def claim(self, samples: list[Sample]) -> list[Sample]:
        self.ids.update(s.id for s in samples)
        return samples

    def finish(self) -> tuple[list[Sample], Quarantine]:
        if self.rows_in != self.rows_out + len(self.quarantine):
            raise RuntimeError(f"{self.source}: {self.rows_in} rows in but {self.rows_out} out + "
                               f"{len(self.quarantine)} quarantined")
        write_manifest(self.samples, self.manifest_path)
        report = self.manifest_path.with_name(self.manifest_path.name.split(".")[0] + ".quarantine.jsonl")
        if len(self.quarantine):
            self.quarantine.write(report)
            log.warning("%s: %d of %d rows quarantined (see %s)", self.source, len(self.quarantine),
                        self.rows_in, report)
        elif report.exists():
            report.unlink()  # a stale report from an earlier run would misreport this one
        log.info("%s: %d rows in, %d samples written to %s", self.source, self.rows_in, len(self.samples),
                 self.manifest_path)
        return self.samples, self.quarantine


# ----------------------------------------------------------------------------------------------- tables


def infer_kind(path: Path) -> str | None:
    """``2d``/``3d`` from the file (a folder is a DICOM series, an ``.npy`` is judged by its shape)."""
    name = path.name.lower()
    if path.is_dir():
        return "3d"
    if name.endswith(SUFFIX_3D):
        return "3d"
    if name.endswith(SUFFIX_2D):
        return "2d"
    if name.endswith(".npy"):
        shape = np.load(path, mmap_mode="r").shape
        return "2d" if len(shape) == 2 or (len(shape) == 3 and shape[-1] in (1, 3, 4)) else "3d"
    return None


def _row_images(rec: dict[str, Any]) -> list[dict[str, Any]]:
    """Image entries of a row: ``images`` (list or ';'-separated), ``image``, or ``image_1..image_n``."""
    raw: list[Any] = []
    if rec.get("images") not in (None, ""):
        value = rec["images"]
        raw = list(value) if isinstance(value, list) else str(value).split(";")
    if rec.get("image") not in (None, ""):
        raw.append(rec["image"])
    numbered = sorted((int(k.split("_")[1]), k) for k in rec if re.fullmatch(r"image_\d+", str(k)))
    raw.extend(rec[k] for _, k in numbered if rec[k] not in (None, ""))
    out = []
    for item in raw:
        entry = dict(item) if isinstance(item, dict) else {"path": str(item).strip()}
        if str(entry.get("path", "")).strip():
            out.append(entry)
    return out


def _inside(root: Path, path: Path) -> bool:
    root_s, path_s = os.path.abspath(root), os.path.abspath(path)
    return path_s == root_s or path_s.startswith(root_s.rstrip(os.sep) + os.sep)


def _place(src: Path, dest: Path, link: bool) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dest, dirs_exist_ok=True, copy_function=_link_or_copy if link else shutil.copy2)
        return
    if dest.exists() or dest.is_symlink():
        dest.unlink()
    if link:
        _link_or_copy(src, dest)
    else:
        shutil.copy2(src, dest)


def _link_or_copy(src: Any, dest: Any) -> None:
    try:
        if os.path.lexists(dest):
            os.unlink(dest)
        os.link(src, dest)
    except OSError:  # another file system, or links not allowed: a copy is as good
        shutil.copy2(src, dest)


def _read_table(path: Path) -> Iterator[tuple[str, dict[str, Any] | None, str | None]]:
    name = path.name.lower()
    if name.endswith((".csv", ".tsv")):
        import pandas as pd

        df = pd.read_csv(path, dtype=str, keep_default_na=False, sep="\t" if name.endswith(".tsv") else ",")
        df.columns = [str(c).strip() for c in df.columns]
        for i, rec in enumerate(df.to_dict("records")):
            yield f"{path.name} row {i + 2}", {k: v.strip() for k, v in rec.items()}, None
    elif name.endswith((".jsonl", ".ndjson")):
        with path.open() as f:
            for i, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"{path.name} line {i}"
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield where, None, f"not valid JSON ({exc.msg})"
                    continue
                yield where, rec if isinstance(rec, dict) else None, None if isinstance(rec, dict) else "not an object"
    else:
        raise ValueError(f"table {path} must be .csv, .tsv or .jsonl")


def ingest_table(
    table_path: str | Path,
    out_root: str | Path,
    image_root: str | Path | None = None,
    task: str | None = None,
    *,
    source: str | None = None,
    split_col: str = "split",
    split_fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    on_error: str = "raise",
    link: bool = False,
    meta_cols: Sequence[str] = (),
    manifest_path: str | Path | None = None,
) -> tuple[list[Sample], Quarantine]:
    """A CSV/TSV/JSONL table → manifest; images copied (or hard-linked, ``link=True``) under out_root.

    Columns: ``id`` (else ``<source>-<row>``), ``image`` / ``image_1..image_n`` / ``images`` (';'-separated,
    or a list in JSONL, entries may be ``{"path", "kind", "position"}``), ``question`` + ``answer`` or
    ``report`` (task ``report`` with a templated question), ``task`` (else ``task``, else report/vqa),
    ``split_col`` (else a seeded hash of the id), ``kind`` (else from the suffix), ``labels`` and ``choices``
    (';'-separated), ``position``, ``source``. Image paths are relative to ``image_root`` (default: the
    table's folder) and must stay inside it (checked on the path as written, so a symlinked data folder
    works); only ``meta_cols`` are kept in ``meta`` (other columns may hold identifiers). Files are copied
    as they are: DICOM headers included — use :func:`ingest_dicom_folder` to de-identify DICOM studies.
    """
    table_path = Path(table_path)
    image_root = Path(image_root) if image_root is not None else table_path.parent
    run = _Run(source or table_path.stem, out_root, manifest_path, on_error, "ingest")
    placed: dict[Path, Path] = {}
    for index, (where, rec, problem) in enumerate(_read_table(table_path)):
        run.row(lambda where=where, rec=rec, problem=problem, index=index: _table_row(
            run, where, rec, problem, index, image_root, task, split_col, split_fractions, seed, link,
            meta_cols, placed, str(table_path)))
    return run.finish()


def _table_row(run: _Run, where: str, rec: dict[str, Any] | None, problem: str | None, index: int,
               image_root: Path, task: str | None, split_col: str, fractions: Sequence[float], seed: int,
               link: bool, meta_cols: Sequence[str], placed: dict[Path, Path], table: str) -> list[Sample]:
    if rec is None:
        raise SampleError(where, table, f"{where}: {problem}")
    sid = str(rec.get("id") or "").strip() or f"{run.slug}-{index + 1:06d}"
    copies: list[tuple[Path, Path]] = []
    images = []
    row_kind = str(rec.get("kind") or "").strip().lower() or None
    for entry in _row_images(rec):
        given = str(entry["path"]).strip()
        src = Path(given) if Path(given).is_absolute() else image_root / given
        if not _inside(image_root, src):
            raise SampleError(sid, given, f"{where}: image path leaves the image root {image_root}; "
                                          "give paths relative to image_root (or move the image under it)")
        if not src.exists():
            raise SampleError(sid, str(src), f"{where}: image not found (paths are relative to {image_root})")
        rel = Path(os.path.relpath(os.path.abspath(src), os.path.abspath(image_root))).as_posix()
        kind = str(entry.get("kind") or row_kind or "").strip().lower() or infer_kind(src)
        if kind is None:
            raise SampleError(sid, str(src), f"{where}: cannot tell 2d from 3d by the suffix; add a 'kind' column")
        ref: dict[str, Any] = {"path": f"images/{run.slug}/{rel}", "kind": kind}
        position = entry.get("position", rec.get("position"))
        if position not in (None, ""):
            ref["position"] = int(position) if str(position).isdigit() else position
        images.append(ref)
        copies.append((src, run.out_root / ref["path"]))

    question = str(rec.get("question") or "").strip()
    answer = str(rec.get("answer") or "").strip()
    report = str(rec.get("report") or "").strip()
    row_task = str(rec.get("task") or "").strip() or task
    meta: dict[str, Any] = {c: rec[c] for c in meta_cols if rec.get(c) not in (None, "")}
    if report and not answer:
        answer = report
        row_task = row_task or "report"
        if not question:
            question = prompts.render("report", None)
            meta["template"] = "report"
    row_task = row_task or "vqa"
    split_given = str(rec.get(split_col) or "").strip()
    row = {
        "id": sid,
        "task": row_task,
        "split": _split_value(split_given) if split_given else assign_split(sid, seed, fractions),
        "question": question,
        "answer": answer,
        "images": images,
        "source": str(rec.get("source") or "").strip() or run.source,
        "labels": _list_value(rec.get("labels")),
        "choices": _list_value(rec.get("choices")),
        "meta": meta or None,
    }
    sample = _validate_row(row, where)
    run.check_id(sid, str(copies[0][0]) if copies else table, where)
    for src, dest in copies:
        if placed.get(dest) == src:
            continue
        try:
            _place(src, dest, link)
        except OSError as exc:
            raise SampleError(sid, str(src), f"{where}: could not copy the image ({exc.strerror or exc})") from exc
        placed[dest] = src
    return run.claim([sample])


# ----------------------------------------------------------------------------------------------- MedMNIST


@dataclass(frozen=True)
class MedMNISTInfo:
    labels: dict[int, str]
    modality: str | None = None
    subject: str = "image"


MEDMNIST: dict[str, MedMNISTInfo] = {
    "pneumoniamnist": MedMNISTInfo({0: "normal", 1: "pneumonia"}, modality="X-ray", subject="chest X-ray"),
}


def _medmnist_name(npz_path: Path) -> str:
    return re.sub(r"_\d+$", "", npz_path.name.split(".")[0].lower())


def _write_png(arr: np.ndarray, dest: Path) -> None:
    from PIL import Image

    dest.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(dest, format="PNG")


def _write_nifti(arr: np.ndarray, dest: Path, spacing: Sequence[float]) -> None:
    """``arr`` is H×W×D; the affine carries the voxel spacing and nothing about the patient's position."""
    import nibabel as nib

    dest.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.ascontiguousarray(arr), affine=np.diag([*map(float, spacing), 1.0]))
    img.header.set_xyzt_units("mm")
    nib.save(img, str(dest))


def ingest_medmnist(
    npz_path: str | Path,
    out_root: str | Path,
    name: str | None = None,
    task_labels: dict[int, str] | None = None,
    max_per_split: int | None = None,
    *,
    modality_samples: bool = False,
    modality: str | None = None,
    on_error: str = "raise",
    manifest_path: str | Path | None = None,
) -> tuple[list[Sample], Quarantine]:
    """A MedMNIST ``.npz`` (``{train,val,test}_images`` N×H×W, N×H×W×3 or 3D N×D×H×W, ``*_labels``) →
    PNG / NIfTI files and diagnosis samples in the official splits.

    ``name`` (default: from the file name, ``pneumoniamnist_224.npz`` → ``pneumoniamnist``) picks the label
    names; ``task_labels`` overrides them (else ``class k``). A binary set with a ``normal`` class gets a
    yes/no question ("Is there pneumonia in this chest X-ray?"), a multi-class set a closed question over the
    names, a multi-label set an open list of findings. ``modality_samples`` adds a modality question per
    image. ``max_per_split`` keeps the first N of each split. Rows are images: a bad image quarantines all of
    its samples at once.
    """
    npz_path = Path(npz_path)
    name = (name or _medmnist_name(npz_path)).lower()
    info = MEDMNIST.get(name)
    names = {int(k): str(v) for k, v in (task_labels or (info.labels if info else {})).items()}
    modality = modality or (info.modality if info else None)
    if modality_samples and not modality:
        raise ValueError(f"modality_samples needs the modality of {name}: pass modality='X-ray' (or CT, MRI…)")
    subject = info.subject if info else "image"
    run = _Run(name, out_root, manifest_path, on_error, "ingest")
    with np.load(npz_path, allow_pickle=False) as npz:
        present = [s for s in SPLITS if f"{s}_images" in npz.files]
        if not present:
            raise ValueError(f"{npz_path} has no train_images/val_images/test_images arrays "
                             f"(found {npz.files}); is it a MedMNIST file?")
        if not names:  # unknown set: name every class that occurs, so closed questions share one choice list
            found = set()
            for split in present:
                lab = npz.get(f"{split}_labels")
                if lab is not None and lab.ndim <= 2 and (lab.ndim == 1 or lab.shape[1] == 1):
                    found.update(int(k) for k in np.ravel(lab) if int(k) >= 0)
            names = {k: f"class {k}" for k in sorted(found)}
        for split in present:
            images, labels = npz[f"{split}_images"], npz.get(f"{split}_labels")
            if labels is None or len(labels) != len(images):
                raise ValueError(f"{npz_path}: {split}_labels is missing or does not match {split}_images in length")
            labels = labels.reshape(len(labels), -1)
            is_3d = name.endswith("3d") or images.ndim == 5 or (images.ndim == 4 and images.shape[-1] not in (1, 3))
            n = len(images) if max_per_split is None else min(len(images), max_per_split)
            for i in range(n):
                run.row(lambda split=split, i=i, img=images[i], lab=labels[i], is_3d=is_3d: _medmnist_row(
                    run, npz_path, name, split, i, img, lab, is_3d, names, subject, modality_samples, modality))
    return run.finish()


def _medmnist_row(run: _Run, npz_path: Path, name: str, split: str, i: int, img: np.ndarray, lab: np.ndarray,
                  is_3d: bool, names: dict[int, str], subject: str, modality_samples: bool,
                  modality: str | None) -> list[Sample]:
    sid = f"{run.slug}-{split}-{i:05d}"
    where = f"{npz_path.name} {split}[{i}]"
    file = f"{npz_path}:{split}_images[{i}]"
    if img.dtype not in (np.uint8, np.uint16):
        raise SampleError(sid, file, f"{where}: pixels are {img.dtype}; MedMNIST images are uint8")
    rel = f"images/{run.slug}/{split}/{i:05d}" + (".nii.gz" if is_3d else ".png")
    meta: dict[str, Any] = {"dataset": name}
    if lab.size > 1:  # multi-label: one 0/1 per class
        found = [names.get(k, f"class {k}") for k in np.flatnonzero(lab)]
        question, answer, labels, choices = prompts.render("diagnosis", None), ", ".join(found) or "No abnormality.", found, None
        meta.update(template="diagnosis", label=[int(x) for x in lab])
    else:
        k = int(lab[0])
        if k < 0 or (names and k not in names):
            raise SampleError(sid, f"{npz_path}:{split}_labels[{i}]",
                              f"{where}: label {k} is not one of {sorted(names)}; pass task_labels")
        label_name = names.get(k, f"class {k}")
        meta["label"] = k
        normal = [c for c, v in names.items() if v.lower() == "normal"]
        if len(names) == 2 and normal:
            finding = next(v for c, v in names.items() if c != normal[0])
            question = f"Is there {finding} in this {subject}?"
            answer, choices = ("yes" if k != normal[0] else "no"), ["yes", "no"]
            labels = [finding] if k != normal[0] else []
            meta.update(template="yesno", slots={"finding": finding})
        else:
            options = [names[c] for c in sorted(names)] or [label_name]
            question = f"Which of the following does this {subject} show: {', '.join(options)}?"
            answer, choices = label_name, options
            labels = [] if label_name.lower() == "normal" else [label_name]
    ref = {"path": rel, "kind": "3d" if is_3d else "2d"}
    rows = [{"id": sid, "task": "diagnosis", "split": split, "question": question, "answer": answer,
             "images": [ref], "source": name, "labels": labels, "choices": choices, "meta": meta}]
    if modality_samples:
        rows.append({"id": f"{sid}-modality", "task": "modality", "split": split,
                     "question": prompts.render("modality", None), "answer": modality, "images": [ref],
                     "source": name, "meta": {"dataset": name, "template": "modality"}})
    samples = [_validate_row(r, where) for r in rows]
    for s in samples:
        run.check_id(s.id, file, where)
    dest = run.out_root / rel
    try:
        if is_3d:
            vol = img[..., 0] if img.ndim == 4 else img
            _write_nifti(np.transpose(vol, (1, 2, 0)), dest, (1.0, 1.0, 1.0))  # D×H×W → H×W×D
        else:
            _write_png(img[..., 0] if img.ndim == 3 and img.shape[-1] == 1 else img, dest)
    except (OSError, ValueError, TypeError) as exc:
        raise SampleError(sid, file, f"{where}: could not write {rel} ({exc})") from exc
    return run.claim(samples)


# ----------------------------------------------------------------------------------------------- DICOM

# Attributes whose values identify a person or a visit: never copied, and scrubbed from report text.
PHI_KEYWORDS = (
    "PatientName", "PatientID", "OtherPatientIDs", "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName",
    "PatientBirthDate", "PatientAddress", "PatientTelephoneNumbers", "IssuerOfPatientID", "MedicalRecordLocator",
    "AccessionNumber", "StudyID", "InstitutionName", "InstitutionAddress", "ReferringPhysicianName",
    "PerformingPhysicianName", "NameOfPhysiciansReadingStudy", "OperatorsName", "RequestingPhysician",
    "PhysiciansOfRecord", "ResponsiblePerson", "MilitaryRank", "RegionOfResidence", "CountryOfResidence",
)
_PN_PARTS = ("family_name", "given_name", "middle_name")  # not the prefix/suffix: "Dr", "Jr" are not names
_KEY_COLUMNS = {
    "uid": ("studyinstanceuid", "study_instance_uid", "study_uid", "studyuid"),
    "accession": ("accessionnumber", "accession_number", "accession"),
    "folder": ("folder", "study_folder", "study", "path", "directory"),
}
# Report-table columns that hold identifiers: not copied, and their values are scrubbed from the report.
_PHI_COLUMN_HINTS = ("patient", "name", "mrn", "birth", "dob", "address", "phone", "accession", "physician")
_DICOM_SUFFIXES = ("", ".dcm", ".dicom", ".ima")


@contextlib.contextmanager
def _quiet_pydicom() -> Iterator[None]:
    """pydicom's validation warnings quote element values (a malformed birth date, a name): keep them out of
    logs and warnings while reading patient files."""
    from pydicom import config

    old_mode = config.settings.reading_validation_mode
    pd_log = logging.getLogger("pydicom")
    old_level = pd_log.level
    config.settings.reading_validation_mode = config.IGNORE
    pd_log.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        config.settings.reading_validation_mode = old_mode
        pd_log.setLevel(old_level)


def _read_dicom(path: Path, header_only: bool) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=header_only)
    except InvalidDicomError:
        ds = pydicom.dcmread(path, stop_before_pixels=header_only, force=True)  # a file without the preamble
        if "StudyInstanceUID" not in ds and "SOPInstanceUID" not in ds:
            raise
        return ds


def _identifier_terms(ds: Any) -> set[str]:
    from pydicom.multival import MultiValue

    terms: set[str] = set()
    for kw in PHI_KEYWORDS:
        value = ds.get(kw)
        if value in (None, ""):
            continue
        values = list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]
        for v in values:
            text = str(v).strip()
            terms.add(text)
            if hasattr(v, "family_name"):  # a person name: its parts, and "Given Family"
                parts = [str(getattr(v, p, "") or "").strip() for p in _PN_PARTS]
                terms.update(parts)
                if parts[0] and parts[1]:
                    terms.update({f"{parts[1]} {parts[0]}", f"{parts[0]} {parts[1]}", f"{parts[0]}, {parts[1]}"})
                terms.add(text.replace("^", " ").strip())
            if kw == "PatientBirthDate" and re.fullmatch(r"\d{8}", text):
                y, m, d = text[:4], text[4:6], text[6:]
                terms.update({f"{y}-{m}-{d}", f"{d}/{m}/{y}", f"{m}/{d}/{y}", f"{d}.{m}.{y}"})
    # A short number ("1", "12") as StudyID would erase measurements from the report: numbers need 4 digits.
    return {t for t in terms if len(t) >= 2 and not (t.isdigit() and len(t) < 4)}


def scrub(text: str, terms: set[str]) -> str:
    """Replace each identifier (whole words, any case, longest first) with ``[redacted]``."""
    for term in sorted(terms, key=len, reverse=True):
        text = re.sub(rf"(?<!\w){re.escape(term)}(?!\w)", REDACTED, text, flags=re.IGNORECASE)
    return text


@dataclass
class _DicomFile:
    path: Path
    rel: str
    folder: str
    study_uid: str
    series_uid: str
    accession: str
    series_number: int
    terms: set[str] = field(repr=False, default_factory=set)


@dataclass
class _DicomIndex:
    files: list[_DicomFile] = field(default_factory=list)
    unreadable: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # folder → [(rel, reason)]

    _by: dict[str, dict[str, list[_DicomFile]]] = field(default_factory=dict)

    def lookup(self, key_type: str, key: str) -> list[_DicomFile]:
        attr = {"uid": "study_uid", "accession": "accession", "folder": "folder"}[key_type]
        if attr not in self._by:
            table: dict[str, list[_DicomFile]] = {}
            for f in self.files:
                table.setdefault(getattr(f, attr), []).append(f)
            self._by[attr] = table
        return self._by[attr].get(key, [])


def _is_dicom_candidate(path: Path) -> bool:
    name = path.name.lower()
    if name.startswith(".") or name == "dicomdir":
        return False
    if name.endswith(_DICOM_SUFFIXES[1:]) or path.suffix == "":
        return True
    try:
        with path.open("rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _scan_dicom(root: Path) -> _DicomIndex:
    index = _DicomIndex()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if not _is_dicom_candidate(path):
            continue
        rel = path.relative_to(root).as_posix()
        folder = rel.split("/")[0] if "/" in rel else path.stem
        try:
            ds = _read_dicom(path, header_only=True)
        except Exception as exc:  # pydicom raises many types for a damaged file
            detail = str(exc).splitlines()[0].replace(" Use force=True to force reading.", "")[:150] if str(exc) else ""
            index.unreadable.setdefault(folder, []).append((rel, f"{type(exc).__name__}: {detail}".rstrip(": ")))
            continue
        index.files.append(_DicomFile(
            path=path, rel=rel, folder=folder, study_uid=str(ds.get("StudyInstanceUID", "") or ""),
            series_uid=str(ds.get("SeriesInstanceUID", "") or rel), accession=str(ds.get("AccessionNumber", "") or ""),
            series_number=int(ds.get("SeriesNumber") or 0) if str(ds.get("SeriesNumber") or "0").isdigit() else 0,
            terms=_identifier_terms(ds)))
    return index


@dataclass
class DicomImage:
    array: np.ndarray  # H×W (×3 for colour) for one frame, H×W×D for a volume
    spacing: tuple[float, ...]  # mm per axis of ``array`` (rows, columns[, slices])
    modality: str
    is_3d: bool


def _position(ds: Any) -> float | None:
    """Where a slice lies along the normal of its plane (ImagePositionPatient · row × column cosines)."""
    iop, ipp = ds.get("ImageOrientationPatient"), ds.get("ImagePositionPatient")
    if not iop or not ipp or len(iop) != 6 or len(ipp) != 3:
        return None
    normal = np.cross(np.asarray(iop[:3], float), np.asarray(iop[3:], float))
    return float(np.dot(normal, np.asarray(ipp, float)))


def dicom_to_array(files: Sequence[Path], sample_id: str | None = None) -> DicomImage:
    """One DICOM series (its files) or one (multi-frame) file → pixels in modality units and spacing.

    Files are decoded by :func:`radfm.data.readers.read_image`; the slices of a series are ordered along the
    normal of the image plane (ImagePositionPatient), else by InstanceNumber. Raises SampleError."""
    from radfm.data.readers import read_image

    if len(files) == 1:
        img = read_image(files[0], sample_id)
        channels, _, _, depth = img.array.shape
        if depth > 1:
            if channels != 1:
                raise SampleError(sample_id, str(files[0]), "colour volumes are not supported")
            return DicomImage(img.array[0], tuple(img.spacing), img.modality or "", True)
        arr = img.array[0, :, :, 0] if channels == 1 else np.transpose(img.array[:, :, :, 0], (1, 2, 0))
        return DicomImage(arr, tuple(img.spacing[:2]), img.modality or "", False)
    headers = [_read_dicom(f, header_only=True) for f in files]
    positions = [_position(ds) for ds in headers]
    if all(p is not None for p in positions):
        order = np.argsort(positions, kind="stable")
        gaps = np.diff(np.asarray(positions, float)[order])
        if np.any(gaps < 1e-3):
            raise SampleError(sample_id, str(files[0]), "two slices of the series lie in the same place: more "
                              "than one volume (echoes, phases?) shares the SeriesInstanceUID")
        dz: float | None = float(np.median(gaps))
    else:
        order = np.argsort([int(ds.get("InstanceNumber") or 0) for ds in headers], kind="stable")
        dz = None
    slices = [read_image(files[i], sample_id, allow_constant=True) for i in order]
    for i, img in zip(order, slices):
        if img.array.shape[0] != 1 or img.array.shape[-1] != 1:
            raise SampleError(sample_id, str(files[i]), "a series slice is colour or multi-frame: read it alone")
    shapes = {img.array.shape for img in slices}
    if len(shapes) != 1:
        raise SampleError(sample_id, str(files[order[0]]), f"the series' slices differ in size {sorted(shapes)}")
    vol = np.concatenate([img.array[0] for img in slices], axis=-1)
    first = slices[0]
    return DicomImage(vol, (*first.spacing[:2], dz or first.spacing[2]), first.modality or "", True)


def _png_ready(arr: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
    """A 2D array as 8/16-bit PNG pixels; ``value = pixel * scale + offset`` recovers modality units."""
    if arr.ndim == 3:
        return arr.astype(np.uint8), {"offset": 0.0, "scale": 1.0}
    lo, hi = float(arr.min()), float(arr.max())
    integral = np.issubdtype(arr.dtype, np.integer) or bool(np.all(np.mod(arr, 1) == 0))
    if integral and lo >= 0 and hi <= 255 and arr.dtype == np.uint8:
        return arr, {"offset": 0.0, "scale": 1.0}
    if integral and lo >= 0 and hi <= 65535:
        return arr.astype(np.uint16), {"offset": 0.0, "scale": 1.0}
    if integral and hi - lo <= 65535:
        return (arr - lo).astype(np.uint16), {"offset": lo, "scale": 1.0}
    scale = (hi - lo) / 65535 or 1.0
    return np.round((arr - lo) / scale).astype(np.uint16), {"offset": lo, "scale": scale}


def _nifti_ready(arr: np.ndarray) -> np.ndarray:
    if np.issubdtype(arr.dtype, np.integer) and arr.dtype.itemsize <= 2:
        return arr
    if np.all(np.mod(arr, 1) == 0) and arr.min() >= -32768 and arr.max() <= 32767:
        return arr.astype(np.int16)
    return arr.astype(np.float32)


def _id_salt(salt: str | None) -> str:
    """The salt of DICOM sample ids: given, ``RADFM_ID_SALT``, or one made once per RADFM_HOME (kept private
    there) so re-imports give the same ids while the ids cannot be recomputed from a UID elsewhere."""
    if salt:
        return salt
    if os.environ.get("RADFM_ID_SALT"):
        return os.environ["RADFM_ID_SALT"]
    from radfm.paths import home_path

    path = home_path("secrets") / "id_salt"
    with contextlib.suppress(FileExistsError):  # created once, readable by its owner only
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path.read_text().strip()


def opaque_id(value: str, salt: str, prefix: str) -> str:
    return f"{prefix}-{hashlib.sha256(f'{salt}:{value}'.encode()).hexdigest()[:16]}"


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
    run.check_id(sid, files[0].rel, where)

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
    for rel, image, pixels in converted:
        try:
            if image.is_3d:
                _write_nifti(pixels, run.out_root / rel, image.spacing)
            else:
                _write_png(pixels, run.out_root / rel)
        except (OSError, ValueError, TypeError) as exc:
            raise SampleError(sid, rel, f"{where}: could not write the converted image ({exc})") from None
    return run.claim([sample])


def _safe_message(msg: str, group: list[_DicomFile]) -> str:
    """A reader's message with input paths made relative and the patient's identifiers scrubbed."""
    msg = (msg.splitlines()[0] if msg else "")[:300]
    for f in group:
        msg = msg.replace(str(f.path), f.rel)
    return scrub(msg, set().union(*(f.terms for f in group)))
