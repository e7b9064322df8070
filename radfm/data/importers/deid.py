"""De-identification for the DICOM importer: the patient's identifiers found in a header, scrubbing them from
text, the salted opaque sample ids, and keeping pydicom's warnings (which quote element values) out of logs."""

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
    """Replace each identifier (whole words, any case, longest first) with ``[redacted]``."""
    for term in sorted(terms, key=len, reverse=True):
        text = re.sub(rf"(?<!\w){re.escape(term)}(?!\w)", REDACTED, text, flags=re.IGNORECASE)
    return text


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
