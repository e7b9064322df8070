"""The tables the suites expect on: manifest rows, per-split class balance and per-image statistics.

Rows are read raw (not through pydantic), so a row the schema rejects still becomes a row that the
expectations can name, instead of stopping the read at the first bad line. Derived columns (image exists,
number of images, group in one split, image statistics) are computed here in pandas; the suites only judge.
Group keys (patient, study, scene) are hashed at once and never stored in a table.
"""

from __future__ import annotations

import hashlib
import random
import string
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import ValidationError

from radfm.data.errors import SampleError
from radfm.data.manifest import Sample, read_records, resolve_image_path
from radfm.validation.config import ValidationConfig

FIELDS = tuple(Sample.model_fields)  # id, task, split, question, answer, images, source, labels, choices, meta
DERIVED = ("row", "schema_valid", "schema_error", "n_images", "images_exist", "question_len", "answer_len",
           "answer_text", "group_one_split")
_PUNCT = str.maketrans("", "", string.punctuation + string.whitespace)


@dataclass
class RawRow:
    """One manifest record as read, with where it came from (``line 12`` or ``row 11``)."""

    where: str
    record: dict[str, Any] | None
    problem: str | None = None


@dataclass
class ManifestTables:
    """The row table, the per-split balance table, and which rows use which image (for the image suite)."""

    rows: pd.DataFrame
    balance: pd.DataFrame
    image_kinds: dict[str, str] = field(default_factory=dict)
    image_samples: dict[str, list[str]] = field(default_factory=dict)
    group_keys_used: dict[str, int] = field(default_factory=dict)


def read_raw_rows(path: str | Path) -> list[RawRow]:
    """JSONL (header line skipped, schema version checked) or Parquet records as plain dicts."""
    return [RawRow(where, rec, problem) for where, rec, problem in read_records(path)]


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None if value is None else str(value)


def _image_paths(rec: dict[str, Any]) -> list[tuple[str, str | None]]:
    images = rec.get("images")
    if not isinstance(images, list):
        return []
    out = []
    for img in images:
        if isinstance(img, dict) and isinstance(img.get("path"), str):
            out.append((img["path"], img.get("kind") if isinstance(img.get("kind"), str) else None))
    return out


def _group_hash(rec: dict[str, Any], keys: tuple[str, ...]) -> tuple[str | None, str | None]:
    """(key name, salted digest of its value) of the first key present; the value itself is dropped here."""
    meta = rec.get("meta") if isinstance(rec.get("meta"), dict) else {}
    for key in keys:
        if key == "image":
            paths = _image_paths(rec)
            value = paths[0][0] if paths else None
        else:
            value = meta.get(key.removeprefix("meta."))
        if value not in (None, ""):
            digest = hashlib.sha256(f"radfm-validation:{key}:{value}".encode()).hexdigest()[:16]
            return key, digest
    return None, None


def _exists(root: str | Path, path: str, cache: dict[str, bool]) -> bool:
    if path not in cache:
        try:
            full = resolve_image_path(root, path)
            cache[path] = full.startswith("s3://") or Path(full).exists()
        except ValueError:  # absolute, '..' or a symlink out of the root: not an image of this dataset
            cache[path] = False
    return cache[path]


