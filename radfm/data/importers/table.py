"""The table importer: a CSV/TSV/JSONL table of images and questions/answers/reports → a manifest, its images
copied (or hard-linked) under the output root."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from radfm.data import prompts
from radfm.data.errors import Quarantine, SampleError
from radfm.data.importers.containment import contained_image, place, plan_copies, real
from radfm.data.importers.probe import check_image
from radfm.data.importers.run import (
    DEFAULT_FRACTIONS,
    _list_value,
    _Run,
    _split_value,
    assign_split,
)
from radfm.data.manifest import Sample, _validate_row

SUFFIX_2D = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom")
SUFFIX_3D = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".npz")


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
    numbered = sorted((int(k.split("_")[1]), k) for k in rec if re.fullmatch(r"image_\d{1,6}", str(k)))
    raw.extend(rec[k] for _, k in numbered if rec[k] not in (None, ""))
    out = []
    for item in raw:
        entry = dict(item) if isinstance(item, dict) else {"path": str(item).strip()}
        if str(entry.get("path", "")).strip():
            out.append(entry)
    return out


def _read_table(path: Path) -> Iterator[tuple[str, dict[str, Any] | None, str | None]]:
    name = path.name.lower()
    if name.endswith((".csv", ".tsv")):
        df = read_csv_table(path, sep="\t" if name.endswith(".tsv") else ",")
        df.columns = [str(c).strip() for c in df.columns]
        for i, rec in enumerate(df.to_dict("records")):
            yield f"{path.name} row {i + 2}", {k: v.strip() for k, v in rec.items()}, None
    elif name.endswith((".jsonl", ".ndjson")):
        with path.open("rb") as f:
            for i, raw in enumerate(f, start=1):
                where = f"{path.name} line {i}"
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:  # one bad line is one bad row, not a crash of the table
                    yield where, None, f"not UTF-8 text (byte {exc.start}: {exc.reason})"
                    continue
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except (json.JSONDecodeError, RecursionError, ValueError) as exc:  # "[[[[…", 5000-digit ints
                    yield where, None, f"not valid JSON ({getattr(exc, 'msg', type(exc).__name__)})"
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
    limits: Any = None,
) -> tuple[list[Sample], Quarantine]:
    """A CSV/TSV/JSONL table → manifest; images copied (or hard-linked, ``link=True``) under out_root.

    Columns: ``id`` (else ``<source>-<row>``), ``image`` / ``image_1..image_n`` / ``images`` (';'-separated,
    or a list in JSONL, entries may be ``{"path", "kind", "position"}``), ``question`` + ``answer`` or
    ``report`` (task ``report`` with a templated question), ``task`` (else ``task``, else report/vqa),
    ``split_col`` (else a seeded hash of the id), ``kind`` (else from the suffix), ``labels`` and ``choices``
    (';'-separated), ``position``, ``source``, ``family`` (the question family, kept as ``meta["family"]``).
    A row with an answer but no question gets its task's default question (``diagnosis`` for ``vqa``), marked
    ``meta["question_missing"]``. Image paths are relative to ``image_root`` (default: the
    table's folder) and must resolve inside it (links and ``..`` resolved, every file under a series folder
    too; a link that stays inside is copied as the file it points to, never as a link); each image's header
    is probed (:mod:`.probe`, against ``limits``: a :class:`radfm.data.limits.ImageLimits`, None: the
    defaults) so a broken or oversized file is refused here, not at training. Only ``meta_cols`` are kept in
    ``meta`` (other columns may hold identifiers). Files are copied as they are: DICOM headers included — use :func:`ingest_dicom_folder` to de-identify DICOM studies.
    A table with no rows is a ValueError naming it; nothing is written.
    """
    table_path = Path(table_path)
    image_root = Path(image_root) if image_root is not None else table_path.parent
    run = _Run(source or table_path.stem, out_root, manifest_path, on_error, "ingest")
    run.limits = limits
    if not table_path.is_file():
        raise FileNotFoundError(f"table {table_path} not found")
    if not image_root.is_dir():  # else every row would fail alone with "not found"
        raise FileNotFoundError(f"image root {image_root} is not a folder: give --image-root the folder the "
                                "table's image paths are relative to")
    placed: dict[Path, Path] = {}
    root_real = real(image_root)  # containment is judged on resolved paths, so a linked data folder works
    for index, (where, rec, problem) in enumerate(_read_table(table_path)):
        run.row(lambda where=where, rec=rec, problem=problem, index=index: _table_row(
            run, where, rec, problem, index, root_real, task, split_col, split_fractions, seed, link,
            meta_cols, placed, str(table_path)))
    if run.rows_in == 0:  # an empty manifest that "succeeds" hides a wrong file or a broken export
        raise ValueError(f"table {table_path}: no rows (only a header, or blank); nothing was written")
    return run.finish()


def read_csv_table(path: Path, sep: str = ",") -> Any:
    """A CSV/TSV as a DataFrame of strings; an empty, unparsable or undecodable file is one ValueError
    naming the table and the reason (pandas' own errors name neither)."""
    import pandas as pd

    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, sep=sep)
    except pd.errors.EmptyDataError:
        raise ValueError(f"table {path}: no rows (the file is empty); nothing was written") from None
    except pd.errors.ParserError as exc:
        raise ValueError(f"table {path}: not a valid table ({str(exc).strip()[:200]})") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"table {path}: not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8 "
                         "CSV") from None
    if not isinstance(df.index, pd.RangeIndex):
        # Every row one field longer than the header: pandas silently takes the first fields as an index,
        # shifting every value into the wrong column.
        raise ValueError(f"table {path}: rows have more fields than the header's {len(df.columns)} columns; "
                         "quote fields that hold the separator")
    return df


