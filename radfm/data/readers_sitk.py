"""NRRD (``.nrrd``) and MetaImage (``.mha``, ``.mhd`` + its data file) through SimpleITK.

The header is read first (``ImageFileReader.ReadImageInformation``: no pixels) and checked against the limits;
where the data is stored raw, the file's length is checked against what the header claims, and a detached data
file (``ElementDataFile``, NRRD's ``data file``) must sit beside its header: a header naming ``/etc/shadow`` or
``../x.raw`` is refused rather than read as pixels.

The array comes back in ITK's index order (x, y, z) with its RAS affine (ITK's physical space is LPS), so
:mod:`radfm.data.readers` lays it out exactly as it lays out a NIfTI file: an ``.mha`` reads as the ``.nii``
SimpleITK would write from it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from radfm.data.headers import oriented_shape
from radfm.data.limits import ImageHeader, ImageLimits, ReadError, check_limits, header_of

SITK_SUFFIXES = (".nrrd", ".mha", ".mhd")
# A text header ends well before this; only this much of a file is read to find it.
_HEADER_MAX = 1 << 16


def _dtypes() -> dict[int, np.dtype]:
    import SimpleITK as sitk  # noqa: N813 (the name every SimpleITK example uses)

    names = ("UInt8", "Int8", "UInt16", "Int16", "UInt32", "Int32", "UInt64", "Int64", "Float32", "Float64")
    out = {}
    for name in names:
        dtype = np.dtype(name.lower())
        out[getattr(sitk, f"sitk{name}")] = dtype
        out[getattr(sitk, f"sitkVector{name}")] = dtype
    return out


def _itk_message(exc: Exception) -> str:
    """ITK's multi-line exception text as one line: its own ERROR line, without the source location."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for i, ln in enumerate(lines):
        if "ERROR" in ln:
            msg = re.sub(r"^.*?ERROR:\s*(\w+\(0x[0-9a-f]+\):\s*)?", "", ln) or ln
            if i + 1 < len(lines):  # teem (NRRD) lists its trail of callers below: the last line is the cause
                msg += " … " + re.sub(r"^\[\w+\]\s*", "", lines[-1])
            return msg
    return lines[-1] if lines else type(exc).__name__


def sitk_info(path: Path) -> Any:
    """A SimpleITK reader with the header read (no pixels)."""
    import SimpleITK as sitk  # noqa: N813 (the name every SimpleITK example uses)

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise ReadError(f"not a readable {_kind(path)} header ({_itk_message(exc)})") from None
    return reader


def _kind(path: Path) -> str:
    return "NRRD" if path.suffix.lower() == ".nrrd" else "MetaImage"


def ras_affine(reader: Any) -> np.ndarray:
    """The 4×4 voxel → RAS affine of an ITK image (2D images get a unit third axis)."""
    dim = reader.GetDimension()
    direction = np.eye(3)
    direction[:dim, :dim] = np.asarray(reader.GetDirection(), float).reshape(dim, dim)
    spacing = np.ones(3)
    spacing[:dim] = reader.GetSpacing()
    origin = np.zeros(3)
    origin[:dim] = reader.GetOrigin()
    affine = np.eye(4)
    affine[:3, :3] = direction * spacing
    affine[:3, 3] = origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine  # LPS → RAS


def sitk_header(reader: Any) -> ImageHeader:
    """C×H×W×D as the reader lays the image out (see the module docstring)."""
    dtype = _dtypes().get(reader.GetPixelID())
    if dtype is None:
        import SimpleITK as sitk  # noqa: N813 (the name every SimpleITK example uses)

        name = sitk.GetPixelIDValueAsString(reader.GetPixelID())
        raise ReadError(f"unsupported pixel type {name!r} (need integer or float, scalar or RGB)")
    size = tuple(int(s) for s in reader.GetSize())
    comps = int(reader.GetNumberOfComponents())
    if len(size) == 2:
        if comps not in (1, 3, 4):
            raise ReadError(f"2D image with {comps} components per pixel (expected 1, or 3/4 for RGB/RGBA)")
        return header_of("sitk", (1 if comps == 1 else 3, size[0], size[1], 1), dtype)
    if len(size) == 3:
        if comps != 1:
            raise ReadError(f"3D volume with {comps} components per voxel (expected one)")
        return header_of("sitk", (1, *oriented_shape(size, ras_affine(reader))), dtype)
    raise ReadError(f"unsupported {len(size)}D image of size {size} (expected 2D or 3D)")


