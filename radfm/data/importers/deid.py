"""De-identification for the DICOM importer: the patient's identifiers found in a header, scrubbing them from
text and messages, the salted opaque sample and file ids (input file and folder names often carry a name or a
record number, so no message names them), and keeping pydicom's warnings (which quote element values) out of
logs."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import secrets
import warnings
from collections.abc import Iterator
from typing import Any

REDACTED = "[redacted]"

# Attributes whose values identify a person or a visit: never copied, and scrubbed from report text.
PHI_KEYWORDS = (
    "PatientName", "PatientID", "OtherPatientIDs", "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName",
    "PatientBirthDate", "PatientAddress", "PatientTelephoneNumbers", "IssuerOfPatientID", "MedicalRecordLocator",
    "AccessionNumber", "StudyID", "InstitutionName", "InstitutionAddress", "ReferringPhysicianName",
    "PerformingPhysicianName", "NameOfPhysiciansReadingStudy", "OperatorsName", "RequestingPhysician",
    "PhysiciansOfRecord", "ResponsiblePerson", "MilitaryRank", "RegionOfResidence", "CountryOfResidence",
)
_PN_PARTS = ("family_name", "given_name", "middle_name")  # not the prefix/suffix: "Dr", "Jr" are not names
# Report-table columns that hold identifiers: not copied, and their values are scrubbed from the report.
_PHI_COLUMN_HINTS = ("patient", "name", "mrn", "birth", "dob", "address", "phone", "accession", "physician")


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
    """Replace each identifier (whole words, any case, longest first) with ``[redacted]``.

    A word ends at anything but a letter or digit, ``_`` included: ``MRN123_Doe`` (a folder name pasted into
    a report) loses both parts, ``Doeville`` keeps its ``Doe``."""
    for term in sorted(terms, key=len, reverse=True):
        text = re.sub(rf"(?<![^\W_]){re.escape(term)}(?![^\W_])", REDACTED, text, flags=re.IGNORECASE)
    return text


def scrub_message(text: str, terms: set[str]) -> str:
    """A reader's or decoder's message made safe to show and log: its first line, at most 300 characters,
    with every identifier removed. Stricter than :func:`scrub` (a message has no prose to keep): terms of
    four characters or more go wherever they occur, inside longer words and paths too; shorter ones as words."""
    text = (text.splitlines()[0] if text else "")[:300]
    for term in sorted((t for t in terms if t), key=len, reverse=True):
        pattern = re.escape(term) if len(term) >= 4 else rf"(?<![^\W_]){re.escape(term)}(?![^\W_])"
        text = re.sub(pattern, REDACTED, text, flags=re.IGNORECASE)
    # What no list can name: a UID (1.2.840…), or a long number (a record number, a date) from a header
    # that could not be parsed, so whose identifiers are unknown.
    text = re.sub(r"\d+(?:\.\d+){3,}", REDACTED, text)
    return re.sub(r"\d{6,}", REDACTED, text)


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
    """``<prefix>-`` + 16 hex digits of the salted sha256 of ``value``: stable for one salt, not reversible."""
    return f"{prefix}-{hashlib.sha256(f'{salt}:{value}'.encode()).hexdigest()[:16]}"


FILE_PREFIX = "file"


def file_id(rel: str, salt: str) -> str:
    """The opaque id by which the DICOM importer names an input file (``rel``: its path under the DICOM
    folder, '/'-separated) in messages, quarantine records and logs; :func:`find_dicom_file` maps it back."""
    return opaque_id(f"path:{rel}", salt, FILE_PREFIX)


def find_dicom_file(dicom_root: str | os.PathLike[str], fid: str, salt: str | None = None) -> str | None:
    """The path under ``dicom_root`` (as ``dicom_root/rel``) of the file an importer message calls ``fid``,
    or None. Needs the salt of that import (the same ``salt`` argument, ``RADFM_ID_SALT``, or this
    RADFM_HOME's). Runs on the user's machine only: the mapping is never written anywhere."""
    salt = _id_salt(salt)
    for dirpath, dirnames, filenames in os.walk(dicom_root):
        for name in (*dirnames, *filenames):
            path = os.path.join(dirpath, name)
            if file_id(os.path.relpath(path, dicom_root).replace(os.sep, "/"), salt) == fid:
                return path
    return None
