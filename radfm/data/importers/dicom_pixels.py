"""DICOM pixels for the importer: one series or (multi-frame) file → an array in modality units and its
spacing, then PNG- or NIfTI-ready pixels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from radfm.data.dicom_order import SliceOrderError, series_order
from radfm.data.errors import SampleError
from radfm.data.importers.dicom_scan import _read_dicom


@dataclass
class DicomImage:
    array: np.ndarray  # H×W (×3 for colour) for one frame, H×W×D for a volume
    spacing: tuple[float, ...]  # mm per axis of ``array`` (rows, columns[, slices])
    modality: str
    is_3d: bool


def dicom_to_array(files: Sequence[Path], sample_id: str | None = None) -> DicomImage:
    """One DICOM series (its files) or one (multi-frame) file → pixels in modality units and spacing.

    Files are decoded by :func:`radfm.data.readers.read_image`; the slices of a series are ordered as the
    reader orders a series folder (:func:`radfm.data.dicom_order.series_order`: along the normal of the image
    plane by ImagePositionPatient, else by InstanceNumber, else by file name). Raises SampleError."""
    from radfm.data.readers import read_image

    if len(files) == 1:
        img = read_image(files[0], sample_id)
        channels, _, _, depth = img.array.shape
        if depth > 1:
            if channels != 1:
                raise SampleError(sample_id, str(files[0]), "colour volumes are not supported")
            return DicomImage(img.array[0], tuple(img.spacing), img.modality or "", True)
        arr = img.array[0, :, :, 0] if channels == 1 else np.transpose(img.array[:, :, :, 0], (1, 2, 0))
        return DicomImage(arr, tuple(img.spacing[:2]), img.modality or "", False)
    headers = [_read_dicom(f, header_only=True) for f in files]
    try:
        ordered = series_order(headers, [Path(f).as_posix() for f in files])
    except SliceOrderError as exc:
        raise SampleError(sample_id, str(files[0]), str(exc)) from None
    order, dz = ordered.order, ordered.spacing
    slices = [read_image(files[i], sample_id, allow_constant=True) for i in order]
    for i, img in zip(order, slices):
        if img.array.shape[0] != 1 or img.array.shape[-1] != 1:
            raise SampleError(sample_id, str(files[i]), "a series slice is colour or multi-frame: read it alone")
    shapes = {img.array.shape for img in slices}
    if len(shapes) != 1:
        raise SampleError(sample_id, str(files[order[0]]), f"the series' slices differ in size {sorted(shapes)}")
    vol = np.concatenate([img.array[0] for img in slices], axis=-1)
    first = slices[0]
    return DicomImage(vol, (*first.spacing[:2], dz or first.spacing[2]), first.modality or "", True)


def _png_ready(arr: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
    """A 2D array as 8/16-bit PNG pixels; ``value = pixel * scale + offset`` recovers modality units."""
    if arr.ndim == 3:
        return arr.astype(np.uint8), {"offset": 0.0, "scale": 1.0}
    lo, hi = float(arr.min()), float(arr.max())
    integral = np.issubdtype(arr.dtype, np.integer) or bool(np.all(np.mod(arr, 1) == 0))
    if integral and lo >= 0 and hi <= 255 and arr.dtype == np.uint8:
        return arr, {"offset": 0.0, "scale": 1.0}
    if integral and lo >= 0 and hi <= 65535:
        return arr.astype(np.uint16), {"offset": 0.0, "scale": 1.0}
    if integral and hi - lo <= 65535:
        return (arr - lo).astype(np.uint16), {"offset": lo, "scale": 1.0}
    scale = (hi - lo) / 65535 or 1.0
    return np.round((arr - lo) / scale).astype(np.uint16), {"offset": lo, "scale": scale}


def _nifti_ready(arr: np.ndarray) -> np.ndarray:
    if np.issubdtype(arr.dtype, np.integer) and arr.dtype.itemsize <= 2:
        return arr
    if np.all(np.mod(arr, 1) == 0) and arr.min() >= -32768 and arr.max() <= 32767:
        return arr.astype(np.int16)
    return arr.astype(np.float32)
