"""Fuzz (issue 25): random table rows and random image bytes through ingest and validation.

Properties, every example:

- the image readers (:func:`probe_image`, :func:`read_image`) raise nothing but :class:`SampleError` on any
  bytes, and when both accept a file they agree on its size (the probe is what the limits are checked on);
- ``ingest_table`` raises nothing but a :class:`SampleError` (raise mode) or the table importer's one-line
  table-level ``ValueError`` (no rows, not a valid table, not UTF-8, rows longer than the header);
- quarantine mode: rows in = rows written + quarantined, the manifest and the quarantine report hold exactly
  those, each quarantined row is named by its own row/line of the table, and only files from inside the image
  root (byte for byte) are placed under the output;
- raise mode: the first bad row raises, the same error quarantine mode recorded first (the sample, the file and
  the row); no bad row: the same samples as quarantine mode;
- every written row's images are read with :func:`read_image` (only ``SampleError`` allowed), and
  ``radfm validate`` (:func:`radfm.validation.run_cli`) on the written data root never crashes, counts every row
  and names every image the reader refuses.

Images start as real encoded files (PIL PNG/JPEG/BMP/TIFF, nibabel NIfTI of rank 1-5 with NaN/inf, NPY/NPZ of
any dtype and rank, pydicom DICOM, MetaImage/NRRD text headers) and are mutated: truncated, bytes flipped, magic
replaced, header dimensions patched to huge/zero/negative values, header floats set to NaN/inf, garbage
appended; plus pure random bytes and empty files under image suffixes, DICOM series folders and links.

The bugs it found (listed at the end, each with its minimal example) are fixed and kept as regression cases; the
strategies draw those inputs too. Examples are derandomized, so CI repeats them.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gzip
import io
import json
import os
import re
import struct
import tempfile
import zlib
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from radfm.data.errors import SampleError
from radfm.data.importers import ingest_table
from radfm.data.manifest import read_manifest
from radfm.data.readers import probe_image, read_image

INCLUDE_KNOWN_BUGS = True  # the six cases at the end were fixed

# Fuzzed files make the decoders warn (pydicom, PIL, nibabel); what is tested is what they raise.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning")

FUZZ = settings(deadline=None, derandomize=True, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])

# The table importer's table-level refusals (radfm/data/importers/table.py): one line naming the table.
TABLE_ERRORS = re.compile(r"table .+: (no rows|not a valid table|not UTF-8 text|rows have more fields than the "
                          r"header)")

# ----------------------------------------------------------------------------------------------- images

_PIL = {"png": ("PNG", ("L", "RGB", "RGBA", "LA", "P", "1", "I;16")), "jpg": ("JPEG", ("L", "RGB")),
        "bmp": ("BMP", ("L", "RGB", "P", "1")), "tif": ("TIFF", ("L", "RGB", "F", "I;16", "1"))}
_BAD = (np.nan, np.inf, -np.inf)
SUFFIXES = ("png", "jpg", "jpeg", "bmp", "tif", "tiff", "nii", "nii.gz", "npy", "npz", "dcm", "mha", "nrrd")


def _grey(draw: Any, rng: np.random.Generator, shape: tuple[int, ...], dtype: str = "uint8") -> np.ndarray:
    """Random values (or a constant image) of ``shape``; float arrays may get a NaN/inf."""
    if draw(st.booleans()):
        a = rng.integers(0, 255, shape).astype(dtype)
    else:
        a = np.full(shape, 7, dtype=dtype)
    if a.dtype.kind == "f" and a.size and draw(st.booleans()):
        a.flat[draw(st.integers(0, a.size - 1))] = draw(st.sampled_from(_BAD))
    return a


def _pil(draw: Any, rng: np.random.Generator, fmt: str) -> bytes:
    from PIL import Image

    name, modes = _PIL[fmt]
    h, w, mode = draw(st.integers(1, 9)), draw(st.integers(1, 9)), draw(st.sampled_from(modes))
    if mode == "F":
        im = Image.fromarray(_grey(draw, rng, (h, w), "float32"))
    elif mode == "I;16":
        im = Image.fromarray(_grey(draw, rng, (h, w), "uint16") * 257)
    elif mode in ("RGB", "RGBA"):
        im = Image.fromarray(_grey(draw, rng, (h, w, len(mode))))
    else:
        im = Image.fromarray(_grey(draw, rng, (h, w))).convert(mode)
    buf = io.BytesIO()
    im.save(buf, format=name)
    return buf.getvalue()


_AFFINES = (np.eye(4), np.diag([0.5, 2.0, 3.0, 1.0]), np.array([[0, 0, 1, 0], [-1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1.0]]),
            np.array([[0.7, -0.7, 0, 0], [0.7, 0.7, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]]))


def _nifti(draw: Any, rng: np.random.Generator, gz: bool) -> bytes:
    import nibabel as nib

    rank = draw(_RANKS)
    shape = tuple(draw(st.integers(1, 4)) for _ in range(rank))
    data = _grey(draw, rng, shape, draw(st.sampled_from(["int16", "uint8", "float32", "float64"])))
    cls = draw(st.sampled_from([nib.Nifti1Image, nib.Nifti2Image]))
    raw = cls(data, draw(st.sampled_from(_AFFINES))).to_bytes()
    return gzip.compress(raw, mtime=0) if gz else raw


def _mostly(good: Any, bad: Any) -> Any:
    """Three draws in four from ``good`` (what the readers take), else from ``bad``."""
    return st.sampled_from((True, True, True, False)).flatmap(lambda ok: good if ok else bad)


_RANKS = _mostly(st.sampled_from([2, 3, 4]), st.sampled_from([1, 5]))
_NPY_DTYPES = _mostly(st.sampled_from(["uint8", "float32", "int16", ">f8", "bool", "int64", "float16"]),
                      st.sampled_from(["complex64", "object", "<U3", "S2", "V4", "datetime64[s]", "u1,f4"]))


def _array(draw: Any, rng: np.random.Generator) -> np.ndarray:
    rank = draw(_mostly(st.sampled_from([2, 3, 4]), st.sampled_from([0, 1, 5])))
    shape = tuple(draw(_mostly(st.sampled_from([3, 1, 2, 4]), st.just(0)) if rank < 5 else st.just(1))
                  for _ in range(rank))
    dtype = np.dtype(draw(_NPY_DTYPES))
    if dtype.kind in "biuf":
        return _grey(draw, rng, shape, dtype.str)
    if dtype.hasobject:
        a = np.empty(shape, dtype=object)
        a[...] = 3
        return a
    return np.zeros(shape, dtype=dtype)


def _npy(draw: Any, rng: np.random.Generator) -> bytes:
    buf = io.BytesIO()
    np.save(buf, _array(draw, rng), allow_pickle=True)
    return buf.getvalue()


def _npz(draw: Any, rng: np.random.Generator) -> bytes:
    keys = draw(st.lists(st.sampled_from(["image", "arr_0", "x"]), min_size=draw(st.sampled_from([1, 1, 0])),
                         max_size=2, unique=True))
    members = {k: _array(draw, rng) for k in keys}
    if draw(st.booleans()):
        members["spacing"] = draw(st.sampled_from([np.array([1.0, 1.0, 2.5]), np.zeros(3), np.full(3, np.nan),
                                                   np.arange(100.0), np.array("x"), np.array([[1, 2], [3, 4]])]))
    buf = io.BytesIO()
    (np.savez_compressed if draw(st.booleans()) else np.savez)(buf, **members)
    return buf.getvalue()


def _dicom(draw: Any, rng: np.random.Generator) -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = "1.2.3.4.5"
    meta.TransferSyntaxUID = draw(st.sampled_from([ExplicitVRLittleEndian, ImplicitVRLittleEndian]))
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.SeriesInstanceUID = meta.MediaStorageSOPClassUID, "1.2.3.4.5", "1.2.3"
    ds.Modality = "CT"
    rows, cols, frames = draw(st.integers(1, 6)), draw(st.integers(1, 6)), draw(st.integers(1, 3))
    samples = draw(st.sampled_from([1, 3]))
    bits = draw(st.sampled_from([8, 16]))
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, cols, samples
    ds.PhotometricInterpretation = "RGB" if samples == 3 else draw(st.sampled_from(
        ["MONOCHROME2", "MONOCHROME1", "PALETTE COLOR", "YBR_FULL"]))
    if samples == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    ds.PixelRepresentation = draw(st.sampled_from([0, 1]))
    if frames > 1:
        ds.NumberOfFrames = frames
    if draw(st.booleans()):
        ds.RescaleSlope, ds.RescaleIntercept = draw(st.sampled_from(["1", "0.5", "0", "-2", "1e30"])), "-1024"
    if draw(st.booleans()):
        ds.PixelSpacing = draw(st.sampled_from([[0.5, 0.5], [0, 0], [1e-9, 1e9]]))
        ds.ImagePositionPatient = [0, 0, draw(st.integers(-3, 3))]
        ds.ImageOrientationPatient = draw(st.sampled_from([[1, 0, 0, 0, 1, 0], [0, 0, 0, 0, 0, 0]]))
    n = rows * cols * samples * frames * bits // 8
    pixels = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    pixels = pixels[: draw(st.sampled_from([n, n // 2, 0]))] + b"\x00" * draw(st.sampled_from([0, 0, 8]))
    ds.PixelData = pixels + b"\x00" * (len(pixels) % 2)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


_ITK_TYPES = (("MET_UCHAR", "uchar", "u1"), ("MET_SHORT", "short", "<i2"), ("MET_FLOAT", "float", "<f4"),
              ("MET_DOUBLE", "double", "<f8"))


def _itk(draw: Any, rng: np.random.Generator, fmt: str) -> bytes:
    """MetaImage (``.mha``, data inline or in a named file) or NRRD (raw or gzip) written as their text headers."""
    rank = draw(_RANKS)
    dims = [draw(st.integers(1, 4)) for _ in range(rank)]
    met, nrrd, dtype = draw(st.sampled_from(_ITK_TYPES))
    data = _grey(draw, rng, tuple(reversed(dims)), dtype).tobytes()
    if fmt == "mha":
        channels = draw(_mostly(st.just(""), st.just("ElementNumberOfChannels = 3\n")))
        data *= 3 if channels else 1
        where = draw(_mostly(st.just("LOCAL"), st.sampled_from(["x.raw", "/etc/passwd", "../x.raw"])))
        return (f"ObjectType = Image\nNDims = {rank}\nDimSize = {' '.join(map(str, dims))}\n{channels}"
                f"ElementType = {met}\nElementSpacing = {' '.join(['1'] * rank)}\nElementDataFile = {where}\n"
                ).encode() + data
    encoding = draw(st.sampled_from(["raw", "gzip"]))
    header = (f"NRRD0004\ntype: {nrrd}\ndimension: {rank}\nsizes: {' '.join(map(str, dims))}\n"
              f"encoding: {encoding}\nendian: little\n\n").encode()
    return header + (gzip.compress(data, mtime=0) if encoding == "gzip" else data)


def _encode(draw: Any, fmt: str, rng: np.random.Generator) -> bytes:
    if fmt in _PIL:
        return _pil(draw, rng, fmt)
    if fmt in ("nii", "nii.gz"):
        return _nifti(draw, rng, fmt == "nii.gz")
    if fmt in ("mha", "nrrd"):
        return _itk(draw, rng, fmt)
    return {"npy": _npy, "npz": _npz, "dcm": _dicom}[fmt](draw, rng)


_DIMS16 = st.sampled_from([0, 1, 7, 32767, -1, -32768])
_HUGE = st.sampled_from([0, 1, 65535, 2**31 - 1, 2**32 + 7, 10**12, 10**30])
_FLOATS = st.sampled_from([np.nan, np.inf, -np.inf, 0.0, -1.0, 1e30, 1e-30])


def _nifti_dims(draw: Any, data: bytes, fields: bool) -> bytes:
    gz = data[:2] == b"\x1f\x8b"
    raw = bytearray(gzip.decompress(data) if gz else data)
    if struct.unpack_from("<i", raw, 0)[0] == 540:  # NIfTI-2: int64 dims at 16, float64 fields
        if fields:
            for off in draw(st.lists(st.sampled_from([104, 112, 168, 176, 184, 200, 264, 280, 392]), min_size=1, max_size=3)):
                struct.pack_into("<d", raw, off, draw(_FLOATS))
        else:
            struct.pack_into("<8q", raw, 16, draw(st.sampled_from([-1, 0, 3, 4, 7, 9])), *[draw(_HUGE) % 2**62 for _ in range(7)])
    elif fields:  # pixdim, vox_offset, scl_slope/inter, quatern, srow
        for off in draw(st.lists(st.sampled_from([76, 80, 84, 108, 112, 116, 256, 268, 280, 296, 312]), min_size=1, max_size=3)):
            struct.pack_into("<f", raw, off, draw(_FLOATS))
    else:
        struct.pack_into("<8h", raw, 40, draw(st.sampled_from([-1, 0, 1, 2, 3, 4, 5, 7, 8, 100])),
                         *[draw(_DIMS16) for _ in range(7)])
    return gzip.compress(bytes(raw), mtime=0) if gz else bytes(raw)


def _npy_header(shape: tuple[int, ...], descr: str, pad: int = 0) -> bytes:
    text = repr({"descr": descr, "fortran_order": False, "shape": shape})
    text += " " * (pad + (-(len(text) + 11) % 64)) + "\n"
    if len(text) < 65536:
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1")
    return b"\x93NUMPY\x02\x00" + struct.pack("<I", len(text)) + text.encode("latin1")


def _patch_dims(draw: Any, fmt: str, data: bytes) -> bytes:
    """Header dimensions (or other header fields) set to huge, zero or negative values."""
    if fmt in ("nii", "nii.gz"):
        return _nifti_dims(draw, data, fields=draw(st.booleans()))
    if fmt == "npy":
        shape = tuple(draw(_HUGE) * draw(st.sampled_from([1, 1, -1])) for _ in range(draw(st.integers(0, 5))))
        pad = draw(st.sampled_from([0, 0, 20000, 70000]))  # a header too large for numpy's safety limit
        return _npy_header(shape, draw(st.sampled_from(["<f4", "|u1", "|O", "<c8"])), pad) + data[-16:]
    if fmt == "png" and data[12:16] == b"IHDR":
        out = bytearray(data)
        struct.pack_into(">II", out, 16, draw(_HUGE) % 2**32, draw(_HUGE) % 2**32)
        if draw(st.booleans()):  # a valid CRC, so only the size is wrong
            struct.pack_into(">I", out, 29, zlib.crc32(bytes(out[12:29])))
        return bytes(out)
    if fmt in ("jpg", "jpeg") and (at := data.find(b"\xff\xc0")) > 0:
        out = bytearray(data)
        struct.pack_into(">HH", out, at + 5, draw(_HUGE) % 2**16, draw(_HUGE) % 2**16)
        return bytes(out)
    if fmt == "dcm":
        out = bytearray(data)
        for tag in (b"\x28\x00\x10\x00", b"\x28\x00\x11\x00", b"\x28\x00\x08\x00", b"\x28\x00\x00\x01"):
            at = out.find(tag)  # Rows, Columns, NumberOfFrames, BitsAllocated (explicit or implicit VR)
            if at > 0 and draw(st.booleans()):  # the value follows the tag and its VR/length (8 bytes)
                out[at + 8:at + 10] = struct.pack("<H", draw(_HUGE) % 2**16)
        return bytes(out)
    if fmt in ("mha", "nrrd"):
        text = data.decode("latin1")
        giant = " ".join(str(draw(_HUGE) * draw(st.sampled_from([1, -1]))) for _ in range(draw(st.integers(1, 4))))
        text = re.sub(r"(DimSize = |sizes: )[^\n]*", lambda m: m.group(1) + giant, text, count=1)
        return text.encode("latin1")
    return data


@st.composite
def image_bytes(draw: Any, clean: bool = False) -> tuple[str, bytes]:
    """(suffix, bytes): a real encoded image, maybe mutated; or random bytes; or nothing. ``clean``: mostly
    unmutated encoded images (so that rows get written)."""
    source = "encoded" if clean else draw(st.sampled_from(["encoded", "encoded", "encoded", "random", "empty"]))
    if source == "random":
        return draw(st.sampled_from(SUFFIXES)), draw(st.binary(max_size=400))
    if source == "empty":
        return draw(st.sampled_from(SUFFIXES)), b""
    fmt = draw(st.sampled_from(("png", "jpg", "bmp", "tif", "nii", "nii.gz", "npy", "npz", "dcm", "mha", "nrrd")))
    data = _encode(draw, fmt, np.random.default_rng(draw(st.integers(0, 2**16))))
    how = draw(_mostly(st.just("none"), st.sampled_from(["dims", "dims", "truncate", "flip", "magic", "append"])))
    if clean and draw(st.integers(0, 3)):
        how = "none"
    if how == "dims" or draw(st.integers(0, 7)) == 0:
        data = _patch_dims(draw, fmt, data)
    if how == "truncate" and data:
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif how == "flip" and data:
        out = bytearray(data)
        for at, x in draw(st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(1, 255)), min_size=1, max_size=4)):
            out[at] ^= x
        data = bytes(out)
    elif how == "magic":
        n = draw(st.integers(1, 8))
        data = draw(st.binary(min_size=n, max_size=n)) + data[n:]
    elif how == "append":
        data += draw(st.binary(min_size=1, max_size=64))
    return fmt, data


def _probe_and_read(path: Path) -> tuple[Any, Any]:
    """probe_image and read_image (constant images allowed) of ``path``: each result, or the SampleError."""
    out: list[Any] = []
    for fn in (lambda: probe_image(path, "s1"), lambda: read_image(path, "s1", allow_constant=True)):
        try:
            out.append(fn())
        except SampleError as err:
            assert err.sample_id == "s1" and err.file == str(path) and err.reason, str(err)
            assert "\n" not in str(err), f"a SampleError of several lines: {err!r}"
            out.append(err)
    return out[0], out[1]


@settings(FUZZ, max_examples=400)
@given(image_bytes())
def test_readers_raise_only_sample_errors(tmp_path: Path, image: tuple[str, bytes]) -> None:
    suffix, data = image
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    path = folder / f"img.{suffix}"
    path.write_bytes(data)
    header, img = _probe_and_read(path)
    event(f"{suffix}: probe {'refused' if isinstance(header, SampleError) else 'ok'}, "
          f"read {'refused' if isinstance(img, SampleError) else 'ok'}")
    if not isinstance(header, SampleError) and not isinstance(img, SampleError):
        shape = tuple(img.array.shape)
        # the limits are checked on the probe's header: it must not claim less than the reader allocates
        assert shape[1:] == tuple(header.shape[1:]) and shape[0] <= header.shape[0], (header, shape)


# ----------------------------------------------------------------------------------------------- tables

_TEXT = st.one_of(
    st.sampled_from(["", " ", "Is there a nodule?", "Yes.", "No", "yes", "no", "NA", "null", "nan", "\n", '"', "''",
                     "a,b", "x;y", "\t", "a\r\nb", "[1, 2]", "[", "[]", '["yes", "no"]', "ünïcødé 肺 🫁", "\\N",
                     "#comment", "=1+1", "x" * 3000, "\u2028\u0085", "\x00"]),
    st.text(st.characters(exclude_categories=("Cs",)), max_size=30),
)
_IDS = st.one_of(st.sampled_from(["", "r1", "r1", " r1 ", "a/b", "../x", "/etc/passwd", "C:\\x", "t-000001",
                                  "t-000002", "肺-1", "x" * 400, "id\nnewline", "\x00"]),
                 st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=20))
_SPLITS = st.sampled_from(["", "train", "val", "test", "valid", "Validation", "TRAIN", " dev ", "holdout", "tést",
                           "1"])
_TASKS = st.sampled_from(["", "vqa", "report", "diagnosis", "modality", "rationale", "VQA", "segmentation", "✓"])
_KINDS = st.sampled_from(["", "2d", "3d", "2D", " 3d ", "4d", "video"])
_POSITIONS = st.sampled_from(["", "start", "end", "0", "3", "10000", "-1", "abc", "1.5", "1e3", " 2 ", "٣"]
                             + (["²", "9" * 5000] if INCLUDE_KNOWN_BUGS else []))
_LISTS = st.one_of(_TEXT, st.sampled_from(["yes;no", "Yes.;No", "[\"Yes.\"]", "[1, 2]", "[{}]", "[null]", ";;",
                                           '{"a": 1}'] + (["[" * 50000] if INCLUDE_KNOWN_BUGS else [])))
# Paths a row may name besides the files made: missing, escaping, absolute, the root, odd spellings.
_SPECIAL_REFS = ("missing.png", "sub/missing.nii.gz", "../outside/secret.png", "<ABS_OUT>", "<ABS_IN>", ".", "",
                 " ", "./", "sub/../f0.png", "./f0.png", "f0.png/", "F0.PNG", "~/x.png", "s3://bucket/x.png",
                 "file:///etc/passwd", "C:\\x.png", "a" * 300 + ".png", "a\x00.png", "sub", "link_in.png",
                 "link_out.png", "dangling.png", "series", "series/", "empty_dir", "..", "/")


def _sound_header_bad_pixels() -> dict[str, bytes]:
    """Files the header probe passes and the reader refuses: NaN voxels, a stream cut inside its compression."""
    import nibabel as nib
    from PIL import Image

    vol = np.arange(64, dtype=np.float32).reshape(4, 4, 4)
    vol[1, 2, 3] = np.nan
    nan_nii = gzip.compress(nib.Nifti1Image(vol, np.eye(4)).to_bytes(), mtime=0)
    noise = np.random.default_rng(0).integers(0, 4000, (24, 24, 24)).astype(np.int16)
    whole = gzip.compress(nib.Nifti1Image(noise, np.eye(4)).to_bytes(), mtime=0)
    buf = io.BytesIO()
    np.save(buf, np.where(np.eye(8) > 0, np.inf, 1.0).astype(np.float32))
    jpg = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8)).save(jpg, format="JPEG")
    return {"nan.nii.gz": nan_nii, "cut.nii.gz": whole[: len(whole) * 3 // 4], "inf.npy": buf.getvalue(),
            "cut.jpg": jpg.getvalue()[: len(jpg.getvalue()) * 2 // 3]}


_SOUND_HEADER_BAD_PIXELS = _sound_header_bad_pixels()


@st.composite
def root_files(draw: Any, clean: bool = False) -> dict[str, Any]:
    """Relative path → bytes (a file), list of (name, bytes) (a series folder) or ('link', target)."""
    files: dict[str, Any] = {}
    for i in range(draw(st.integers(1, 4))):
        suffix, data = draw(image_bytes(clean))
        files[f"{draw(st.sampled_from(['', 'sub/']))}f{i}.{suffix}"] = data
    if clean:  # one file whose header is sound and whose pixels are not: ingest places it, validation names it
        name = draw(st.sampled_from(sorted(_SOUND_HEADER_BAD_PIXELS)))
        files[name] = _SOUND_HEADER_BAD_PIXELS[name]
    if draw(st.booleans()):
        files["series"] = [(draw(st.sampled_from([f"{j:04d}.dcm", f"{j:04d}", ".hidden", "DICOMDIR"])), data)
                           for j, (_, data) in enumerate(draw(st.lists(image_bytes(), max_size=3)))]
    if draw(st.booleans()):
        files["link_in.png"] = ("link", "f0")  # → the first file made (whatever its suffix)
        files["link_out.png"] = ("link", "../outside/secret.png")
        files["dangling.png"] = ("link", "gone.png")
    return files


def _ref(draw: Any, names: list[str]) -> str:
    return draw(_mostly(st.sampled_from(names), st.sampled_from(_SPECIAL_REFS)))


# Each column: (name, 1 in how many rows has it, a plausible value, a fuzzed one); three values in four are
# plausible, all of them in a clean table (where the columns with no plausible value are left out).
_COLUMNS = (
    ("question", 1, st.sampled_from(["Is there a nodule?", "What modality is this?", "Describe it."]), _TEXT),
    ("answer", 1, st.sampled_from(["Yes.", "No.", "CT", "A small nodule in the left lower lobe."]), _TEXT),
    ("split", 3, st.sampled_from(["", "train", "val", "test"]), _SPLITS),
    ("task", 4, st.sampled_from(["", "vqa"]), _TASKS),
    ("report", 5, None, _TEXT), ("kind", 5, None, _KINDS), ("position", 5, None, _POSITIONS),
    ("labels", 5, None, _LISTS), ("choices", 5, None, _LISTS), ("family", 5, st.just("presence"), _TEXT),
    ("source", 5, None, _TEXT), ("patient_name", 7, None, _TEXT),
)


@st.composite
def table_rows(draw: Any, names: list[str], jsonl: bool, clean: bool = False) -> list[Any]:
    """Rows as dicts (column → value); for JSONL also raw lines (str/bytes) that are not a good object.
    ``clean``: at least one row, images only among the files made."""
    rows: list[Any] = []
    for i in range(draw(st.integers(1, 5) if clean else _mostly(st.integers(1, 5), st.sampled_from([0, 1, 8])))):
        if jsonl and draw(st.integers(0, 9)) == 0:
            rows.append(draw(st.sampled_from(["not json", "[1, 2]", "42", "null", '"text"', b"\xff\xfe{}", "{}",
                                              '{"id": "x", "id": "y"}', '{"question": NaN, "answer": Infinity}']
                                             + (["[" * 50000, '{"id": ' + "1" * 5000 + "}"] if INCLUDE_KNOWN_BUGS
                                                else []))))
            continue
        row: dict[str, Any] = {}
        if draw(st.integers(0, 5)):
            row["id"] = draw(_mostly(st.just(f"r{i}"), _IDS))
        for col, rarity, good, fuzzed in _COLUMNS:
            if (rarity == 1 or draw(st.integers(1, rarity)) == 1) and (good is not None or not clean):
                row[col] = draw(good if clean else fuzzed if good is None else _mostly(good, fuzzed))
        refs = [draw(st.sampled_from(names)) if clean else _ref(draw, names)
                for _ in range(draw(_mostly(st.integers(1, 2), st.integers(0, 3))))]
        layout = draw(st.sampled_from(["image", "images", "numbered", "list", "dicts"] if jsonl
                                      else ["image", "images", "numbered"]))
        if layout == "image" and refs:
            row["image"] = refs[0]
        elif layout == "images":
            row["images"] = ";".join(refs)
        elif layout == "numbered":
            row.update({f"image_{j + 1}": r for j, r in enumerate(refs)})
        elif layout == "list":
            row["images"] = refs
        else:
            row["images"] = [{"path": r, "kind": draw(_KINDS), "position": draw(st.sampled_from(
                ["start", 0, 3, -1, None, [1], {"question": 1}, True]))} for r in refs]
        if jsonl and draw(st.integers(0, 4)) == 0:  # JSON values of other types
            row[draw(st.sampled_from(["id", "question", "answer", "split", "labels", "image", "images"]))] = draw(
                st.sampled_from([None, 0, 1.5, True, [], {}, ["a", 1], {"path": 3}]))
        rows.append(row)
    return rows


def _make_root(work: Path, files: dict[str, Any]) -> Path:
    root = work / "root"
    root.mkdir()
    (root / "empty_dir").mkdir()
    (work / "outside").mkdir()
    (work / "outside" / "secret.png").write_bytes(_SECRET_PNG)
    first = next(iter(files))
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, tuple):
            os.symlink(root / first if content[1] == "f0" else content[1], path)
        else:
            path.mkdir()
            for name, data in content:
                (path / name).write_bytes(data)
    return root


def _secret_png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 3).save(buf, format="PNG")
    return buf.getvalue()


_SECRET_PNG = _secret_png()


def _fill(value: Any, work: Path, first: str) -> Any:
    if isinstance(value, str):
        value = value.replace("<ABS_OUT>", str(work / "outside" / "secret.png"))
        return value.replace("<ABS_IN>", str(work / "root" / first))
    if isinstance(value, list):
        return [_fill(v, work, first) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, work, first) for k, v in value.items()}
    return value


# Raw lines put into a CSV/TSV between the rows: (kind, what the importer must make of the table).
_RAW_LINES = ("blank", "spaces", "short", "long", "not_utf8", "unterminated")


def _write_table(work: Path, case: Case) -> tuple[Path, list[str], str | None]:
    """The table file, the locator of each row as the importer names it (``t.csv row 2``, ``t.jsonl line 1``)
    and the table-level refusal expected (``no rows``, ``invalid``, None)."""
    first = next(iter(case.files))
    path = work / f"t.{case.fmt}"
    where: list[str] = []
    if case.fmt == "jsonl":
        with path.open("wb") as f:
            line = 0
            for row in case.rows:
                if case.blank:
                    f.write(b"\n" if line % 2 else b"  \t\n")
                    line += 1
                raw = row if isinstance(row, bytes) else row.encode() if isinstance(row, str) else json.dumps(
                    _fill(row, work, first), ensure_ascii=False).encode()
                f.write(raw + b"\n")
                line += 1
                where.append(f"{path.name} line {line}")
        return path, where, None if where else "no rows"
    sep = "\t" if case.fmt == "tsv" else ","
    columns = ["id", "image", "question", "answer"]
    for row in case.rows:
        columns += [c for c in row if c not in columns]

    def record(values: list[Any]) -> bytes:
        buf = io.StringIO()
        csv.writer(buf, delimiter=sep).writerow(values)
        return buf.getvalue().encode()

    lines = [record([_fill(row.get(c, ""), work, first) for c in columns]) for row in case.rows]
    counted = [True] * len(lines)
    expect = None
    for at, kind in case.raw_lines:
        at = min(at, len(lines)) if kind != "unterminated" else len(lines)
        line = {"blank": b"\r\n", "spaces": b"   \r\n", "short": f"short{sep}{first}\r\n".encode(),
                "long": sep.join(["x"] * (len(columns) + 2)).encode() + b"\r\n",
                "not_utf8": f"bad{sep}{first}{sep}Q\xff?{sep}A\r\n".encode("latin1"),
                "unterminated": f'cut{sep}"never closed'.encode()}[kind]
        lines.insert(at, line)
        counted.insert(at, kind in ("short", "long", "not_utf8", "unterminated"))
        if kind != "blank" and kind != "spaces" and kind != "short":
            expect = "invalid"
    path.write_bytes(record(columns) + b"".join(lines))
    where = [f"{path.name} row {i + 2}" for i in range(sum(counted))]
    if expect is None and not where:
        expect = "no rows"
    return path, where, expect


def _ingest(table: Path, out: Path, root: Path, on_error: str) -> tuple[Any, Any] | Exception:
    """ingest_table's result, or the exception it is allowed to raise (anything else propagates)."""
    try:
        return ingest_table(table, out, image_root=root, on_error=on_error)
    except SampleError as err:
        assert on_error == "raise", f"quarantine mode raised {err!r}"
        return err
    except ValueError as err:
        assert TABLE_ERRORS.match(str(err)) and "\n" not in str(err) and table.name in str(err), repr(err)
        return err