def manifest_tables(data_root: str | Path, rows: list[RawRow], cfg: ValidationConfig) -> ManifestTables:
    """Build the row table (raw fields as short text, derived columns) and the per-split balance table."""
    records: list[dict[str, Any]] = []
    extra_keys: set[str] = set()
    exists_cache: dict[str, bool] = {}
    groups: dict[str, set[str]] = defaultdict(set)
    row_group: list[str | None] = []
    keys_used: Counter = Counter()
    image_kinds: dict[str, str] = {}
    image_samples: dict[str, list[str]] = defaultdict(list)
    for raw in rows:
        rec = raw.record or {}
        extra_keys.update(k for k in rec if k not in FIELDS)
        schema_error = raw.problem
        if schema_error is None:
            try:
                Sample.model_validate(rec)
            except ValidationError as exc:
                first = exc.errors()[0]
                schema_error = f"{'.'.join(str(x) for x in first['loc']) or 'row'}: {first['msg']}"
        paths = _image_paths(rec)
        sid = _text(rec.get("id"))
        for p, kind in paths:
            image_kinds.setdefault(p, kind or "")
            if sid is not None:
                image_samples[p].append(sid)
        question, answer = _text(rec.get("question")), _text(rec.get("answer"))
        choices = rec.get("choices") if isinstance(rec.get("choices"), list) else None
        meta = rec.get("meta") if isinstance(rec.get("meta"), dict) else None
        key, digest = _group_hash(rec, cfg.group_keys)
        if key is not None:
            keys_used[key] += 1
            split = _text(rec.get("split"))
            if split in cfg.splits:  # an unknown split fails allowed_splits; it is no second split here
                groups[digest].add(split)
        row_group.append(digest)
        records.append({
            "id": sid, "task": _text(rec.get("task")), "split": _text(rec.get("split")),
            "question": question, "answer": answer,
            "images": ";".join(p for p, _ in paths) if paths else None,
            "source": _text(rec.get("source")),
            "labels": ",".join(map(str, rec["labels"])) if isinstance(rec.get("labels"), list) else None,
            "choices": "|".join(map(str, choices)) if choices is not None else None,
            # only the key names of meta: its values may carry identifiers the user chose to keep
            "meta": ",".join(sorted(meta)) if meta is not None else None,
            "row": raw.where, "schema_valid": schema_error is None, "schema_error": schema_error,
            "n_images": len(rec["images"]) if isinstance(rec.get("images"), list) else 0,
            "images_exist": all(_exists(data_root, p, exists_cache) for p, _ in paths),
            "question_len": len(question.strip()) if question is not None else 0,
            "answer_len": len(answer.strip()) if answer is not None else 0,
            "answer_text": answer.translate(_PUNCT).lower() if answer is not None else "",
            "_closed_binary": choices is not None and sorted(str(c).lower() for c in choices)
            == sorted(cfg.balance_answers),
        })
        for k in extra_keys & set(rec):
            records[-1][k] = "<present>"  # its value is not copied: unknown columns may hold identifiers
    for rec, digest in zip(records, row_group, strict=True):
        rec["group_one_split"] = None if digest is None else len(groups[digest]) == 1
    df = pd.DataFrame.from_records(records, columns=[*FIELDS, *DERIVED, "_closed_binary", *sorted(extra_keys)])
    balance = balance_table(df, cfg)
    df = df.drop(columns=["_closed_binary"])
    return ManifestTables(df, balance, dict(image_kinds), dict(image_samples), dict(keys_used))


def balance_table(df: pd.DataFrame, cfg: ValidationConfig) -> pd.DataFrame:
    """Per split: the closed binary rows (choices = ``balance_answers``), their counts and the rarest share.

    ``minority_share`` is None where a split has fewer than ``balance_min_rows`` such rows: too few to judge.
    """
    out = []
    closed = df[df["_closed_binary"] & df["split"].notna()]
    for split in sorted(set(df["split"].dropna())):
        answers = closed.loc[closed["split"] == split, "answer"].fillna("").str.strip().str.lower()
        counts = {a: int((answers == a).sum()) for a in cfg.balance_answers}
        n = int(sum(counts.values()))
        share = min(counts.values()) / n if n >= max(cfg.balance_min_rows, 1) else None
        out.append({"split": split, "n_closed": n, **{f"n_{a}": c for a, c in counts.items()},
                    "minority_share": share})
    cols = ["split", "n_closed", *[f"n_{a}" for a in cfg.balance_answers], "minority_share"]
    return pd.DataFrame.from_records(out, columns=cols).astype({"minority_share": "float64"})


IMAGE_COLUMNS = ("path", "kind", "exists", "readable", "finite", "channels", "height", "width", "depth_2d",
                 "depth_3d", "intensity_min", "intensity_max", "intensity_span", "spacing_present",
                 "spacing_min_mm", "spacing_max_mm", "format")


