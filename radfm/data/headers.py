"""Image headers read without decoding pixels: shape, stored dtype and, where the layout makes it cheap, whether
the file holds the bytes its header claims.

Each ``probe_*`` opens one format the way its reader does (nibabel's header, pydicom with large values deferred,
PIL's lazy open, numpy's ``.npy`` header, the ``.npz`` member's header) and returns an
:class:`~radfm.data.limits.ImageHeader`; the ``*_header`` helpers build one from an object a reader has already
opened, so a reader checks the limits before it decodes without opening the file twice. Problems are
:class:`~radfm.data.limits.ReadError`; :func:`radfm.data.readers.probe_image` names the file.

Truncation is found here where the header states the data's length (uncompressed NIfTI, NPY, NPZ members,
native DICOM pixel data, PNG's chunk chain). Inside a compressed stream (``.nii.gz``, JPEG, compressed DICOM)
only decoding finds it: :func:`radfm.data.readers.read_image` reports it then, still as a SampleError.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path
from typing import IO, Any

import numpy as np

from radfm.data.limits import ImageHeader, ImageLimits, ReadError, check_limits, header_of

# pydicom reads values longer than this only when they are used: the pixel data stays on disk until the limits
# have been checked (and a header probe never reads it at all).
DICOM_DEFER = 4096


# --- arrays (.npy / .npz) ----------------------------------------------------------------------------------


def array_shape(shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """C×H×W×D of an array of ``shape`` as the readers lay it out (H×W, H×W×D or C×H×W×D with C 1 or 3)."""
    if len(shape) == 2:
        return (1, shape[0], shape[1], 1)
    if len(shape) == 3:
        return (1, shape[0], shape[1], shape[2])
    if len(shape) == 4 and shape[0] in (1, 3):
        return (shape[0], shape[1], shape[2], shape[3])
    raise ReadError(f"array of shape {tuple(shape)}: expected H×W, H×W×D or C×H×W×D with C 1 or 3")


def numeric_dtype(dtype: np.dtype, what: str) -> np.dtype:
    """``dtype`` when the readers can use it (bool, integer, float), else a ReadError naming it."""
    if dtype.hasobject:
        raise ReadError(f"{what} holds Python objects (pickled): save a numeric array instead")
    if dtype.kind not in "biuf":
        raise ReadError(f"{what} has unsupported dtype {dtype} (need bool, integer or float)")
    return dtype


def _npy_fields(fp: IO[bytes], what: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from the ``.npy`` header at the start of ``fp``, which is left at the data."""
    try:
        version = np.lib.format.read_magic(fp)
        # 3.0 differs from 2.0 only in the header's text encoding (UTF-8), which numeric dtypes never need
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _fortran, dtype = read(fp)
    except ValueError as exc:
        raise ReadError(f"not a valid .npy header for {what} (wrong magic or broken header: {exc})") from None
    return tuple(shape), numeric_dtype(dtype, what)


def npy_header(fp: IO[bytes], what: str, fmt: str = "npy") -> tuple[ImageHeader, int]:
    """The header of the ``.npy`` stream ``fp`` (at its start) and the number of data bytes it claims."""
    shape, dtype = _npy_fields(fp, what)
    header = header_of(fmt, array_shape(tuple(shape)), dtype)
    return header, int(np.prod(shape, dtype=object)) * dtype.itemsize


def probe_npy(path: Path, limits: ImageLimits | None = None) -> ImageHeader:
    with path.open("rb") as f:
        header, nbytes = npy_header(f, "array")
        data_at = f.tell()
    check_limits(header, limits)  # before the length: an oversized claim is the clearer reason
    size = path.stat().st_size
    if size < data_at + nbytes:
        raise ReadError(f"truncated: the header claims {nbytes:,} bytes of data, the file holds "
                        f"{max(size - data_at, 0):,}")
    return header


def npz_key(names: list[str]) -> str:
    """The member an ``.npz`` image is read from: ``image`` if present, else the first array."""
    return "image" if "image" in names else names[0]


def _npz_spacing(zf: zipfile.ZipFile) -> None:
    """Refuse a ``spacing`` member that is not a handful of numbers (it is read whole, so it is checked too)."""
    with zf.open("spacing.npy") as f:
        shape, _dtype = _npy_fields(f, "npz member 'spacing'")
    n = int(np.prod(shape, dtype=object))
    if n > 16:
        raise ReadError(f"npz member 'spacing' holds {n:,} values: expected the voxel size along (H, W, D)")


def npz_header(zf: zipfile.ZipFile, limits: ImageLimits | None = None) -> tuple[str, ImageHeader]:
    """The image member's key and header, checked against ``limits`` (``spacing`` checked too); nothing
    decoded."""
    names = [n.removesuffix(".npy") for n in zf.namelist() if n.endswith(".npy")]
    if not names:
        raise ReadError("npz archive holds no arrays")
    key = npz_key(names)
    info = zf.getinfo(f"{key}.npy")
    with zf.open(info) as f:
        header, nbytes = npy_header(f, f"array {key!r}", "npz")
        data_at = f.tell()
    check_limits(header, limits)
    if info.file_size < data_at + nbytes:
        raise ReadError(f"truncated: npz member {key!r} claims {nbytes:,} bytes of data, it holds "
                        f"{max(info.file_size - data_at, 0):,}")
    if "spacing" in names and key != "spacing":
        _npz_spacing(zf)
    return key, header


