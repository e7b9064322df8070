"""A content-addressed cache of preprocessed tensors, so epoch 2+ skips decoding, normalising and resizing.

An entry is keyed by sha256(file bytes) — for a DICOM series folder, every slice file's bytes in name order —
plus the transform config key, and stored as ``<root>/<key[:2]>/<key>.npy``. Entries are written to a
temporary file and moved into place with ``os.replace``, so concurrent dataloader workers never read half a
file. Nothing is evicted: delete the folder to reclaim space.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from radfm.data.headers import is_series_member, series_files
from radfm.data.remote import remote_error, remote_fs

_CHUNK = 1 << 20


class TensorCache:
    """``get_or_compute(path, cfg_key, fn)`` returns the cached array or computes, stores and returns it."""

    def __init__(self, root: str | Path | None = None) -> None:
        if root is None:
            from radfm.paths import home_path

            root = home_path("cache", "tensors")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.misses = 0
        # Hashing every file every epoch would cost a full read; a file whose (inode, size, mtime) is
        # unchanged keeps its hash. A same-size rewrite within the file system's mtime tick is the blind spot.
        self._digests: dict[tuple, str] = {}

    def content_hash(self, path: str | Path) -> str:
        """sha256 of the file's bytes (a folder: each file's length and bytes, in name order)."""
        path_s = str(path)
        if "://" in path_s and not path_s.startswith("file://"):
            return self._remote_hash(path_s)
        p = Path(path_s.removeprefix("file://"))
        files = series_files(p) if p.is_dir() else [p]
        stats = [f.stat() for f in files]
        stamp = (str(p), tuple((f.name, s.st_ino, s.st_size, s.st_mtime_ns) for f, s in zip(files, stats)))
        digest = self._digests.get(stamp)
        if digest is None:
            h = hashlib.sha256()
            for f, s in zip(files, stats):
                h.update(s.st_size.to_bytes(8, "little"))  # length prefix: ("ab","c") ≠ ("a","bc")
                with f.open("rb") as fh:
                    while chunk := fh.read(_CHUNK):
                        h.update(chunk)
            digest = self._digests[stamp] = h.hexdigest()
        return digest

    def _remote_hash(self, url: str) -> str:
        try:
            return self._remote_digest(url)
        except FileNotFoundError:
            raise  # get_or_compute lets the reader say "file not found"
        except Exception as exc:  # no credentials, unreachable endpoint…: one SampleError line naming the URL
            raise remote_error(url, exc) from exc

    def _remote_digest(self, url: str) -> str:
        fs, rpath = remote_fs(url)
        info = fs.info(rpath)
        stamp = (url, info.get("size"), str(info.get("ETag") or info.get("etag") or ""),
                 str(info.get("LastModified") or info.get("mtime") or info.get("created") or ""))
        digest = self._digests.get(stamp)
        if digest is None:
            h = hashlib.sha256()
            names = [rpath]
            if info.get("type") == "directory":
                names = sorted(e["name"] for e in fs.ls(rpath, detail=True)
                               if e["type"] == "file" and is_series_member(e["name"].rsplit("/", 1)[-1]))
            for name in names:
                h.update(int(fs.info(name)["size"]).to_bytes(8, "little"))
                with fs.open(name, "rb") as fh:
                    while chunk := fh.read(_CHUNK):
                        h.update(chunk)
            digest = self._digests[stamp] = h.hexdigest()
        return digest

    def key(self, path: str | Path, cfg_key: str) -> str:
        return hashlib.sha256(f"{self.content_hash(path)}:{cfg_key}".encode()).hexdigest()

    def entry(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npy"

    def get_or_compute(self, path: str | Path, cfg_key: str, fn: Callable[[], np.ndarray]) -> np.ndarray:
        """The cached array for (file content, ``cfg_key``), else ``fn()`` stored under that key."""
        try:
            entry = self.entry(self.key(path, cfg_key))
        except OSError:  # missing or unreadable input: let fn's reader raise its SampleError
            self.misses += 1
            return fn()
        try:
            arr = np.load(entry, allow_pickle=False)
            self.hits += 1
            return arr
        except (OSError, ValueError, EOFError):
            pass  # absent, or damaged: a damaged entry is recomputed and overwritten, never trusted
        arr = fn()
        self.misses += 1
        self._write(entry, arr)
        return arr

    def _write(self, entry: Path, arr: np.ndarray) -> None:
        try:
            fd, tmp = tempfile.mkstemp(dir=entry.parent, prefix=".tmp-", suffix=".npy")
        except FileNotFoundError:  # first entry of this shard: mkdir only then (an exist_ok mkdir is not free)
            entry.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=entry.parent, prefix=".tmp-", suffix=".npy")
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, np.ascontiguousarray(arr))
            os.replace(tmp, entry)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses}

    def __len__(self) -> int:
        return sum(1 for _ in self.root.glob("*/*.npy"))
