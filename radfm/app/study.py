"""What a reader of scans sees in ``radfm app``: the uploaded files as one image or scan, and its slices for the
screen.

The model reads the file as it is (:mod:`radfm.data.readers`, checked against :mod:`radfm.registry.limits` first);
only the picture on the screen is windowed and turned:

- windowing: a DICOM's own window (``WindowCenter``/``WindowWidth``) when it has one, else the 0.5–99.5
  percentiles of the whole volume, so every slice of a scan is shown with the same grey scale;
- orientation: a NIfTI's in-plane axes are laid out in the radiological convention (the patient's right on the
  screen's left; anterior, or superior, at the top). DICOM and 2D images are shown as stored (rows down, columns
  across), which is already how they are meant to be seen.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from radfm.registry.limits import PredictInputError

# How the readers' meta["format"] is named on the screen (the suffix of a 2D image, upper case, otherwise).
_FORMATS = {"nifti": "NIfTI", "dicom": "DICOM", "dicom_series": "DICOM series", "npy": "NPY", "npz": "NPZ"}
# The axis shown vertically is the one that ranks higher (axial: A over R; coronal and sagittal: S).
_RANK = {"R": 0, "L": 0, "A": 1, "P": 1, "S": 2, "I": 2}


@dataclass(frozen=True)
class Study:
    """One uploaded image or scan: ``path`` (a file, or a folder holding one DICOM series) as the model reads it,
    ``name`` how the page names it, ``slices`` the screen's uint8 pictures (D×rows×cols, ×3 for colour) and
    ``summary`` one line about it."""

    path: str
    name: str
    slices: np.ndarray
    summary: str

    def plain(self, message: str) -> str:
        """``message`` naming the upload as the user knows it, not by its temporary path on the server."""
        return message.replace(self.path, self.name)

    @property
    def depth(self) -> int:
        return int(self.slices.shape[0])

    def slice(self, k: int) -> np.ndarray:
        """Slice ``k`` (clamped into the volume) for the screen."""
        return self.slices[min(max(int(k), 0), self.depth - 1)]


def assemble(files: Sequence[str | Path], work: Path) -> Path:
    """The uploaded ``files`` as what the readers take: one file as it is, or several DICOM files copied into one
    new series folder under ``work``. Anything else is refused (:class:`PredictInputError`)."""
    from radfm.data.readers import is_dicom_file

    paths = [Path(f) for f in files]
    if not paths:
        raise PredictInputError("no file was uploaded: upload an image or scan")
    if len(paths) == 1:
        return paths[0]
    # DICOM files are often named by UID, without a suffix: their preamble tells them apart.
    other = [p.name for p in paths if not (p.suffix.lower() == ".dcm" or is_dicom_file(p))]
    if other:
        raise PredictInputError(f"{len(paths)} files were uploaded, but {', '.join(other[:3])} "
                                f"{'is' if len(other) == 1 else 'are'} not DICOM: upload one image or scan, or the "
                                ".dcm files of one DICOM series")
    series = work / f"series-{uuid.uuid4().hex[:12]}"
    series.mkdir(parents=True)
    for i, p in enumerate(paths):
        # copies, not links: the readers refuse what a link points to outside its folder
        shutil.copyfile(p, series / f"{i:05d}-{p.name}")
    return series


def load_study(path: str | Path) -> Study:
    """Check ``path`` as ``radfm predict`` checks an image (its header against the limits, before any pixel is
    decoded), read it and lay its slices out for the screen."""
    from radfm.data.errors import SampleError
    from radfm.data.readers import read_image
    from radfm.registry.inference import check_images

    path = Path(path)
    # how messages and the page name the upload: the temporary path on the server means nothing to the user
    name = f"the series of {sum(1 for p in path.iterdir() if p.is_file())} files" if path.is_dir() else path.name
    try:
        (checked,) = check_images([path])
    except PredictInputError as exc:
        raise PredictInputError(str(exc).replace(str(path), name)) from None
    try:
        img = read_image(checked, allow_constant=True)  # a blank image is still shown; the model decides
    except SampleError as exc:
        raise PredictInputError(f"image {name} cannot be read: {exc.reason}") from None
    slices = screen_slices(img.array, img.meta)
    c, h, w, d = img.array.shape
    kind = "scan" if d > 1 else "image"
    fmt = str(img.meta.get("format", ""))
    what = " ".join(part for part in (img.modality, _FORMATS.get(fmt, fmt.upper())) if part)
    spacing = " × ".join(f"{s:g}" for s in img.spacing)
    summary = (f"{name}: {what} {kind}, {h} × {w} × {d} voxels"
               f"{'' if c == 1 else f', {c} channels'}, spacing {spacing} mm")
    return Study(str(checked), name, slices, summary)


def screen_slices(array: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
    """A reader's float32 C×H×W×D → uint8 D×rows×cols (grey) or D×rows×cols×3 (colour), windowed once for the
    whole volume and, for a NIfTI, turned to the radiological convention (see the module docstring)."""
    grey = array.shape[0] == 1
    vol = array[0] if grey else np.moveaxis(array[:3], 0, -2)  # H×W×D, or H×W×3×D
    lo, hi = _window(array, meta)
    out = np.clip((vol - lo) / max(hi - lo, 1e-6) * 255.0, 0, 255).astype(np.uint8)
    out = np.moveaxis(out, -1, 0)  # D first: D×H×W(×3)
    orientation = str(meta.get("orientation") or "")
    if len(orientation) == 3 and set(orientation) <= set(_RANK):
        # the in-plane axes point towards the patient's right, anterior or superior: flip both, so that end of
        # each axis comes first (top, left); then the higher-ranking axis goes vertical
        out = out[:, ::-1, ::-1]
        if _RANK[orientation[0]] < _RANK[orientation[1]]:
            out = np.swapaxes(out, 1, 2)
    return np.ascontiguousarray(out)


def _window(array: np.ndarray, meta: dict[str, Any]) -> tuple[float, float]:
    """(low, high) of the grey scale: the DICOM window when given, else robust percentiles; a colour image
    already in 0..255 keeps its values."""
    if array.shape[0] == 3 and array.min() >= 0 and array.max() <= 255:
        return 0.0, 255.0
    centre, width = _first(meta.get("WindowCenter")), _first(meta.get("WindowWidth"))
    if centre is not None and width is not None and width > 0:
        return centre - width / 2, centre + width / 2
    flat = array.ravel()
    sample = flat[:: max(1, flat.size // 1_000_000)]  # a million values fix the percentiles well enough
    lo, hi = (float(v) for v in np.percentile(sample, [0.5, 99.5]))
    if hi <= lo:  # a near-constant image: its full range
        lo, hi = float(sample.min()), float(sample.max())
    return lo, hi


def _first(value: Any) -> float | None:
    if isinstance(value, list | tuple):
        value = value[0] if value else None
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None
