"""One reader interface for radiology images: ``read_image(path) -> ImageData``, chosen by suffix or content.

Formats: NIfTI (``.nii``, ``.nii.gz``), DICOM (one file, multi-frame, or a series folder; a file with no or an
unknown suffix is sniffed for the ``DICM`` preamble, because DICOM files are often named by UID), PNG/JPG (and
the BMP/TIFF the table importer takes), NPY/NPZ, NRRD and MetaImage (``.mha``/``.mhd``, through SimpleITK:
:mod:`radfm.data.readers_sitk`). ``s3://`` (any fsspec URL) is fetched to a temporary folder first. Every bad
input raises :class:`SampleError` naming the sample, the file and the reason.

Every reader reads the header first and checks it against :class:`~radfm.data.limits.ImageLimits` (``data.max_voxels``
/ ``data.max_bytes``) before it decodes a pixel; :func:`probe_image` does only that (plus the cheap truncation
checks of :mod:`radfm.data.headers`), for an importer to look at every file at ingest.

Arrays are float32 ``C×H×W×D``: C = 1 (grey) or 3 (colour), D = 1 for a 2D image. H runs along DICOM rows
(NIfTI's first axis), W along columns (NIfTI's second), D along the slice normal (NIfTI's third).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from radfm.data import headers
from radfm.data.dicom_order import BY_POSITION, SliceOrderError, order_slices, series_order
from radfm.data.errors import SampleError
from radfm.data.headers import is_series_member, series_files  # noqa: F401 (also part of the readers API)
from radfm.data.limits import ImageHeader, ImageLimits, ReadError, check_limits
from radfm.data.readers_sitk import SITK_SUFFIXES
from radfm.data.remote import fetched as _fetched
from radfm.data.remote import is_remote as _remote

_PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SUFFIXES = (".nii", ".nii.gz", ".dcm", *_PIL_SUFFIXES, ".npy", ".npz", *SITK_SUFFIXES, "<DICOM by content>",
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


_ReadError = ReadError  # a known problem inside a format reader; read_image turns it into a SampleError


def _one_line(exc: BaseException) -> str:
    """A decoder's message on one line: some (nibabel, ITK) span several, and an error is one line (DESIGN 10)."""
    return " ".join(str(exc).split())


def _local(path_s: str, sample_id: str | None) -> tuple[Path, str]:
    """The local path and its format, or the SampleError every reader gives for a missing/unknown/empty file."""
    p = Path(path_s.removeprefix("file://"))
    if not p.exists():
        raise SampleError(sample_id, path_s, "file not found")
    fmt = detect_format(p)
    if fmt is None:
        raise SampleError(sample_id, path_s, f"unsupported format (suffix {p.suffix or 'none'!r}, no DICOM "
                          f"preamble); readable: {', '.join(SUFFIXES)}")
    if p.is_file() and p.stat().st_size == 0:
        raise SampleError(sample_id, path_s, "file is empty (0 bytes)")
    return p, fmt


def probe_image(path: str | Path, sample_id: str | None = None, limits: ImageLimits | None = None) -> ImageHeader:
    """Read only the header of an image or scan, check it against ``limits`` (None: the defaults) and return it.

    Cheap (no pixel is decoded), for importers to look at every file at ingest. Raises :class:`SampleError`
    naming the sample and the file for a missing, unsupported, empty, broken, wrong-magic or oversized file, and
    for a truncated one where the header states the data's length (see :mod:`radfm.data.headers`). A remote URL
    is fetched first.
    """
    path_s = str(path)
    if _remote(path_s):
        try:
            with _fetched(path_s) as local:
                return probe_image(local, sample_id, limits)
        except SampleError as err:  # name the URL the user gave, not the temporary copy
            raise SampleError(sample_id, path_s, err.reason) from err.__cause__
    p, fmt = _local(path_s, sample_id)
    try:
        header = _PROBES[fmt](p, limits)
        if header.voxels == 0:
            raise ReadError(f"zero-size image (shape {header.shape})")
        return header
    except ReadError as exc:
        raise SampleError(sample_id, path_s, _one_line(exc)) from None
    except PermissionError as exc:
        raise SampleError(sample_id, path_s, f"cannot read the file ({exc.strerror}): check its permissions"
                          ) from None
    except Exception as exc:  # every header parser fails differently on damaged bytes; keep the cause chained
        raise SampleError(sample_id, path_s, f"corrupt or truncated {_FORMAT_NAMES[fmt]} header "
                          f"({type(exc).__name__}: {_one_line(exc)})") from exc


