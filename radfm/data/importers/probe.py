"""Ingest looks at every image it places: a broken, truncated, wrong-magic or oversized file is refused (or
quarantined) at ingest, not found at training.

The look is :func:`radfm.data.readers.probe_image` (the header only: shape, dtype, format, checked against
the voxel/byte limits before any pixel is allocated). Where the installed reader has no ``probe_image``, the
image is read whole with :func:`radfm.data.readers.read_image` instead (slower, same verdicts on broken files;
an allocation the machine refuses is reported as over the limit rather than raised).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from radfm.data import readers
from radfm.data.errors import SampleError


def has_probe() -> bool:
    """Whether the reader offers the cheap header probe (else :func:`check_image` reads the whole image)."""
    return callable(getattr(readers, "probe_image", None))


def check_image(path: Path, sample_id: str | None, shown: str, where: str, limits: Any = None) -> Any:
    """Probe the image at ``path`` (resolved, inside the root) against ``limits`` (a
    :class:`radfm.data.limits.ImageLimits`, None: the defaults); its header (or, on the fallback, the decoded
    image). Raises :class:`SampleError` naming ``sample_id``, ``shown`` (the file as the user may see it) and
    the reader's reason, after ``where`` (the row)."""
    try:
        if has_probe():
            return readers.probe_image(path, sample_id, limits)
        # A constant image is valid input (a blank slice, a mask); only training-time checks refuse it.
        return readers.read_image(path, sample_id, allow_constant=True)
    except SampleError as err:
        raise SampleError(sample_id, shown, f"{where}: {err.reason}") from None
    except MemoryError:  # the full-read fallback only: a header claiming more than the machine can hold
        raise SampleError(sample_id, shown, f"{where}: the image is over the voxel/byte limit (its header "
                                            "claims more memory than this machine can allocate)") from None


def check_series(headers: Sequence[Any], sample_id: str | None, shown: str, where: str, limits: Any = None
                 ) -> None:
    """The volume that stacking slices with these headers (from :func:`check_image`, one per file) would
    allocate, checked against ``limits`` before any slice is decoded: each slice may pass while the series
    does not. Sized by the largest slice (a series whose slices differ is refused later anyway)."""
    if not has_probe() or not headers:
        return  # the fallback decoded every slice already: the machine has held them
    from radfm.data.limits import LimitError, check_limits, header_of

    channels, rows, cols = (max(h.shape[i] for h in headers) for i in range(3))
    dtype = max((h.dtype for h in headers), key=lambda d: np.dtype(d).itemsize)
    total = header_of("dicom_series", (channels, rows, cols, sum(h.shape[-1] for h in headers)), dtype)
    try:
        check_limits(total, limits)
    except LimitError as exc:
        raise SampleError(sample_id, shown, f"{where}: the series of {len(headers)} files: {exc}") from None
