"""The MedMD manifest: one row per sample (pydantic), read and written as JSONL or Parquet.

Paths are relative to a data root (or ``s3://`` URIs); a path that escapes the root — ``..``, absolute,
or a symlink pointing out — is rejected.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from radfm.data.errors import Quarantine, SampleError, check_on_error

SCHEMA_VERSION = "1.0"
TASKS = ("modality", "diagnosis", "vqa", "report", "rationale")
SPLITS = ("train", "val", "test")
Task = Literal["modality", "diagnosis", "vqa", "report", "rationale"]
Split = Literal["train", "val", "test"]


def check_relative_path(path: str) -> str:
    """Accept ``s3://bucket/key`` or a relative POSIX path that stays inside the data root."""
    if not path or not path.strip():
        raise ValueError("image path is empty")
    if path.startswith("s3://"):
        if len(path) <= len("s3://") or "/.." in path:
            raise ValueError(f"bad s3 URI {path!r}")
        return path
    if "://" in path:
        raise ValueError(f"unsupported URI scheme in {path!r} (use a relative path or s3://)")
    p = PurePosixPath(path.replace("\\", "/"))
    if p.is_absolute() or (len(path) > 1 and path[1] == ":"):
        raise ValueError(f"image path {path!r} is absolute: manifests hold paths relative to the data root")
    if ".." in p.parts:
        raise ValueError(f"image path {path!r} escapes the data root ('..')")
    return str(p)


class ImageRef(BaseModel):
    """One image or scan of a sample and where it stands in the text (RadFM's position)."""

    model_config = ConfigDict(extra="forbid")
    path: str
    kind: Literal["2d", "3d"]
    position: str | int | dict[str, int | str] = "start"

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        return check_relative_path(v)

    @field_validator("position")
    @classmethod
    def _position(cls, v: Any) -> Any:
        if isinstance(v, str) and v not in ("start", "end"):
            raise ValueError(f"position {v!r} must be 'start', 'end', a character index or {{'question': i}}")
        if isinstance(v, int) and v < 0:
            raise ValueError(f"position {v} is negative")
        if isinstance(v, dict) and (len(v) != 1 or next(iter(v)) not in ("question", "answer")):
            raise ValueError(f"position {v!r} must have one key, 'question' or 'answer'")
        return v