def pick_images(paths: list[str], cfg: ValidationConfig) -> list[str]:
    """All distinct image paths, or a seeded sample of ``max_images`` of them (sorted, so runs repeat)."""
    paths = sorted(set(paths))
    if cfg.max_images is None or len(paths) <= cfg.max_images:
        return paths
    return sorted(random.Random(cfg.seed).sample(paths, cfg.max_images))


def image_stats(data_root: str | Path, path: str, kind: str) -> tuple[dict[str, Any], str | None]:
    """One row of the image table and the reason it could not be read (None when it could)."""
    from radfm.data.readers import read_image

    row: dict[str, Any] = {c: None for c in IMAGE_COLUMNS}
    row.update(path=path, kind=kind or None, exists=False, readable=False)
    try:
        full = resolve_image_path(data_root, path)
    except ValueError as exc:
        return row, str(exc)
    row["exists"] = full.startswith("s3://") or Path(full).exists()
    if not row["exists"]:
        return row, "file not found"
    try:
        # constant images are read so that the intensity_span expectation can name them
        img = read_image(full, allow_constant=True)
    except SampleError as err:
        if "NaN" not in err.reason:
            return row, err.reason
        img = _read_unchecked(full)  # decoded but holds NaN/inf: measure it so `finite` can judge it
        if img is None:
            return row, err.reason
    a = img.array
    finite = np.isfinite(a)
    row["readable"] = True
    row["finite"] = bool(finite.all())
    vals = a[finite] if not row["finite"] else a
    C, H, W, D = (int(s) for s in a.shape) if a.ndim == 4 else (None, None, None, None)
    row.update(channels=C, height=H, width=W, format=img.meta.get("format"))
    if kind == "3d":
        row["depth_3d"] = D
        # NIfTI and DICOM carry spacing in their headers; npy carries none and npz only when saved with it
        known = img.meta.get("format") in ("nifti", "dicom", "dicom_series") or tuple(img.spacing) != (1.0,) * 3
        row["spacing_present"] = bool(known)
        if known:
            row["spacing_min_mm"], row["spacing_max_mm"] = float(min(img.spacing)), float(max(img.spacing))
    else:
        row["depth_2d"] = D
    if vals.size:
        lo, hi = float(vals.min()), float(vals.max())
        row.update(intensity_min=lo, intensity_max=hi, intensity_span=hi - lo)
    return row, None


def _read_unchecked(full: str) -> Any:
    """Decode ``.npy``/``.npz`` without the reader's value checks (only they can carry NaN; PNG cannot)."""
    from radfm.data.readers import ImageData, _array_layout

    try:
        if full.endswith(".npy"):
            a = np.load(full, allow_pickle=False)
        elif full.endswith(".npz"):
            with np.load(full, allow_pickle=False) as z:
                a = z["image"] if "image" in z.files else z[z.files[0]]
        else:
            import nibabel as nib

            a = np.asanyarray(nib.load(full).dataobj)
        return ImageData(_array_layout(np.asarray(a, dtype=np.float32)), meta={"format": Path(full).suffix[1:]})
    except Exception:  # noqa: BLE001 - the reader's own reason is reported instead
        return None


def image_table(data_root: str | Path, tables: ManifestTables, cfg: ValidationConfig,
                ) -> tuple[pd.DataFrame, dict[str, str]]:
    """Statistics of the chosen images (see :func:`pick_images`) and the read error of each unreadable one."""
    from concurrent.futures import ThreadPoolExecutor

    chosen = pick_images(list(tables.image_kinds), cfg)
    # decoders (zlib, PIL, numpy) release the GIL: two threads halve the wall time on a 2-core machine
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda p: image_stats(data_root, p, tables.image_kinds.get(p, "")), chosen))
    errors = {p: err for p, (_, err) in zip(chosen, results, strict=True) if err is not None}
    df = pd.DataFrame.from_records([r for r, _ in results], columns=list(IMAGE_COLUMNS))
    # float with NaN, not pandas' nullable Int64: GE's pandas metrics treat NaN as missing, pd.NA less well
    for col in ("channels", "height", "width", "depth_2d", "depth_3d", "intensity_min", "intensity_max", "intensity_span", "spacing_min_mm", "spacing_max_mm"):
        df[col] = df[col].astype("float64")
    return df, errors