def _text_header(path: Path) -> tuple[dict[str, str], int]:
    """The ``key = value`` (MetaImage) or ``key: value`` (NRRD) fields and where the inline data starts."""
    with path.open("rb") as f:
        head = f.read(_HEADER_MAX)
    fields: dict[str, str] = {}
    pos = 0
    nrrd = path.suffix.lower() == ".nrrd"
    for raw in head.split(b"\n"):
        end = pos + len(raw) + 1
        line = raw.decode("latin-1").strip()
        pos = end
        if nrrd:
            if not line:
                return fields, end  # a blank line ends a NRRD header
            if line.startswith("#") or ":" not in line:
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.lstrip("=").strip()
        else:
            key, _, value = line.partition("=")
            fields[key.strip().lower()] = value.strip()
            if key.strip().lower() == "elementdatafile":
                return fields, end  # the MetaImage header's last field
    raise ReadError(f"{_kind(path)} header does not end within {_HEADER_MAX:,} bytes")


def _data_file(path: Path, name: str) -> Path:
    """A detached data file named by the header: it must lie beside the header (links resolved)."""
    folder = path.resolve().parent
    data = (folder / name).resolve()
    if data.parent != folder:
        raise ReadError(f"the header names data file {name!r} outside its own folder: refused")
    if not data.is_file():
        raise ReadError(f"the data file {name!r} named by the header is missing")
    return data


def check_data_length(path: Path, header: ImageHeader, components: int) -> None:
    """Refuse a raw image whose data is shorter than its header claims, or whose data file is elsewhere."""
    fields, data_at = _text_header(path)
    nbytes = header.bytes // header.shape[0] * components  # RGB(A) is stored with every component
    if path.suffix.lower() == ".nrrd":
        name = fields.get("data file") or fields.get("datafile")
        if name is not None and (name.upper().startswith("LIST") or " " in name):
            raise ReadError(f"multi-file NRRD (data file: {name}) is not supported: write one file")
        raw = fields.get("encoding", "raw").lower() == "raw" and not {"byte skip", "byteskip", "line skip",
                                                                       "lineskip"} & fields.keys()
    else:
        name = fields.get("elementdatafile", "LOCAL")
        if name.upper() == "LIST" or "%" in name or " " in name:
            raise ReadError(f"multi-file MetaImage (ElementDataFile = {name}) is not supported: write one file")
        name = None if name.upper() == "LOCAL" else name
        raw = fields.get("compresseddata", "false").lower() != "true" and int(fields.get("headersize", 0)) == 0
    if name is not None:
        data, data_at = _data_file(path, name), 0
    else:
        data = path
    if raw:
        held = data.stat().st_size - data_at
        if held < nbytes:
            raise ReadError(f"truncated: the header claims {nbytes:,} bytes of voxel data, "
                            f"{'the data file' if name else 'the file'} holds {max(held, 0):,}")


def probe_sitk(path: Path, limits: ImageLimits | None = None) -> ImageHeader:
    reader = sitk_info(path)
    header = check_limits(sitk_header(reader), limits)
    check_data_length(path, header, int(reader.GetNumberOfComponents()))
    return header


def read_sitk(path: Path, limits: ImageLimits | None) -> tuple[np.ndarray, np.ndarray, bool]:
    """The pixels in ITK index order — (x, y[, z]) or (x, y, C) — with the RAS affine and whether the last
    axis holds colour channels. The header is checked against ``limits`` before any pixel is read."""
    import SimpleITK as sitk  # noqa: N813 (the name every SimpleITK example uses)

    reader = sitk_info(path)
    header = check_limits(sitk_header(reader), limits)
    comps = int(reader.GetNumberOfComponents())
    check_data_length(path, header, comps)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise ReadError(f"corrupt or truncated {_kind(path)} file ({_itk_message(exc)})") from None
    arr = sitk.GetArrayFromImage(image)  # numpy order: (z, y, x) / (y, x) / (y, x, C)
    if comps > 1:
        return np.swapaxes(arr[..., :3], 0, 1), ras_affine(reader), True
    return arr.T, ras_affine(reader), False
