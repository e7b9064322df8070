"""Finding the DICOM files under a folder: each readable file's study, series and identifiers (headers only),
and the files that could not be read, by folder.

The walk never follows a link out of the folder: a file or folder that resolves outside it is recorded as
refused (and never opened); a link that stays inside is read once, where it leads. Files are known by their
opaque id (:func:`.deid.file_id`) from here on; their names, which may hold a patient's name or record number,
are kept only to scrub them from messages."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from radfm.data.importers.containment import OUTSIDE, is_inside, real
from radfm.data.importers.deid import _identifier_terms, file_id

_DICOM_SUFFIXES = ("", ".dcm", ".dicom", ".ima")


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


@dataclass
class _DicomFile:
    path: Path  # resolved, inside the DICOM folder
    rel: str  # as found under the DICOM folder: never shown
    fid: str  # the opaque id shown in messages and records
    folder: str
    study_uid: str
    series_uid: str
    accession: str
    series_number: int
    terms: set[str] = field(repr=False, default_factory=set)


@dataclass
class _DicomIndex:
    files: list[_DicomFile] = field(default_factory=list)
    # folder → [(file id, reason)]; the reason says what is wrong ("not a readable DICOM file (…)", a link out)
    unreadable: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    names: set[str] = field(default_factory=set)  # every file and folder name met: scrubbed from messages
    salt: str = ""  # of the file ids

    _by: dict[str, dict[str, list[_DicomFile]]] = field(default_factory=dict)

    def lookup(self, key_type: str, key: str) -> list[_DicomFile]:
        attr = {"uid": "study_uid", "accession": "accession", "folder": "folder"}[key_type]
        if attr not in self._by:
            table: dict[str, list[_DicomFile]] = {}
            for f in self.files:
                table.setdefault(getattr(f, attr), []).append(f)
            self._by[attr] = table
        return self._by[attr].get(key, [])


def _named_candidate(name: str) -> bool | None:
    """By the name alone: False (never DICOM), True (a DICOM suffix or none), None (sniff the content)."""
    low = name.lower()
    if low.startswith(".") or low == "dicomdir":
        return False
    if low.endswith(_DICOM_SUFFIXES[1:]) or Path(low).suffix == "":
        return True
    return None


def _has_preamble(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _scan_dicom(root: Path, salt: str) -> _DicomIndex:
    """Every DICOM file under ``root`` (headers only); a link is judged where it leads, before it is opened."""
    index = _DicomIndex(salt=salt)
    root_real = real(root)
    found: list[tuple[bool, str, Path, bool | None]] = []  # (is a link, rel, resolved, named DICOM?)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        here = Path(dirpath)
        index.names.update(dirnames)
        index.names.update(filenames)
        for name in list(dirnames):
            if (here / name).is_symlink():
                dirnames.remove(name)  # a link that stays inside is scanned where it leads
                if not is_inside(root_real, real(here / name)):
                    _refuse(index, (here / name).relative_to(root).as_posix(),
                            f"a folder that {OUTSIDE} (a link out)")
        for name in filenames:
            named = _named_candidate(name)
            if named is not False:
                path = here / name
                found.append((path.is_symlink(), path.relative_to(root).as_posix(), real(path), named))
    seen: set[Path] = set()
    # Real files first: a file reached through a link too keeps its own folder, and is read once.
    for _, rel, target, named in sorted(found, key=lambda f: (f[0], f[1])):
        if not is_inside(root_real, target):
            _refuse(index, rel, f"a file that {OUTSIDE} (a link out)")
            continue
        if target in seen:
            continue
        try:
            mode = os.stat(target).st_mode
        except OSError as exc:
            _refuse(index, rel, f"not a readable DICOM file ({exc.strerror or 'a broken link'})")
            continue
        if not stat.S_ISREG(mode):  # a pipe would block the import
            _refuse(index, rel, "not a regular file (a device, pipe or socket)")
            continue
        if named is None and not _has_preamble(target):
            continue
        seen.add(target)
        _add_file(index, target, rel)
    index.files.sort(key=lambda f: f.rel)
    return index


def _folder(rel: str) -> str:
    return rel.split("/")[0] if "/" in rel else Path(rel).stem


def _refuse(index: _DicomIndex, rel: str, reason: str) -> None:
    index.unreadable.setdefault(_folder(rel), []).append((file_id(rel, index.salt), reason))


def _add_file(index: _DicomIndex, path: Path, rel: str) -> None:
    try:
        ds = _read_dicom(path, header_only=True)
    except Exception as exc:  # pydicom raises many types for a damaged file
        detail = str(exc).splitlines()[0].replace(" Use force=True to force reading.", "")[:150] if str(exc) else ""
        reason = f"{type(exc).__name__}: {detail}".rstrip(": ")
        _refuse(index, rel, f"not a readable DICOM file ({reason})")
        return
    index.files.append(_DicomFile(
        path=path, rel=rel, fid=file_id(rel, index.salt), folder=_folder(rel),
        study_uid=str(ds.get("StudyInstanceUID", "") or ""),
        series_uid=str(ds.get("SeriesInstanceUID", "") or rel), accession=str(ds.get("AccessionNumber", "") or ""),
        series_number=int(ds.get("SeriesNumber") or 0) if str(ds.get("SeriesNumber") or "0").isdigit() else 0,
        terms=_identifier_terms(ds)))