def _table_row(run: _Run, where: str, rec: dict[str, Any] | None, problem: str | None, index: int,
               root_real: Path, task: str | None, split_col: str, fractions: Sequence[float], seed: int,
               link: bool, meta_cols: Sequence[str], placed: dict[Path, Path], table: str) -> list[Sample]:
    if rec is None:
        raise SampleError(where, table, f"{where}: {problem}")
    sid = str(rec.get("id") or "").strip() or f"{run.slug}-{index + 1:06d}"
    images, copies = _table_images(run, sid, where, rec, root_real)

    question = str(rec.get("question") or "").strip()
    answer = str(rec.get("answer") or "").strip()
    report = str(rec.get("report") or "").strip()
    row_task = str(rec.get("task") or "").strip() or task
    meta: dict[str, Any] = {c: rec[c] for c in meta_cols if rec.get(c) not in (None, "")}
    family = str(rec.get("family") or "").strip()
    if family:  # a question family the user names: the profile groups by it (radfm.data.profile)
        meta["family"] = family
    if report and not answer:
        answer = report
        row_task = row_task or "report"
        if not question:
            question = prompts.render("report", None)
            meta["template"] = "report"
    row_task = row_task or "vqa"
    if not question and answer:
        # An empty question (or no question column): the task's default question, as for a report; the
        # profile says how many rows got it.
        template = row_task if row_task in prompts.TEMPLATES else "diagnosis"
        question = prompts.render(template, None)
        meta.update(template=template, question_missing=True)
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
    run.check_id(sid, copies[0][0] if copies else table, where)
    for given, plan in copies:
        todo = [(src, dest) for src, dest in plan if placed.get(dest) != src]
        try:
            place(todo, link)
        except OSError as exc:
            raise SampleError(sid, given, f"{where}: could not copy the image ({exc.strerror or exc})") from exc
        placed.update((dest, src) for src, dest in todo)
    return run.claim([sample])


def _table_images(run: _Run, sid: str, where: str, rec: dict[str, Any], root_real: Path
                  ) -> tuple[list[dict[str, Any]], list[tuple[str, list[tuple[Path, Path]]]]]:
    """A row's image references for the manifest, and per image (as written, its planned copies). Each image
    is checked before anything is copied: inside the root once resolved (every file of a folder too), then
    its header probed."""
    copies: list[tuple[str, list[tuple[Path, Path]]]] = []
    images = []
    row_kind = str(rec.get("kind") or "").strip().lower() or None
    for entry in _row_images(rec):
        given = str(entry["path"]).strip()
        src = contained_image(root_real, given, sid, where)
        # Named by where the file really is, so two spellings of one file share one copy and a name can
        # never climb out of the output folder.
        rel = src.relative_to(root_real).as_posix()
        ref: dict[str, Any] = {"path": f"images/{run.slug}/{rel}"}
        plan = plan_copies(root_real, src, run.out_root / ref["path"], given, sid, where)
        check_image(src, sid, given, where, run.limits)
        kind = str(entry.get("kind") or row_kind or "").strip().lower() or _kind(src, sid, given, where)
        ref["kind"] = kind
        position = entry.get("position", rec.get("position"))
        if position not in (None, ""):
            # ASCII digits only ("²".isdigit() is True), and few: anything else is left for the schema to name
            ref["position"] = int(position) if re.fullmatch(r"[0-9]{1,9}", str(position)) else position
        images.append(ref)
        copies.append((given, plan))
    return images, copies


def _kind(src: Path, sid: str, given: str, where: str) -> str:
    try:
        kind = infer_kind(src)
    except (OSError, ValueError) as exc:  # an .npy whose header numpy cannot parse
        raise SampleError(sid, given, f"{where}: cannot read the array's shape ({exc})") from None
    if kind is None:
        raise SampleError(sid, given, f"{where}: cannot tell 2d from 3d by the suffix; add a 'kind' column")
    return kind