def read_image(path: str | Path, sample_id: str | None = None, *, allow_constant: bool = False,
               limits: ImageLimits | None = None) -> ImageData:
    """Read any supported image or scan as float32 C×H×W×D.

    Raises :class:`SampleError` for a missing file, an unsupported format, a header over ``limits`` (None: the
    defaults; checked before any pixel is decoded), a corrupt or truncated file, a zero-size image, NaN/inf
    values, or a constant image (no signal) unless ``allow_constant``.
    """
    path_s = str(path)
    if _remote(path_s):
        try:
            with _fetched(path_s) as local:
                return read_image(local, sample_id, allow_constant=allow_constant, limits=limits)
        except SampleError as err:  # name the URL the user gave, not the temporary copy
            raise SampleError(sample_id, path_s, err.reason) from err.__cause__
    p, fmt = _local(path_s, sample_id)
    try:
        img = _READERS[fmt](p, limits)
    except (_ReadError, SliceOrderError) as exc:
        raise SampleError(sample_id, path_s, _one_line(exc)) from None
    except PermissionError as exc:
        raise SampleError(sample_id, path_s, f"cannot read the file ({exc.strerror}): check its permissions"
                          ) from None
    except MemoryError:
        raise
    except Exception as exc:  # every decoder fails differently on damaged bytes; keep the cause chained
        raise SampleError(sample_id, path_s, f"corrupt or truncated {_FORMAT_NAMES[fmt]} file "
                          f"({type(exc).__name__}: {_one_line(exc)})") from exc
    _check_values(img, sample_id, path_s, allow_constant)
    return img


def detect_format(path: Path) -> str | None:
    """``nifti``, ``dicom``, ``dicom_series`` (a folder), ``pil``, ``npy``, ``npz``, ``sitk`` or None."""
    if path.is_dir():
        return "dicom_series"
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    by_suffix = {".dcm": "dicom", ".dicom": "dicom", ".ima": "dicom", ".npy": "npy", ".npz": "npz",
                 **dict.fromkeys(_PIL_SUFFIXES, "pil"), **dict.fromkeys(SITK_SUFFIXES, "sitk")}
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


def _read_nifti(path: Path, limits: ImageLimits | None) -> ImageData:
    import nibabel as nib

    img = nib.load(str(path))  # the header only: the voxels stay on disk until dataobj is read
    check_limits(headers.nifti_header(img), limits)
    return _nifti_volume(img, {"format": "nifti"})


def _nifti_volume(img: Any, meta: dict[str, Any]) -> ImageData:
    """A nibabel image (a NIfTI file, or an ITK image's array and RAS affine) laid out as C×H×W×D."""
    import nibabel as nib

    shape = img.shape
    meta = {**meta, "source_shape": list(shape)}
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
        raw = ds.pixel_array  # reads the deferred PixelData now, after the caller checked the limits
    except (NotImplementedError, RuntimeError) as exc:
        syntax = ds.file_meta.get("TransferSyntaxUID")
        raise _ReadError(f"cannot decode pixel data (transfer syntax {syntax}): {exc}") from exc
    if photometric == "PALETTE COLOR":
        raw = apply_color_lut(raw, ds)
    samples = headers.dicom_samples(ds)
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


def _read_dicom(path: Path, limits: ImageLimits | None) -> ImageData:
    ds = headers.dcmread(path)
    check_limits(headers.dicom_header(ds), limits)
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