def _placed_files_from_root(out: Path, root: Path) -> None:
    """Every file under the output's images is a regular file, byte-equal to the file at the same place under
    the image root (nothing from outside the root, no link)."""
    images = out / "images" / "t"
    for dirpath, dirnames, filenames in os.walk(out):
        for name in (*dirnames, *filenames):
            assert not (Path(dirpath) / name).is_symlink(), f"a link was written: {Path(dirpath) / name}"
    for path in images.rglob("*") if images.exists() else ():
        if path.is_file():
            src = Path(os.path.realpath(root / path.relative_to(images)))
            assert src.is_file() and src.read_bytes() == path.read_bytes(), f"{path} is not a copy of {src}"
            assert path.read_bytes() != _SECRET_PNG, f"the file outside the root was copied to {path}"


def _check_ingest(work: Path, case: Case) -> tuple[Path, list[Any]] | None:
    """Ingest in quarantine then raise mode; the invariants of the module docstring. Returns the written data root
    and the samples (None when the table as a whole was refused)."""
    root = _make_root(work, case.files)
    table, where, expect = _write_table(work, case)
    out = work / "out_q"
    result = _ingest(table, out, root, "quarantine")
    refused = isinstance(result, ValueError)
    assert refused == (expect is not None), (expect, result)
    if refused:
        event(f"table refused: {str(result).split(': ')[1][:30]}")
        assert ("no rows" in str(result)) == (expect == "no rows"), (expect, result)
        assert not out.exists() or not (out / "manifest.jsonl").exists()
        raised = _ingest(table, work / "out_r", root, "raise")
        assert isinstance(raised, ValueError) and not isinstance(raised, SampleError) and str(raised) == str(result)
        return None
    samples, quarantine = result
    event(f"rows written: {'some' if samples else 'none'}; quarantined: {'some' if quarantine.items else 'none'}")
    for item in quarantine.items:
        event("quarantined: " + re.sub(r"\d+|'[^']*'|\([^)]*\)", "_", item.reason.split(": ", 1)[-1])[:60])
    # rows in = rows written + quarantined, and each rejected row names its own row of the table
    assert len(samples) + len(quarantine) == len(where), (len(where), len(samples), len(quarantine))
    located = [re.match(rf"{re.escape(table.name)} (row|line) \d+(?=: )", item.reason) for item in quarantine.items]
    assert all(located), [item.reason for item in quarantine.items]
    assert len({m.group(0) for m in located}) == len(located) and {m.group(0) for m in located} <= set(where)
    for item in quarantine.items:
        assert item.sample_id and item.stage == "ingest", item
    manifest = out / "manifest.jsonl"
    lines = manifest.read_bytes().rstrip(b"\n").split(b"\n")  # JSON may hold U+0085/U+2028: not line ends
    assert len(lines) == 1 + len(samples)
    assert [s.id for s in read_manifest(manifest)] == [s.id for s in samples]
    assert len({s.id for s in samples}) == len(samples)
    report = out / "manifest.quarantine.jsonl"
    if quarantine.items:
        assert [json.loads(line)["reason"] for line in report.read_bytes().rstrip(b"\n").split(b"\n")] == [
            item.reason for item in quarantine.items]
    else:
        assert not report.exists()
    _placed_files_from_root(out, root)

    raised = _ingest(table, work / "out_r", root, "raise")
    if quarantine.items:
        first = quarantine.items[0]
        assert isinstance(raised, SampleError), f"raise mode did not raise on {first}"
        assert (raised.sample_id, raised.file, raised.reason) == (first.sample_id, first.file, first.reason)
        assert str(raised).startswith(f"sample {raised.sample_id}: file {raised.file or '-'}: {raised.reason}")
        assert not (work / "out_r" / "manifest.jsonl").exists()
        _placed_files_from_root(work / "out_r", root)  # what was copied before the bad row: from the root too
    else:
        assert not isinstance(raised, Exception), raised
        assert [s.model_dump() for s in raised[0]] == [s.model_dump() for s in samples]

    for sample in samples:  # every written image is read, or refused with a SampleError
        for ref in sample.images:
            try:
                read_image(out / ref.path, sample.id, allow_constant=True)
            except SampleError as err:
                assert err.sample_id == sample.id and err.reason
                event("a written image the reader refuses")
    return out, samples