def probe_npz(path: Path, limits: ImageLimits | None = None) -> ImageHeader:
    try:
        with zipfile.ZipFile(path) as zf:
            return npz_header(zf, limits)[1]
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise ReadError(f"not a valid .npz (zip) archive, or truncated ({exc})") from None


# --- NIfTI -------------------------------------------------------------------------------------------------


def oriented_shape(shape: tuple[int, int, int], affine: np.ndarray) -> tuple[int, int, int]:
    """H, W, D of a volume of index ``shape`` once the readers lay it out: RAS axes (nibabel's closest
    canonical), then the axis the file's slices stack along (its third) moved last, so D is its slice count."""
    import nibabel as nib

    ornt = nib.io_orientation(affine)
    canonical = [0, 0, 0]
    for axis in range(3):
        canonical[int(ornt[axis, 0])] = int(shape[axis])
    slice_axis = int(ornt[2, 0])
    order = [a for a in range(3) if a != slice_axis] + [slice_axis]
    return canonical[order[0]], canonical[order[1]], canonical[order[2]]


def nifti_header(img: Any) -> ImageHeader:
    """The header of a nibabel image as :func:`radfm.data.readers.read_image` lays it out: the first volume of a
    4D file, in :func:`oriented_shape`'s layout."""
    shape = tuple(int(s) for s in img.shape)
    if len(shape) not in (2, 3, 4):
        raise ReadError(f"unsupported NIfTI with {len(shape)} dimensions {shape} (expected 2, 3, 4)")
    dtype = img.get_data_dtype()
    if len(shape) == 2:
        return header_of("nifti", (1, shape[0], shape[1], 1), dtype)
    return header_of("nifti", (1, *oriented_shape(shape[:3], img.affine)), dtype)


def probe_nifti(path: Path, limits: ImageLimits | None = None) -> ImageHeader:
    import nibabel as nib

    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises several kinds on a damaged header; none is a known bad value
        raise ReadError(f"not a readable NIfTI header, or truncated ({type(exc).__name__}: {exc})") from None
    header = check_limits(nifti_header(img), limits)
    if not path.name.lower().endswith(".gz"):
        offset = int(img.dataobj.offset)
        need = offset + int(np.prod(img.shape, dtype=object)) * img.get_data_dtype().itemsize
        size = path.stat().st_size
        if size < need:
            raise ReadError(f"truncated: the header claims {need - offset:,} bytes of voxel data, the file holds "
                            f"{max(size - offset, 0):,}")
    return header


# --- DICOM -------------------------------------------------------------------------------------------------


def is_series_member(name: str) -> bool:
    """Whether a file in a series folder is a slice: hidden files and the DICOMDIR index are not."""
    return not name.startswith(".") and name.upper() != "DICOMDIR"


def series_files(folder: Path) -> list[Path]:
    """The slice files of a DICOM series folder, sorted by name."""
    return sorted(f for f in folder.iterdir() if f.is_file() and is_series_member(f.name))


def dcmread(path: Path) -> Any:
    """A DICOM dataset with its pixel data still on disk (read when used), checked to hold an image."""
    import pydicom
    from pydicom import uid

    # force: legacy files lack the preamble (PixelData/Rows/Columns are checked instead)
    ds = pydicom.dcmread(str(path), force=True, defer_size=DICOM_DEFER)
    if "PixelData" not in ds or "Rows" not in ds or "Columns" not in ds:
        raise ReadError(f"{path.name}: DICOM file has no image (no PixelData/Rows/Columns)")
    if "TransferSyntaxUID" not in ds.file_meta:  # pre-Part-10 files: the encoding read is the one to decode
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = {(True, True): uid.ImplicitVRLittleEndian,
                                          (False, True): uid.ExplicitVRLittleEndian,
                                          (False, False): uid.ExplicitVRBigEndian}[(implicit, little)]
    return ds


def _dicom_dtype(ds: Any) -> np.dtype:
    bits = int(ds.get("BitsAllocated", 16) or 16)
    size = 1 if bits <= 8 else 2 if bits <= 16 else 4 if bits <= 32 else 8
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    return np.dtype(f"{'i' if signed else 'u'}{size}")