def _read_dicom_series(folder: Path, limits: ImageLimits | None) -> ImageData:
    files = series_files(folder)
    if not files:
        raise _ReadError("series folder holds no files")
    if len(files) == 1:
        return _read_dicom(files[0], limits)
    slices = headers.series_datasets(files)  # pixel data still on disk
    f0, ds0 = slices[0]
    check_limits(headers.dicom_header(ds0, len(slices), "dicom_series"), limits)
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


def _read_pil(path: Path, limits: ImageLimits | None) -> ImageData:
    with headers.pil_open(path) as im:
        check_limits(headers.pil_header(im), limits)  # the size is in the header: nothing decoded yet
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
    headers.numeric_dtype(a.dtype, what)
    return a


def _array_layout(a: np.ndarray) -> np.ndarray:
    headers.array_shape(tuple(a.shape))  # refuses a shape no reader lays out, naming it
    if a.ndim == 4:
        return np.ascontiguousarray(a, dtype=np.float32)
    return _as_chwd(a, channels_last=False)


def _read_npy(path: Path, limits: ImageLimits | None) -> ImageData:
    headers.probe_npy(path, limits)  # the header (and the file's length) before np.load allocates
    a = np.load(path, allow_pickle=False)
    a = _numeric(a, "array")
    return ImageData(_array_layout(a), (1.0, 1.0, 1.0), None, {"format": "npy"})


def _read_npz(path: Path, limits: ImageLimits | None) -> ImageData:
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            key, _header = headers.npz_header(zf, limits)
    except zipfile.BadZipFile as exc:
        raise _ReadError(f"not a valid .npz (zip) archive, or truncated ({exc})") from None
    with np.load(path, allow_pickle=False) as z:
        a = _numeric(z[key], f"array {key!r}")
        spacing = (1.0, 1.0, 1.0)
        if "spacing" in z.files and key != "spacing":
            s = [_positive(v) for v in np.ravel(z["spacing"])[:3]] + [1.0, 1.0]
            spacing = (s[0], s[1], s[2])
    return ImageData(_array_layout(a), spacing, None, {"format": "npz", "key": key})


def _read_sitk(path: Path, limits: ImageLimits | None) -> ImageData:
    import nibabel as nib

    from radfm.data.readers_sitk import read_sitk

    arr, affine, colour = read_sitk(path, limits)
    meta = {"format": path.suffix.lower().lstrip(".")}
    if colour:  # (x, y, 3): an RGB picture, spacing from the affine's in-plane columns
        zooms = np.linalg.norm(affine[:3, :2], axis=0)
        return ImageData(_as_chwd(arr, channels_last=True), (float(zooms[0]), float(zooms[1]), 1.0), None,
                         {**meta, "mode": "RGB"})
    # the NIfTI path: RAS axes, slice axis last, spacing from the affine, so an .mha reads as its .nii
    return _nifti_volume(nib.Nifti1Image(np.asanyarray(arr), affine), meta)


def _probe_sitk(path: Path, limits: ImageLimits | None) -> ImageHeader:
    from radfm.data.readers_sitk import probe_sitk

    return probe_sitk(path, limits)


_FORMAT_NAMES = {"nifti": "NIfTI", "dicom": "DICOM", "dicom_series": "DICOM series", "pil": "PNG/JPG",
                 "npy": "NPY", "npz": "NPZ", "sitk": "NRRD/MetaImage"}
_READERS = {"nifti": _read_nifti, "dicom": _read_dicom, "dicom_series": _read_dicom_series,
            "pil": _read_pil, "npy": _read_npy, "npz": _read_npz, "sitk": _read_sitk}
_PROBES = {"nifti": headers.probe_nifti, "dicom": headers.probe_dicom,
           "dicom_series": lambda p, limits: headers.probe_dicom_series(series_files(p), limits), "pil": headers.probe_pil,
           "npy": headers.probe_npy, "npz": headers.probe_npz, "sitk": _probe_sitk}