class Case(NamedTuple):
    files: dict[str, Any]  # see root_files
    fmt: str  # csv, tsv or jsonl
    rows: list[Any]  # see table_rows
    blank: bool  # blank (and whitespace-only) lines between the rows of a JSONL table
    raw_lines: list[tuple[int, str]]  # (before which row, kind of _RAW_LINES) put into a CSV/TSV


@st.composite
def tables(draw: Any, clean: bool = False) -> Case:
    files = draw(root_files(clean))
    fmt = draw(st.sampled_from(["csv", "tsv", "jsonl"]))
    names = [n for n in files if not n.startswith(("link", "dangling"))]
    rows = draw(table_rows(names, fmt == "jsonl", clean))
    raw = [] if clean or fmt == "jsonl" else draw(_mostly(st.just([]), st.lists(
        st.tuples(st.integers(0, 5), st.sampled_from(_RAW_LINES)), max_size=2, unique_by=lambda t: t[1])))
    return Case(files, fmt, rows, draw(st.booleans()), raw)


@settings(FUZZ, max_examples=300)
@given(tables())
def test_ingest_counts_every_row_and_raises_only_sample_errors(tmp_path: Path, case: Case) -> None:
    _check_ingest(Path(tempfile.mkdtemp(dir=tmp_path)), case)


