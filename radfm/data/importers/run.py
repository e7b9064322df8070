"""Bookkeeping shared by the importers: split assignment, slugs, list columns, the run that counts rows in,
samples out and rejects (and writes the manifest, its question profile and the quarantine report), and writing
converted pixels under the output root (PNG and NIfTI). Copying the user's files, checked by resolved path,
is :mod:`.containment`."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from radfm.data.errors import Quarantine, SampleError, check_on_error
from radfm.data.manifest import SPLITS, Sample, write_manifest
from radfm.data.profile import ensure_profile
from radfm.progress import ProgressReporter

log = logging.getLogger(__name__)

DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
SPLIT_ALIASES = {"valid": "val", "validation": "val", "dev": "val", "training": "train", "testing": "test"}


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
        with contextlib.suppress(json.JSONDecodeError, RecursionError, ValueError):  # "[[[[…" past the stack
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
        self.manifest_path = Path(manifest_path) if manifest_path else self.out_root / "manifest.jsonl"
        self.on_error = on_error
        self.stage = stage
        self.quarantine = Quarantine()
        self.samples: list[Sample] = []
        self.ids: set[str] = set()
        self.rows_in = 0
        self.rows_out = 0
        self.limits: Any = None  # the readers' ImageLimits for the probes at ingest (None: the defaults)
        self.total: int | None = None  # the rows to come, when the importer knows (the ETA of the progress)
        self.progress: ProgressReporter | None = None  # started by the first row: a refused input draws no bar

    def row(self, fn: Callable[[], list[Sample]]) -> None:
        """Run one input row; its samples are kept, or its SampleError raised / quarantined."""
        self.rows_in += 1
        if self.progress is None:
            self.progress = ProgressReporter(f"{self.stage} {self.source}", self.total, unit="row", item="rows")
        try:
            samples = fn()
        except SampleError as err:
            if self.on_error == "raise":
                self.progress.close(failed=True)
                raise
            self.quarantine.add(err, self.stage)
            self.progress.update(self.rows_in)
            return
        except BaseException:
            self.progress.close(failed=True)  # the import stops here: its bar is finished, not left drawn
            raise
        self.progress.update(self.rows_in)
        self.samples.extend(samples)
        self.rows_out += 1

    def check_id(self, sample_id: str, file: str | None, where: str) -> None:
        if sample_id in self.ids:
            raise SampleError(sample_id, file, f"{where}: duplicate sample id (ids must be unique)")

    def claim(self, samples: list[Sample]) -> list[Sample]:
        self.ids.update(s.id for s in samples)
        return samples

    def finish(self) -> tuple[list[Sample], Quarantine]:
        if self.progress is not None:
            self.progress.close()
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
        ensure_profile(self.manifest_path)  # the data describes itself: its question families, beside it
        return self.samples, self.quarantine


# ----------------------------------------------------------------------------------------------- files


def _fresh(dest: Path) -> None:
    """Make room for a new file at ``dest``: a link left there is removed, never written through."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_symlink():
        dest.unlink()


def _write_png(arr: np.ndarray, dest: Path) -> None:
    from PIL import Image

    _fresh(dest)
    Image.fromarray(arr).save(dest, format="PNG")


def _write_nifti(arr: np.ndarray, dest: Path, spacing: Sequence[float]) -> None:
    """``arr`` is H×W×D; the affine carries the voxel spacing and nothing about the patient's position."""
    import nibabel as nib

    _fresh(dest)
    img = nib.Nifti1Image(np.ascontiguousarray(arr), affine=np.diag([*map(float, spacing), 1.0]))
    img.header.set_xyzt_units("mm")
    nib.save(img, str(dest))