class Sample(BaseModel):
    """One manifest row."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1)
    task: Task
    split: Split
    question: str
    answer: str
    images: list[ImageRef] = Field(default_factory=list)
    source: str = "unknown"
    labels: list[str] | None = None
    choices: list[str] | None = None
    meta: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> Sample:
        if not self.question.strip():
            raise ValueError("question is empty")
        if not self.answer.strip():
            raise ValueError("answer is empty")
        if self.choices is not None and self.answer not in self.choices:
            raise ValueError(f"answer {self.answer!r} is not among the closed choices {self.choices}")
        for img in self.images:
            if isinstance(img.position, int) and img.position > len(self.question):
                raise ValueError(f"image position {img.position} lies beyond the question's end")
        return self

    @property
    def is_3d(self) -> bool:
        return any(img.kind == "3d" for img in self.images)


def resolve_image_path(root: str | Path, path: str) -> str:
    """Absolute local path (or the s3 URI) of ``path`` under ``root``; refuses symlinks that lead out."""
    path = check_relative_path(path)
    if path.startswith("s3://"):
        return path
    root_s = str(root)
    if root_s.startswith("s3://"):
        return root_s.rstrip("/") + "/" + path
    root_p = Path(root).resolve()
    full = (root_p / path).resolve()
    if root_p != full and root_p not in full.parents:
        raise ValueError(f"image path {path!r} resolves outside the data root (symlink out of {root_p})")
    return str(full)


def _validate_row(row: dict[str, Any], where: str) -> Sample:
    try:
        return Sample.model_validate(row)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(x) for x in first["loc"]) or "row"
        file = None
        imgs = row.get("images") if isinstance(row, dict) else None
        if isinstance(imgs, list) and imgs and isinstance(imgs[0], dict):
            file = str(imgs[0].get("path"))
        raise SampleError(str(row.get("id", where)) if isinstance(row, dict) else where, file,
                          f"{where}: field {loc}: {first['msg']}") from None


def _open(path: str | Path, mode: str = "rb"):
    import fsspec

    return fsspec.open(str(path), mode).open()


def read_manifest(
    path: str | Path, on_error: str = "raise", quarantine: Quarantine | None = None
) -> list[Sample]:
    """Read a JSONL or Parquet manifest (local or s3://). Bad rows raise or go to ``quarantine``."""
    check_on_error(on_error)
    if on_error == "quarantine" and quarantine is None:
        raise ValueError("on_error='quarantine' needs a Quarantine to write rejected rows to")
    path_s = str(path)
    rows = [(f"{path_s} {where}", rec, problem) for where, rec, problem in read_records(path_s)]
    samples: list[Sample] = []
    seen: set[str] = set()
    for where, rec, problem in rows:
        try:
            if problem is not None:
                raise SampleError(where, None, f"{where}: {problem}")
            sample = _validate_row(rec, where)
            if sample.id in seen:
                raise SampleError(sample.id, None, f"{where}: duplicate sample id")
            seen.add(sample.id)
            samples.append(sample)
        except SampleError as err:
            if on_error == "raise":
                raise
            quarantine.add(err, "manifest")
    return samples


def read_records(path: str | Path) -> list[tuple[str, dict[str, Any] | None, str | None]]:
    """The manifest's rows as plain dicts, before any schema check: ``(where, record, problem)`` with ``where``
    ``line N`` (JSONL, header skipped and its schema version checked) or ``row N`` (Parquet); a row that is not
    a JSON object has ``record`` None and says why in ``problem``. Shared by :func:`read_manifest` and the
    validation suites (which must see bad rows to name them)."""
    path_s = str(path)
    rows: list[tuple[str, dict[str, Any] | None, str | None]] = []
    if path_s.endswith(".parquet"):
        import pyarrow.parquet as pq

        with _open(path_s) as f:
            table = pq.read_table(f)
        version = (table.schema.metadata or {}).get(b"radfm_schema_version", b"").decode()
        _check_version(version, path_s)
        for i, rec in enumerate(table.to_pylist()):
            for key in ("images", "labels", "choices", "meta"):
                if isinstance(rec.get(key), str):  # write_manifest stores nested fields as JSON text
                    # left as text: the schema check names it (RecursionError: "[[[[…" nested past the stack)
                    with contextlib.suppress(json.JSONDecodeError, RecursionError, ValueError):
                        rec[key] = json.loads(rec[key])
            rows.append((f"row {i}", rec, None))
    elif path_s.endswith((".jsonl", ".json")):
        with _open(path_s, "rt") as f:
            for i, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except (json.JSONDecodeError, RecursionError, ValueError) as exc:  # also "[[[[…", 5000-digit ints
                    rows.append((f"line {i}", None, f"not valid JSON ({getattr(exc, 'msg', type(exc).__name__)})"))
                    continue
                if isinstance(rec, dict) and "__manifest__" in rec:
                    _check_version(str((rec["__manifest__"] or {}).get("schema_version", "")), path_s)
                    continue
                rows.append((f"line {i}", rec if isinstance(rec, dict) else None,
                             None if isinstance(rec, dict) else "not a JSON object"))
    else:
        raise ValueError(f"manifest {path_s} must end in .jsonl or .parquet")
    return rows


def _check_version(version: str, path: str) -> None:
    if version and version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
        raise ValueError(f"manifest {path} has schema version {version}; this radfm reads {SCHEMA_VERSION}")


def write_manifest(samples: Iterable[Sample], path: str | Path) -> Path | str:
    """Write JSONL (a header line carries the schema version) or Parquet (schema metadata)."""
    samples = list(samples)
    path_s = str(path)
    if not path_s.startswith("s3://"):
        Path(path_s).parent.mkdir(parents=True, exist_ok=True)
    if path_s.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        records = []
        for s in samples:
            d = s.model_dump()
            for key in ("images", "labels", "choices", "meta"):
                d[key] = json.dumps(d[key])
            records.append(d)
        table = pa.Table.from_pylist(records)
        table = table.replace_schema_metadata({"radfm_schema_version": SCHEMA_VERSION})
        with _open(path_s, "wb") as f:
            pq.write_table(table, f)
    elif path_s.endswith(".jsonl"):
        with _open(path_s, "wt") as f:
            f.write(json.dumps({"__manifest__": {"schema_version": SCHEMA_VERSION}}) + "\n")
            for s in samples:
                f.write(s.model_dump_json(exclude_none=True) + "\n")
    else:
        raise ValueError(f"manifest {path_s} must end in .jsonl or .parquet")
    return path


def find_manifest(data_root: str | Path) -> Path:
    """The manifest of a data root: ``manifest.jsonl``, else ``manifest.parquet``, else the single manifest
    under ``manifests/`` (where ``radfm ingest`` wrote it before; quarantine reports are not manifests).
    Two or more there is an error naming them; none anywhere is a FileNotFoundError."""
    root = Path(data_root)
    for name in ("manifest.jsonl", "manifest.parquet"):
        if (root / name).is_file():
            return root / name
    folder = root / "manifests"
    found = sorted(p for p in folder.glob("*") if p.is_file() and p.name.endswith((".jsonl", ".parquet"))
                   and not p.name.endswith(".quarantine.jsonl")) if folder.is_dir() else []
    if len(found) == 1:
        return found[0]
    if found:
        raise ValueError(f"{folder} holds {len(found)} manifests ({', '.join(p.name for p in found)}) and "
                         f"{root} has no manifest.jsonl: name the one to use (--manifest, data.manifest)")
    raise FileNotFoundError(f"no manifest in {root}: expected manifest.jsonl, manifest.parquet or one manifest "
                            f"under manifests/ (write one with `radfm ingest … --out {root}`)")


def split_counts(samples: Sequence[Sample]) -> dict[str, int]:
    out = {s: 0 for s in SPLITS}
    for sample in samples:
        out[sample.split] += 1
    return out
