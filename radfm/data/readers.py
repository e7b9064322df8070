"""One reader interface for radiology images: ``read_image(path) -> ImageData``, chosen by suffix or content.

Formats: NIfTI (``.nii``, ``.nii.gz``), DICOM (one file, multi-frame, or a series folder; a file with no or an
unknown suffix is sniffed for the ``DICM`` preamble, because DICOM files are often named by UID), PNG/JPG,
NPY/NPZ. ``s3://`` (any fsspec URL) is fetched to a temporary folder first. Every bad input raises
:class:`SampleError` naming the sample, the file and the reason.

Arrays are float32 ``C×H×W×D``: C = 1 (grey) or 3 (colour), D = 1 for a 2D image. H runs along DICOM rows
(NIfTI's first axis), W along columns (NIfTI's second), D along the slice normal (NIfTI's third).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from radfm.data.dicom_order import BY_POSITION, SliceOrderError, order_slices, series_order
from radfm.data.errors import SampleError

SUFFIXES = (".nii", ".nii.gz", ".dcm", ".png", ".jpg", ".jpeg", ".npy", ".npz", "<DICOM by content>",
            "<DICOM series folder>")

# DICOM attributes that describe the acquisition, never the patient: meta is built from this allow-list so
# that no identifier (name, ID, birth date, address, UIDs, dates, free-text descriptions) can leak into it.
SAFE_DICOM_TAGS = (
    "Modality", "BodyPartExamined", "PhotometricInterpretation", "ImageType", "Manufacturer",
    "ManufacturerModelName", "KVP", "MagneticFieldStrength", "SliceThickness", "ViewPosition",
    "BitsStored", "WindowCenter", "WindowWidth", "RescaleType",
)


@dataclass
class ImageData:
    """A decoded image: ``array`` float32 C×H×W×D, ``spacing`` in mm along (H, W, D)."""

    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    modality: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def is_3d(self) -> bool:
        return self.array.shape[-1] > 1


class _ReadError(Exception):
    """A known problem inside a format reader; ``read_image`` turns it into a SampleError."""


def read_image(path: str | Path, sample_id: str | None = None, *, allow_constant: bool = False) -> ImageData:
    """Read any supported image or scan as float32 C×H×W×D.

    Raises :class:`SampleError` for a missing file, an unsupported format, a corrupt or truncated file, a
    zero-size image, NaN/inf values, or a constant image (no signal) unless ``allow_constant``.
    """
    path_s = str(path)
    if "://" in path_s and not path_s.startswith("file://"):
        try:
            with _fetched(path_s) as local:
                return read_image(local, sample_id, allow_constant=allow_constant)
        except SampleError as err:  # name the URL the user gave, not the temporary copy
            raise SampleError(sample_id, path_s, err.reason) from err.__cause__
    p = Path(path_s.removeprefix("file://"))
    if not p.exists():
        raise SampleError(sample_id, path_s, "file not found")
    fmt = detect_format(p)
    if fmt is None:
        raise SampleError(sample_id, path_s, f"unsupported format (suffix {p.suffix or 'none'!r}, no DICOM "
                          f"preamble); readable: {', '.join(SUFFIXES)}")
    if p.is_file() and p.stat().st_size == 0:
        raise SampleError(sample_id, path_s, "file is empty (0 bytes)")
    try:
        img = _READERS[fmt](p)
    except (_ReadError, SliceOrderError) as exc:
        raise SampleError(sample_id, path_s, str(exc)) from None
    except PermissionError as exc:
        raise SampleError(sample_id, path_s, f"cannot read the file ({exc.strerror}): check its permissions"
                          ) from None
    except MemoryError:
        raise
    except Exception as exc:  # every decoder fails differently on damaged bytes; keep the cause chained
        raise SampleError(sample_id, path_s, f"corrupt or truncated {_FORMAT_NAMES[fmt]} file "
                          f"({type(exc).__name__}: {exc})") from exc
    _check_values(img, sample_id, path_s, allow_constant)
    return img


def detect_format(path: Path) -> str | None:
    """``nifti``, ``dicom``, ``dicom_series`` (a folder), ``pil``, ``npy``, ``npz`` or None."""
    if path.is_dir():
        return "dicom_series"
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    by_suffix = {".dcm": "dicom", ".dicom": "dicom", ".ima": "dicom", ".png": "pil", ".jpg": "pil",
                 ".jpeg": "pil", ".npy": "npy", ".npz": "npz"}
    fmt = by_suffix.get(path.suffix.lower())
    if fmt is None and is_dicom_file(path):
        fmt = "dicom"
    return fmt


def is_dicom_file(path: Path) -> bool:
    """True when the file carries the DICOM Part 10 preamble: 128 bytes then ``DICM``."""
    try:
        with path.open("rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def is_series_member(name: str) -> bool:
    """Whether a file in a series folder is a slice: hidden files and the DICOMDIR index are not."""
    return not name.startswith(".") and name.upper() != "DICOMDIR"


def series_files(folder: Path) -> list[Path]:
    """The slice files of a DICOM series folder, sorted by name."""
    return sorted(f for f in folder.iterdir() if f.is_file() and is_series_member(f.name))


def _check_values(img: ImageData, sample_id: str | None, file: str, allow_constant: bool) -> None:
    a = img.array
    if a.size == 0:
        raise SampleError(sample_id, file, f"zero-size image (shape {tuple(a.shape)})")
    lo, hi = float(a.min()), float(a.max())  # NaN propagates through min/max, so two reductions suffice
    if not (np.isfinite(lo) and np.isfinite(hi)):
        n_nan, n_inf = int(np.isnan(a).sum()), int(np.isinf(a).sum())
        raise SampleError(sample_id, file, f"image contains {n_nan} NaN and {n_inf} infinite values")
    if lo == hi and not allow_constant:
        raise SampleError(sample_id, file, f"constant image: every voxel equals {lo:g}, so it carries no "
                          "signal (pass allow_constant=True to accept it)")


def _as_chwd(a: np.ndarray, channels_last: bool) -> np.ndarray:
    """(H, W) / (H, W, D) / (H, W, 3) → float32 C×H×W×D."""
    a = np.asarray(a)
    if channels_last and a.ndim == 3:
        a = np.moveaxis(a, -1, 0)[..., None]
    elif a.ndim == 2:
        a = a[None, :, :, None]
    elif a.ndim == 3:
        a = a[None]
    return np.ascontiguousarray(a, dtype=np.float32)


def _positive(values: Any, default: float = 1.0) -> float:
    try:
        v = float(values)
    except (TypeError, ValueError):
        return default
    return v if np.isfinite(v) and v > 0 else default


# --- NIfTI -------------------------------------------------------------------------------------------------


def _read_nifti(path: Path) -> ImageData:
    import nibabel as nib

    img = nib.load(str(path))
    shape = img.shape
    meta: dict[str, Any] = {"format": "nifti", "source_shape": list(shape)}
    if len(shape) == 4:  # a time series or DWI shells: the model takes one volume, so keep the first
        meta["volumes"] = int(shape[3])
        img = img.slicer[..., 0]
    elif len(shape) not in (2, 3):
        raise _ReadError(f"unsupported NIfTI with {len(shape)} dimensions {tuple(shape)} (expected 2, 3, 4)")
    slice_axis = 2
    if len(shape) >= 3:
        # Where the acquisition's slice axis lands in RAS order (0 for a sagittal stack, 1 for coronal).
        slice_axis = int(nib.io_orientation(img.affine)[2, 0])
        img = nib.as_closest_canonical(img)  # every axis points the same way (R, A, S) for every volume
    # dataobj applies the header's scl_slope/inter; _as_chwd then casts and lays out in a single pass
    data = _numeric(np.asanyarray(img.dataobj), "NIfTI data")
    zooms = [_positive(z) for z in img.header.get_zooms()[:3]] + [1.0, 1.0]
    if len(shape) >= 3:
        # ...but the slice axis stays last: the model's depth is the number of slices (patches are 4 slices
        # deep, depth is bucketed), so a 16-slice sagittal stack must not become 64 "slices" of 16-pixel rows.
        order = [a for a in range(3) if a != slice_axis] + [slice_axis]
        data = np.transpose(data, order) if data.ndim == 3 else data
        zooms = [zooms[a] for a in order] + [1.0, 1.0]
        codes = nib.aff2axcodes(img.affine)
        meta["orientation"] = "".join(codes[a] for a in order)
    return ImageData(_as_chwd(data, channels_last=False), (zooms[0], zooms[1], zooms[2]), None, meta)


# --- DICOM -------------------------------------------------------------------------------------------------


def _dcmread(path: Path):
    import pydicom
    from pydicom import uid

    ds = pydicom.dcmread(str(path), force=True)  # force: legacy files lack the preamble; PixelData is checked
    if "PixelData" not in ds or "Rows" not in ds or "Columns" not in ds:
        raise _ReadError(f"{path.name}: DICOM file has no image (no PixelData/Rows/Columns)")
    if "TransferSyntaxUID" not in ds.file_meta:  # pre-Part-10 files: the encoding read is the one to decode
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = {(True, True): uid.ImplicitVRLittleEndian,
                                          (False, True): uid.ExplicitVRLittleEndian,
                                          (False, False): uid.ExplicitVRBigEndian}[(implicit, little)]
    return ds


def _fg_item(ds: Any, frame: int, seq: str) -> Any:
    """The first item of functional-group sequence ``seq`` for ``frame`` (per-frame, else shared), or None."""
    for groups, idx in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        items = ds.get(groups)
        if items is not None and idx < len(items) and items[idx].get(seq):
            return items[idx].get(seq)[0]
    return None


def _frames(ds: Any) -> np.ndarray:
    """Decoded pixels as float32 (F, H, W, S): rescale slope/intercept (or modality LUT) applied per frame."""
    from pydicom.pixels import apply_color_lut, apply_modality_lut

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    try:
        raw = ds.pixel_array
    except (NotImplementedError, RuntimeError) as exc:
        syntax = ds.file_meta.get("TransferSyntaxUID")
        raise _ReadError(f"cannot decode pixel data (transfer syntax {syntax}): {exc}") from exc
    if photometric == "PALETTE COLOR":
        raw = apply_color_lut(raw, ds)
    samples = 3 if (int(ds.get("SamplesPerPixel", 1)) == 3 or photometric == "PALETTE COLOR") else 1
    raw = raw.reshape(n_frames, int(ds.Rows), int(ds.Columns), samples)
    if samples == 3:  # rescale applies to grey values only; colour is already display RGB
        return raw.astype(np.float32)
    if ds.get("ModalityLUTSequence"):
        return np.asarray(apply_modality_lut(raw, ds), dtype=np.float32)
    out = np.empty(raw.shape, dtype=np.float32)
    for i in range(n_frames):
        src = _fg_item(ds, i, "PixelValueTransformationSequence") or ds
        slope = float(src.get("RescaleSlope") or 1.0)  # absent or empty means the identity
        intercept = float(src.get("RescaleIntercept") or 0.0)
        np.multiply(raw[i], np.float32(slope), out=out[i], casting="unsafe")
        out[i] += np.float32(intercept)
    return out


def _dicom_meta(ds: Any, fmt: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"format": fmt}
    for tag in SAFE_DICOM_TAGS:
        value = ds.get(tag)
        if value is None or value == "":
            continue
        if hasattr(value, "__iter__") and not isinstance(value, str | bytes):
            meta[tag] = [_plain(v) for v in value]
        else:
            meta[tag] = _plain(value)
    return meta


def _plain(v: Any) -> Any:
    for kind in (int, float):
        if isinstance(v, kind):
            return kind(v)
    return str(v)


def _in_plane_spacing(ds: Any) -> tuple[float, float]:
    measures = _fg_item(ds, 0, "PixelMeasuresSequence")
    for src in (measures, ds):
        if src is None:
            continue
        for tag in ("PixelSpacing", "ImagerPixelSpacing"):
            ps = src.get(tag)
            if ps is not None and len(ps) == 2 and _positive(ps[0], 0.0) and _positive(ps[1], 0.0):
                return float(ps[0]), float(ps[1])
    return 1.0, 1.0  # unknown (some CR films write PixelSpacing 0, 0): unit spacing, never a zero


def _slice_thickness(ds: Any) -> float:
    measures = _fg_item(ds, 0, "PixelMeasuresSequence")
    for src in (measures, ds):
        if src is not None:
            for tag in ("SpacingBetweenSlices", "SliceThickness"):
                if src.get(tag) not in (None, ""):
                    return _positive(src.get(tag))
    return 1.0


def _monochrome1(vol: np.ndarray, ds: Any) -> np.ndarray:
    # MONOCHROME1 shows high values dark (many CR/DX films); flip so bright is high for every image
    if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        vol = vol.max() + vol.min() - vol
    return vol


def _read_dicom(path: Path) -> ImageData:
    ds = _dcmread(path)
    frames = _frames(ds)  # (F, H, W, S)
    meta = _dicom_meta(ds, "dicom")
    dz = _slice_thickness(ds)
    if frames.shape[0] > 1:
        meta["frames"] = frames.shape[0]
        positions = []
        for i in range(frames.shape[0]):
            item = _fg_item(ds, i, "PlanePositionSequence")
            positions.append(None if item is None else item.get("ImagePositionPatient"))
        orient = _fg_item(ds, 0, "PlaneOrientationSequence")
        # Frames carry no InstanceNumber or name: without positions they stay in the order stored.
        ordered = order_slices(positions, None if orient is None else orient.get("ImageOrientationPatient"))
        if ordered.how == BY_POSITION:
            frames, dz, meta["slice_order"] = frames[ordered.order], ordered.spacing or dz, ordered.how
    row, col = _in_plane_spacing(ds)
    vol = np.ascontiguousarray(np.transpose(frames, (3, 1, 2, 0)))
    return ImageData(_monochrome1(vol, ds), (row, col, dz), _modality(ds), meta)


def _modality(ds: Any) -> str | None:
    m = ds.get("Modality")
    return str(m).upper() if m else None


def _read_dicom_series(folder: Path) -> ImageData:
    files = series_files(folder)
    if not files:
        raise _ReadError("series folder holds no files")
    if len(files) == 1:
        return _read_dicom(files[0])
    slices = []
    for f in files:
        try:
            ds = _dcmread(f)
        except _ReadError:
            raise
        except Exception as exc:
            raise _ReadError(f"slice {f.name} is not a readable DICOM file ({type(exc).__name__}: {exc})"
                             ) from exc
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise _ReadError(f"slice {f.name} is multi-frame: a series folder holds single-frame slices; "
                             "read the multi-frame file on its own")
        slices.append((f, ds))
    uids = {str(ds.get("SeriesInstanceUID", "")) for _, ds in slices}
    if len(uids) > 1:
        raise _ReadError(f"mixed series: {len(uids)} SeriesInstanceUIDs in one folder; put each series in "
                         "its own folder")
    f0, ds0 = slices[0]
    shape0 = (int(ds0.Rows), int(ds0.Columns), int(ds0.get("SamplesPerPixel", 1)))
    for f, ds in slices[1:]:
        shape = (int(ds.Rows), int(ds.Columns), int(ds.get("SamplesPerPixel", 1)))
        if shape != shape0:
            raise _ReadError(f"mismatched slice size: {f.name} is {shape[0]}×{shape[1]}×{shape[2]} but "
                             f"{f0.name} is {shape0[0]}×{shape0[1]}×{shape0[2]} (rows×cols×samples)")
    orientations = {tuple(np.round(np.asarray(ds.get("ImageOrientationPatient"), float), 4))
                    for _, ds in slices if ds.get("ImageOrientationPatient") is not None}
    if len(orientations) > 1:
        raise _ReadError("slices have different ImageOrientationPatient: not one volume")
    # The same order as the DICOM importer's (radfm.data.dicom_order): by position, InstanceNumber, name.
    ordered = series_order([ds for _, ds in slices], [f.name for f, _ in slices])
    try:
        frames = np.concatenate([_frames(slices[i][1]) for i in ordered.order], axis=0)
    except _ReadError as exc:
        raise _ReadError(f"series slice: {exc}") from exc
    meta = _dicom_meta(ds0, "dicom_series")
    meta.update(slices=len(slices), slice_order=ordered.how)
    row, col = _in_plane_spacing(ds0)
    vol = np.ascontiguousarray(np.transpose(frames, (3, 1, 2, 0)))
    spacing = (row, col, ordered.spacing or _slice_thickness(ds0))
    return ImageData(_monochrome1(vol, ds0), spacing, _modality(ds0), meta)


# --- PNG/JPG, NPY/NPZ --------------------------------------------------------------------------------------


def _read_pil(path: Path) -> ImageData:
    from PIL import Image

    with Image.open(path) as im:
        im.load()  # decode now, so a truncated file fails here and not later in a transform
        mode = im.mode
        if mode in ("1", "L", "I", "F") or mode.startswith("I;16"):
            a = np.asarray(im)
        elif mode == "LA":
            a = np.asarray(im.convert("L"))
        else:  # P, PA, RGB, RGBA, CMYK, YCbCr…: alpha and palettes are resolved to plain RGB
            a = np.asarray(im.convert("RGB"))
    meta: dict[str, Any] = {"format": path.suffix.lower().lstrip("."), "mode": mode}
    if a.ndim == 3 and np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2]):
        a = a[..., 0]  # a grey radiograph saved as RGB: one channel, so it is normalised like other greys
        meta["grey_from_rgb"] = True
    return ImageData(_as_chwd(a, channels_last=True), (1.0, 1.0, 1.0), None, meta)


def _numeric(a: np.ndarray, what: str) -> np.ndarray:
    if a.dtype.kind not in "biuf":
        raise _ReadError(f"{what} has unsupported dtype {a.dtype} (need bool, integer or float)")
    return a


def _array_layout(a: np.ndarray) -> np.ndarray:
    if a.ndim in (2, 3):
        return _as_chwd(a, channels_last=False)
    if a.ndim == 4 and a.shape[0] in (1, 3):
        return np.ascontiguousarray(a, dtype=np.float32)
    raise _ReadError(f"array of shape {tuple(a.shape)}: expected H×W, H×W×D or C×H×W×D with C 1 or 3")


def _read_npy(path: Path) -> ImageData:
    try:
        a = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" not in str(exc):
            raise
        raise _ReadError("array holds Python objects (pickled): save a numeric array instead") from None
    a = _numeric(a, "array")
    return ImageData(_array_layout(a), (1.0, 1.0, 1.0), None, {"format": "npy"})


def _read_npz(path: Path) -> ImageData:
    with np.load(path, allow_pickle=False) as z:
        if not z.files:
            raise _ReadError("npz archive holds no arrays")
        key = "image" if "image" in z.files else z.files[0]
        a = _numeric(z[key], f"array {key!r}")
        spacing = (1.0, 1.0, 1.0)
        if "spacing" in z.files:
            s = [_positive(v) for v in np.ravel(z["spacing"])[:3]] + [1.0, 1.0]
            spacing = (s[0], s[1], s[2])
    return ImageData(_array_layout(a), spacing, None, {"format": "npz", "key": key})


_FORMAT_NAMES = {"nifti": "NIfTI", "dicom": "DICOM", "dicom_series": "DICOM series", "pil": "PNG/JPG",
                 "npy": "NPY", "npz": "NPZ"}
_READERS = {"nifti": _read_nifti, "dicom": _read_dicom, "dicom_series": _read_dicom_series,
            "pil": _read_pil, "npy": _read_npy, "npz": _read_npz}


# --- remote ------------------------------------------------------------------------------------------------


@contextmanager
def _fetched(url: str) -> Iterator[Path]:
    """Download an fsspec URL (a file or a flat series folder) to a temporary folder under RADFM_HOME."""
    import fsspec

    from radfm.paths import home_path

    fs, rpath = fsspec.core.url_to_fs(url)
    rpath = rpath.rstrip("/")
    if not fs.exists(rpath):
        raise SampleError(None, url, "file not found")
    name = PurePosixPath(rpath).name or "image"
    with tempfile.TemporaryDirectory(prefix="fetch-", dir=home_path("tmp")) as tmp:
        local = Path(tmp) / name
        if fs.isdir(rpath):
            local.mkdir()
            for entry in fs.ls(rpath, detail=True):
                if entry["type"] == "file" and is_series_member(PurePosixPath(entry["name"]).name):
                    fs.get_file(entry["name"], str(local / PurePosixPath(entry["name"]).name))
        else:
            fs.get_file(rpath, str(local))
        yield local