@settings(FUZZ, max_examples=10)
@given(tables(clean=True))
def test_validate_on_what_ingest_wrote_names_every_bad_image(tmp_path: Path, case: Case) -> None:
    """`radfm validate DATA` (the CLI's entry, :func:`radfm.validation.run_cli`) on the ingested data root."""
    from radfm.validation import run_cli

    work = Path(tempfile.mkdtemp(dir=tmp_path))
    written = _check_ingest(work, case)
    if written is None:
        return
    out, samples = written
    args = argparse.Namespace(data=str(out), manifest=None, out=str(work / "validation"), config=None, mostly=None,
                              no_images=False)
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        code = run_cli(args)
    assert code in (0, 1), printed.getvalue()
    report = json.loads((work / "validation" / "validation.json").read_text())
    assert report["statistics"]["rows"] == len(samples)
    image_failures = [f for f in report["failures"] if f["check"] in ("image_readable", "image_finite")]
    for sample in samples:
        for ref in sample.images:
            try:
                read_image(out / ref.path, sample.id, allow_constant=True)
            except SampleError:  # named by validation: the image, and the sample that uses it (of the first 3)
                users = list(dict.fromkeys(s.id for s in samples if any(r.path == ref.path for r in s.images)))
                assert any(ref.path in f["offending"] and (sample.id in f.get("samples", []) or
                                                           sample.id not in users[:3]) for f in image_failures), (
                    ref.path, sample.id, image_failures)


