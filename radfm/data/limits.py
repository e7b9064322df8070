"""Resource limits on an image, checked on its header before any pixel is decoded.

A header is a few hundred bytes that may claim anything: a 71-byte ``.nii.gz`` claiming 32000×32000×1000 voxels
made the readers ask for 4 TB and die with a bare ``MemoryError``. Every reader (and
:func:`radfm.data.readers.probe_image`) builds an :class:`ImageHeader` first and checks it against
:class:`ImageLimits`; over a limit is a :class:`LimitError`, which the reader reports as a
:class:`~radfm.data.errors.SampleError` naming the file.

The defaults fit a 512×512×512 CT with room to spare, and refuse what no radiology volume needs:

- ``max_voxels = 2**29`` (536,870,912) = 512³ × 4: a 512³ volume with up to four channels, or a grey
  512×512×2048 whole-body CT at thin slices. The decoded array is float32, so at most 2 GiB.
- ``max_bytes = 2**31`` (2 GiB) = 512³ × 8 bytes × 2: the pixels in the file's own dtype (what the decoder
  allocates before the float32 copy), so a 512³ float64 volume fits twice over and int16 CTs up to 2**30 voxels
  would (``max_voxels`` stops them first).

Raise both (``data.max_voxels`` / ``data.max_bytes``) for larger scans on a machine with the memory for them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DEFAULT_MAX_VOXELS = 2**29
DEFAULT_MAX_BYTES = 2**31


class ReadError(Exception):
    """A known problem inside a format reader or header probe; the caller turns it into a SampleError."""


class LimitError(ReadError):
    """The header claims more voxels or bytes than the limits allow."""


@dataclass(frozen=True)
class ImageLimits:
    """The largest image a reader decodes: ``max_voxels`` (every channel counted) and ``max_bytes`` (the pixels in
    the file's own dtype). Defaults: see the module docstring."""

    max_voxels: int = DEFAULT_MAX_VOXELS
    max_bytes: int = DEFAULT_MAX_BYTES

    def __post_init__(self) -> None:
        for name in ("max_voxels", "max_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"data.{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class ImageHeader:
    """What a file's header says, read without decoding a pixel.

    ``format``: the reader's format name (``nifti``, ``dicom``, ``dicom_series``, ``pil``, ``npy``, ``npz``,
    ``sitk``). ``shape``: C×H×W×D as the reader lays the image out (an RGB file whose channels turn out equal is
    read as one grey channel, so C may shrink). ``dtype``: the stored pixel type as a numpy name. ``bytes``: the
    pixels in that dtype, what the decoder allocates before the float32 copy.
    """

    format: str
    shape: tuple[int, ...]
    dtype: str
    bytes: int

    @property
    def voxels(self) -> int:
        """Every value of the image, channels included."""
        return math.prod(self.shape)

    @property
    def is_3d(self) -> bool:
        return len(self.shape) == 4 and self.shape[-1] > 1


def header_of(fmt: str, shape: tuple[int, ...], dtype: np.dtype | str) -> ImageHeader:
    """An :class:`ImageHeader` with ``bytes`` computed from the shape and the stored dtype."""
    dt = np.dtype(dtype)
    shape = tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ReadError(f"header claims a negative size {_dims(shape)}")
    return ImageHeader(fmt, shape, dt.name, math.prod(shape) * dt.itemsize)


def check_limits(header: ImageHeader, limits: ImageLimits | None) -> ImageHeader:
    """Raise :class:`LimitError` when ``header`` is over ``limits`` (None: the defaults); return it otherwise."""
    limits = limits or ImageLimits()
    dims = _dims(header.shape)
    if header.voxels > limits.max_voxels:
        raise LimitError(f"header claims {dims} voxels ({header.voxels:,}), over data.max_voxels = "
                         f"{limits.max_voxels:,}; raise data.max_voxels if the image is real")
    if header.bytes > limits.max_bytes:
        raise LimitError(f"header claims {dims} {header.dtype} voxels = {_size(header.bytes)}, over "
                         f"data.max_bytes = {_size(limits.max_bytes)}; raise data.max_bytes if the image is real")
    return header


def _dims(shape: tuple[int, ...]) -> str:
    # C×H×W×D reads better as the H×W(×D) a user knows from the file: one channel and one slice go unsaid
    shown = list(shape)
    if len(shown) == 4:
        shown = shown[1:] if shown[0] == 1 else shown
        shown = shown[:-1] if shown[-1] == 1 else shown
    return "×".join(str(s) for s in shown)


def _size(n: int) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"
