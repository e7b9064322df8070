"""Finding the DICOM files under a folder: each readable file's study, series and identifiers (headers only),
and the files that could not be read, by folder."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from radfm.data.importers.deid import _identifier_terms

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