# ----------------------------------------------------------------------------------- known bugs (minimal)
# Found by the fuzzing above (and fixed): ingest_table raised something other than a SampleError (quarantine
# mode included, so the whole table was lost) on one bad cell or line. Each is its minimal example, kept as a
# regression case; the strategies draw these inputs too (INCLUDE_KNOWN_BUGS).
_ROW = "id,image,question,answer,{col}\nr1,a.png,Is there a nodule?,Yes.,{value}\n"
KNOWN_BUGS = [
    pytest.param("t.csv", _ROW.format(col="position", value="²"), id="position-superscript-digit"),
    pytest.param("t.csv", _ROW.format(col="position", value="9" * 5000), id="position-5000-digits"),
    pytest.param("t.csv", _ROW.format(col="labels", value="[" * 5000), id="labels-deeply-nested-json"),
    pytest.param("t.jsonl", "[" * 5000 + "\n", id="jsonl-line-deeply-nested"),
    pytest.param("t.jsonl", '{"id": ' + "1" * 5000 + ', "image": "a.png", "question": "Q?", "answer": "A."}\n',
                 id="jsonl-5000-digit-number"),
    pytest.param("t.jsonl", json.dumps({"id": "r1", "image_" + "1" * 5000: "a.png", "question": "Q?", "answer": "A."})
                 + "\n", id="jsonl-image-column-5000-digits"),
]


@pytest.mark.parametrize(("name", "text"), KNOWN_BUGS)
def test_known_bad_cell_is_one_quarantined_row(tmp_path: Path, name: str, text: str) -> None:
    """One row, one bad cell: quarantine mode keeps the count (1 in = written + quarantined), raise mode raises a
    SampleError naming the row; never another exception."""
    (tmp_path / "a.png").write_bytes(_SECRET_PNG)
    (tmp_path / name).write_text(text)
    samples, quarantine = ingest_table(tmp_path / name, tmp_path / "q", on_error="quarantine")
    assert len(samples) + len(quarantine) == 1
    try:
        ingest_table(tmp_path / name, tmp_path / "r")
    except SampleError as err:
        assert re.search(rf"{re.escape(name)} (row 2|line 1): ", str(err)), str(err)