def dicom_samples(ds: Any) -> int:
    """Channels of the decoded image: a palette is looked up to RGB."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    return 3 if (int(ds.get("SamplesPerPixel", 1) or 1) == 3 or photometric == "PALETTE COLOR") else 1


def dicom_header(ds: Any, slices: int = 1, fmt: str = "dicom") -> ImageHeader:
    """C×H×W×D of a DICOM file (D its frames) or of a series of ``slices`` such files."""
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    return header_of(fmt, (dicom_samples(ds), int(ds.Rows), int(ds.Columns), frames * slices), _dicom_dtype(ds))


def _check_pixel_length(ds: Any, path: Path) -> None:
    """Native (uncompressed) pixel data states its length: a file shorter than that is truncated."""
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        return  # encapsulated fragments: only decoding finds a cut inside them
    el = ds.get_item("PixelData", keep_deferred=True)
    length, at = getattr(el, "length", None), getattr(el, "value_tell", None)
    if length is None or at is None or length == 0xFFFFFFFF:
        return
    held = path.stat().st_size - at
    if held < length:
        raise ReadError(f"{path.name}: truncated: PixelData claims {length:,} bytes, the file holds {max(held, 0):,}")


def probe_dicom(path: Path, limits: ImageLimits | None = None) -> ImageHeader:
    ds = dcmread(path)
    header = check_limits(dicom_header(ds), limits)
    _check_pixel_length(ds, path)
    return header


def series_datasets(files: list[Path]) -> list[tuple[Path, Any]]:
    """The slices of a series folder as (file, dataset), pixel data deferred, checked to form one volume:
    each a single-frame DICOM image, one SeriesInstanceUID, one size, one orientation."""
    slices = []
    for f in files:
        try:
            ds = dcmread(f)
        except ReadError:
            raise
        except Exception as exc:
            raise ReadError(f"slice {f.name} is not a readable DICOM file ({type(exc).__name__}: {exc})") from exc
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise ReadError(f"slice {f.name} is multi-frame: a series folder holds single-frame slices; "
                            "read the multi-frame file on its own")
        slices.append((f, ds))
    uids = {str(ds.get("SeriesInstanceUID", "")) for _, ds in slices}
    if len(uids) > 1:
        raise ReadError(f"mixed series: {len(uids)} SeriesInstanceUIDs in one folder; put each series in "
                        "its own folder")
    f0, ds0 = slices[0]
    shape0 = (int(ds0.Rows), int(ds0.Columns), int(ds0.get("SamplesPerPixel", 1)))
    for f, ds in slices[1:]:
        shape = (int(ds.Rows), int(ds.Columns), int(ds.get("SamplesPerPixel", 1)))
        if shape != shape0:
            raise ReadError(f"mismatched slice size: {f.name} is {shape[0]}×{shape[1]}×{shape[2]} but "
                            f"{f0.name} is {shape0[0]}×{shape0[1]}×{shape0[2]} (rows×cols×samples)")
    orientations = {tuple(np.round(np.asarray(ds.get("ImageOrientationPatient"), float), 4))
                    for _, ds in slices if ds.get("ImageOrientationPatient") is not None}
    if len(orientations) > 1:
        raise ReadError("slices have different ImageOrientationPatient: not one volume")
    return slices


def probe_dicom_series(files: list[Path], limits: ImageLimits | None = None) -> ImageHeader:
    if not files:
        raise ReadError("series folder holds no files")
    if len(files) == 1:
        return probe_dicom(files[0], limits)
    slices = series_datasets(files)
    header = check_limits(dicom_header(slices[0][1], len(slices), "dicom_series"), limits)
    for f, ds in slices:
        _check_pixel_length(ds, f)
    return header


# --- PNG/JPG (PIL) -----------------------------------------------------------------------------------------


def pil_open(path: Path) -> Any:
    """``Image.open`` (lazy: the header only) with PIL's own refusals as ReadErrors naming what they mean."""
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(path)
    except Image.DecompressionBombError as exc:
        # PIL's guard (Image.MAX_IMAGE_PIXELS × 2) fires at open, before radfm's own limits can look
        raise ReadError(f"PIL's decompression-bomb guard refused it: {exc}") from None
    except UnidentifiedImageError:
        raise ReadError(f"not a {path.suffix.lstrip('.').upper() or 'PIL'} image PIL can identify "
                        "(wrong magic or damaged header)") from None


def pil_header(im: Any) -> ImageHeader:
    """C×H×W×1 of a lazily opened PIL image, in the dtype the reader converts it to."""
    mode = im.mode
    width, height = im.size
    if mode == "1":
        channels, dtype = 1, np.dtype(bool)
    elif mode in ("L", "LA"):
        channels, dtype = 1, np.dtype(np.uint8)
    elif mode.startswith("I;16"):
        channels, dtype = 1, np.dtype(np.uint16)
    elif mode == "I":
        channels, dtype = 1, np.dtype(np.int32)
    elif mode == "F":
        channels, dtype = 1, np.dtype(np.float32)
    else:  # palettes, alpha, CMYK…: converted to RGB
        channels, dtype = 3, np.dtype(np.uint8)
    return header_of("pil", (channels, height, width, 1), dtype)


def probe_pil(path: Path, limits: ImageLimits | None = None) -> ImageHeader:
    im = pil_open(path)
    try:
        header = check_limits(pil_header(im), limits)
        if im.format == "PNG":
            # walks the chunk chain and checks each CRC without inflating: a cut or damaged PNG fails here
            try:
                im.verify()
            except Exception as exc:
                raise ReadError(f"corrupt or truncated PNG ({type(exc).__name__}: {exc})") from None
    finally:
        im.close()
    return header
