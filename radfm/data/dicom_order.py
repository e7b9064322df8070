"""The order of the slices of a DICOM series: one rule for the reader (a series folder, the frames of a
multi-frame file) and the DICOM importer (a series gathered by SeriesInstanceUID), so one series becomes the
same volume whichever way it is read.

The rule, first that applies:

1. along the slice normal: ImagePositionPatient projected on the cross product of the series'
   ImageOrientationPatient row and column cosines, when every slice has a position and the series an
   orientation (sorting on z, a common shortcut, is wrong for a coronal or sagittal series);
2. by InstanceNumber, when every slice has one (equal numbers by file name);
3. by file name (the order the scanner or the archive wrote them in).

Two slices in the same place along the normal mean more than one volume (echoes, phases) shares the series:
that raises :class:`SliceOrderError`, since no order can make one volume of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

BY_POSITION = "ImagePositionPatient"
BY_NUMBER = "InstanceNumber"
BY_NAME = "file name"
AS_GIVEN = "as given"
MIN_GAP_MM = 1e-3  # closer than this along the normal is "the same place"


class SliceOrderError(ValueError):
    """The slices cannot be ordered into one volume."""


@dataclass(frozen=True)
class SliceOrder:
    order: np.ndarray  # indices into the slices as given, first slice first
    spacing: float | None  # mm between neighbouring slices along the normal; None unless ordered by position
    how: str  # BY_POSITION, BY_NUMBER, BY_NAME or AS_GIVEN


def slice_normal(orientation: Any) -> np.ndarray | None:
    """The unit normal of the image plane from ImageOrientationPatient (row × column cosines), or None."""
    iop = _floats(orientation, 6)
    if iop is None:
        return None
    normal = np.cross(iop[:3], iop[3:])
    norm = float(np.linalg.norm(normal))  # made unit, so gaps are mm even when the cosines are rounded
    return normal / norm if norm > 1e-6 else None


def order_slices(positions: Sequence[Any], orientation: Any, numbers: Sequence[Any] | None = None,
                 names: Sequence[str] | None = None) -> SliceOrder:
    """Order slices by the rule of this module from their ImagePositionPatient values, the series'
    ImageOrientationPatient, their InstanceNumbers and their file names (the last two optional: without
    them the fallback is the order given). Raises SliceOrderError for two slices in one place."""
    n = len(positions)
    by_position = _by_position(positions, orientation)
    if by_position is not None:
        return by_position
    tie = list(names) if names is not None else [""] * n  # "" for all: the sort is stable, so as given
    values = [_floats(v, 1) for v in numbers] if numbers is not None else []
    if n and len(values) == n and all(v is not None for v in values):
        number = [float(v[0]) for v in values if v is not None]
        order = sorted(range(n), key=lambda i: (number[i], tie[i]))
        return SliceOrder(np.asarray(order, dtype=np.intp), None, BY_NUMBER)
    if names is not None:
        return SliceOrder(np.asarray(sorted(range(n), key=lambda i: tie[i]), dtype=np.intp), None, BY_NAME)
    return SliceOrder(np.arange(n, dtype=np.intp), None, AS_GIVEN)


def series_order(headers: Sequence[Any], names: Sequence[str]) -> SliceOrder:
    """:func:`order_slices` for the pydicom datasets (headers suffice) of one series' files named ``names``.

    The series' orientation is that of its first file by name, so the result does not depend on the order
    the files are given in."""
    if not headers:
        return SliceOrder(np.zeros(0, dtype=np.intp), None, AS_GIVEN)
    first = min(range(len(headers)), key=lambda i: names[i])
    return order_slices([ds.get("ImagePositionPatient") for ds in headers],
                        headers[first].get("ImageOrientationPatient"),
                        [ds.get("InstanceNumber") for ds in headers], names)


def _by_position(positions: Sequence[Any], orientation: Any) -> SliceOrder | None:
    normal = slice_normal(orientation)
    if normal is None or not len(positions):
        return None
    points = [p for p in (_floats(v, 3) for v in positions) if p is not None]
    if len(points) != len(positions):
        return None
    dist = np.stack(points) @ normal
    order = np.argsort(dist, kind="stable")
    gaps = np.diff(dist[order])
    if np.any(gaps < MIN_GAP_MM):  # two slices in one place: the folder or file holds more than one volume
        places = len(np.unique(dist.round(3)))
        raise SliceOrderError(f"duplicate slice positions ({len(dist)} slices at {places} positions): "
                              "more than one volume (echoes, phases?) in one series")
    return SliceOrder(order.astype(np.intp), float(np.median(gaps)) if len(gaps) else None, BY_POSITION)


def _floats(value: Any, count: int) -> np.ndarray | None:
    """``value`` (``count`` numbers) as finite floats, or None when it is missing or malformed."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        arr = np.atleast_1d(np.asarray(value, dtype=float)).ravel()
    except (TypeError, ValueError):
        return None
    if arr.shape != (count,):
        return None
    return arr if bool(np.all(np.isfinite(arr))) else None
