"""Importers (``radfm ingest``): a user's table, a MedMNIST ``.npz`` or a folder of DICOM studies → a MedMD
manifest plus its images under one output data root.

Each importer returns ``(samples, quarantine)`` and writes ``<out_root>/manifest.jsonl`` (or the
``manifest_path`` it is given), the profile of its questions beside it (``manifest.profile.json``, see
:mod:`radfm.data.profile`) and ``manifest.quarantine.jsonl`` when something was rejected, with images under
``<out_root>/images/<source>/``.
A bad row raises a :class:`SampleError` naming the sample, the file and the reason, or with
``on_error="quarantine"`` is recorded, so rows in = rows out + quarantined.

The DICOM importer de-identifies: pixels are converted (NIfTI for a series or multi-frame file, PNG for one
frame) so no header travels, the sample id is a salted hash of the study UID, and the patient's identifiers
found in the headers (name, IDs, birth date, accession number, physicians…) are scrubbed from report text and
never written to manifests, meta, file names or logs.

Every image a table or a DICOM folder names is checked after resolving links: what resolves outside the
image root (file or folder, or a file under a named folder) is refused, and copies never follow a link nor
create one (:mod:`.containment`). Every image placed is probed (its header: :mod:`.probe`), so a broken,
truncated or oversized file is refused or quarantined at ingest. The DICOM importer names input files by an
opaque id (:func:`find_dicom_file` maps one back on the machine that holds the folder and the salt).

Modules: :mod:`.run` (the run's bookkeeping shared by every importer: splits, slugs, the manifest and
quarantine report, writing converted pixels), :mod:`.containment` (resolved-path checks, copying),
:mod:`.probe` (the header look at ingest), :mod:`.table`, :mod:`.medmnist`, and for DICOM :mod:`.dicom` (the
importer), :mod:`.dicom_scan` (finding the files), :mod:`.dicom_pixels` (series → array; slices ordered by
:mod:`radfm.data.dicom_order`, as the reader orders them) and :mod:`.deid` (identifiers, scrubbing, salted ids).
"""

from __future__ import annotations

from radfm.data.importers.deid import PHI_KEYWORDS, REDACTED, find_dicom_file, opaque_id, scrub
from radfm.data.importers.dicom import ingest_dicom_folder
from radfm.data.importers.dicom_pixels import DicomImage, dicom_to_array
from radfm.data.importers.medmnist import MEDMNIST, MedMNISTInfo, ingest_medmnist
from radfm.data.importers.run import DEFAULT_FRACTIONS, SPLIT_ALIASES, assign_split
from radfm.data.importers.table import SUFFIX_2D, SUFFIX_3D, infer_kind, ingest_table

__all__ = [
    "DEFAULT_FRACTIONS",
    "MEDMNIST",
    "PHI_KEYWORDS",
    "REDACTED",
    "SPLIT_ALIASES",
    "SUFFIX_2D",
    "SUFFIX_3D",
    "DicomImage",
    "MedMNISTInfo",
    "assign_split",
    "dicom_to_array",
    "find_dicom_file",
    "infer_kind",
    "ingest_dicom_folder",
    "ingest_medmnist",
    "ingest_table",
    "opaque_id",
    "scrub",
]
