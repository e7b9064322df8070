"""The images of one served request as files the readers take, each told apart by its form and checked against
the limits (:mod:`radfm.registry.limits`) before it is decoded or fetched.

======================================  ===================================================================
form of one ``images`` entry            read as
======================================  ===================================================================
``data:[<media type>];base64,<data>``   bytes the client sent: their size (from the base64 length) within
                                        ``RADFM_MAX_IMAGE_BYTES`` before decoding, then the format from the
                                        bytes' own signature — PNG, JPEG, NIfTI ``.nii``/``.nii.gz``, DICOM
                                        (one file, multi-frame included), ``.npy``; the media type may be
                                        left out and is not trusted — written to the request's temporary folder
``s3://bucket/key`` (or ``s3a://``)     an object, or a flat DICOM series under a prefix: its size (from the
                                        store's metadata) within the same limit, then fetched by
                                        :mod:`radfm.data.remote` (``RADFM_S3_ENDPOINT_URL``, ``AWS_*``)
a path, or ``file://<path>``            a file or DICOM series folder on the server, read where it is
an array (Python callers only)          written as ``.npy``
======================================  ===================================================================

Every decoded or fetched image then has its header probed against the readers' limits before any pixel is
decoded. Another URL scheme (``http://``, ``gs://``…) is refused: a served model must not fetch whatever a client
names. A long run of base64 characters with no ``data:`` prefix that names no file is refused with the prefix to
add, rather than reported as a missing file.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import struct
import zlib
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from radfm.registry.limits import PredictInputError, check_image_bytes, probe

S3_SCHEMES = ("s3://", "s3a://")
READABLE = "PNG, JPEG, NIfTI (.nii/.nii.gz), DICOM or .npy"
# 64+ characters of the base64 alphabet and nothing else, naming no file on the server: bytes sent without their
# data: prefix (a suffix-less DICOM series folder can match the pattern too, hence the look on disk first)
_BARE_BASE64 = re.compile(r"[A-Za-z0-9+/]{64,}={0,2}")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class RequestImage:
    """One image ready for the readers: ``path`` a local file or series folder, ``label`` how errors name it
    (the client's path or URI, or ``<k> (base64 PNG, <n> bytes)`` for bytes: a temporary file means nothing to
    them)."""

    path: str
    label: str


def image_items(value: Any, row_no: int) -> list[Any]:
    """The images of one row as a list: a list, a JSON list, one string, or one array. Nothing is decoded or
    written yet, so an over-long list is refused before it costs memory or disk."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise PredictInputError(f"row {row_no}: 'images' is not a JSON list of images: {exc}") from None
        else:
            value = [text] if text else []
    if isinstance(value, np.ndarray) and value.dtype.kind in "fiub":
        value = [value]  # one image given as an array
    if not isinstance(value, (list, tuple, np.ndarray)):
        raise PredictInputError(f"row {row_no}: 'images' must be a list of base64 data URIs, s3:// URIs, paths "
                                f"or arrays, got {type(value).__name__}")
    return list(value)


def _is_array(item: Any) -> bool:
    return (isinstance(item, np.ndarray) and item.dtype.kind in "fiub") or (
        isinstance(item, list) and bool(item) and not isinstance(item[0], str))


def _split_data_uri(text: str, where: str) -> str:
    """The base64 payload of ``data:[<media type>][;…];base64,<payload>`` (RFC 2397)."""
    head, comma, payload = text.partition(",")
    if not comma or not head.lower().endswith(";base64"):
        raise PredictInputError(f"{where} is a data URI without ';base64,': send data:<media type>;base64,<bytes "
                                "in base64>")
    return payload


def _decoded_size(payload: str) -> int:
    """The bytes ``payload`` decodes to at most, from its length alone (whitespace counted: never under)."""
    return len(payload) * 3 // 4 - payload[-2:].count("=")


def check_sizes(items: list[Any], row_no: int) -> None:
    """Refuse a row whose base64 images are over the byte limit, from the strings' lengths: nothing is decoded."""
    for k, item in enumerate(items):
        if isinstance(item, str) and item[:5].lower() == "data:":
            where = f"row {row_no}: image {k} (base64)"
            check_image_bytes(_decoded_size(_split_data_uri(item, where)), where)


def _is_nifti(head: bytes) -> bool:
    """NIfTI-1 (``sizeof_hdr`` 348, magic ``n+1``) or NIfTI-2 (540, ``n+2``), either byte order."""
    if len(head) >= 348 and head[344:348] == b"n+1\0" and head[:4] in (struct.pack("<i", 348),
                                                                       struct.pack(">i", 348)):
        return True
    return len(head) >= 540 and head[4:8] == b"n+2\0" and head[:4] in (struct.pack("<i", 540),
                                                                      struct.pack(">i", 540))


def sniff(data: bytes) -> tuple[str, str] | None:
    """``(format name, file suffix)`` from the bytes' signature, None when it is none the served model reads. The
    readers choose by suffix, so the suffix must come from the content, not from what the client claims."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG", ".png"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG", ".jpg"
    if data[128:132] == b"DICM":
        return "DICOM", ".dcm"
    if data.startswith(b"\x93NUMPY"):
        return "NumPy", ".npy"
    if _is_nifti(data):
        return "NIfTI", ".nii"
    if data.startswith(b"\x1f\x8b"):
        try:  # only the header: at most 544 bytes are inflated, whatever the stream claims
            head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data[:65536], 544)
        except zlib.error:
            return None
        if _is_nifti(head):
            return "NIfTI", ".nii.gz"
    return None


def _from_base64(text: str, k: int, where: str, folder: Path) -> RequestImage:
    label = f"{k} (base64)"
    payload = _split_data_uri(text, f"{where}: image {label}")
    check_image_bytes(_decoded_size(payload), f"{where}: image {label}")  # again: a caller may skip check_sizes
    try:
        data = base64.b64decode(_SPACE.sub("", payload), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise PredictInputError(f"{where}: image {label} is not valid base64 ({exc})") from None
    kind = sniff(data)
    if kind is None:
        raise PredictInputError(f"{where}: image {k} (base64, {len(data):,} bytes) is not a {READABLE} file: its "
                                "first bytes match none of their signatures")
    path = folder / f"image_{k}{kind[1]}"
    path.write_bytes(data)
    return RequestImage(str(path), f"{k} (base64 {kind[0]}, {len(data):,} bytes)")


def _s3_size(url: str) -> int:
    """The bytes behind ``url``: one object, or the series files of a prefix (what :func:`fetched` downloads)."""
    from radfm.data.headers import is_series_member
    from radfm.data.remote import remote_fs

    fs, rpath = remote_fs(url)
    rpath = rpath.rstrip("/")
    info = fs.info(rpath)
    if info.get("type") == "directory":
        return sum(int(e.get("size") or 0) for e in fs.ls(rpath, detail=True)
                   if e.get("type") == "file" and is_series_member(PurePosixPath(e["name"]).name))
    return int(info.get("size") or 0)


def _from_s3(url: str, where: str, stack: ExitStack) -> RequestImage:
    from radfm.data.errors import SampleError
    from radfm.data.remote import fetched, remote_reason

    name = _clip(url)
    bucket, _, key = url.split("://", 1)[1].partition("/")
    if not bucket or not key.strip("/"):
        raise PredictInputError(f"{where}: image {name} names no object: send s3://<bucket>/<key>")
    try:
        size = _s3_size(url)
    except FileNotFoundError:
        raise PredictInputError(f"{where}: image {name} cannot be read: file not found") from None
    except Exception as exc:  # the remote boundary: every client library fails in its own way
        raise PredictInputError(f"{where}: image {name} cannot be read: {remote_reason(url, exc)}") from None
    check_image_bytes(size, f"{where}: image {name}")
    try:
        local = stack.enter_context(fetched(url))
    except SampleError as exc:
        raise PredictInputError(f"{where}: image {name} cannot be read: {exc.reason}") from None
    return RequestImage(str(local), name)


def _clip(text: str, limit: int = 200) -> str:
    """``text`` as an error names it: a client's string may be megabytes, an error is one short line."""
    return text if len(text) <= limit else text[:limit] + "…"


def _exists(text: str) -> bool:
    try:
        return Path(text).exists()
    except (OSError, ValueError):  # a name too long for the file system, or with a NUL
        return False


def _one(item: Any, k: int, where: str, folder: Path, stack: ExitStack) -> RequestImage:
    if _is_array(item):
        path = folder / f"image_{k}.npy"
        np.save(path, np.asarray(item, dtype=np.float32))
        return RequestImage(str(path), f"{k} (array)")
    if isinstance(item, Path):
        return RequestImage(str(item), str(item))
    if not isinstance(item, str):
        raise PredictInputError(f"{where}: image {k} is neither a string (base64 data URI, s3:// URI, path) nor "
                                f"an array ({type(item).__name__})")
    text = item.strip()
    if text[:5].lower() == "data:":
        return _from_base64(text, k, where, folder)
    if text.startswith(S3_SCHEMES):
        return _from_s3(text, where, stack)
    if text.startswith("file://"):
        return RequestImage(text.removeprefix("file://"), _clip(text))
    if "://" in text:
        raise PredictInputError(f"{where}: image {k} {_clip(text.split('://')[0], 20)}:// is not fetched by the "
                                "served model: send the bytes as data:;base64,<…> or an s3:// URI")
    if _BARE_BASE64.fullmatch(text) and not _exists(text):
        raise PredictInputError(f"{where}: image {k} looks like base64 without its prefix: send it as "
                                "data:;base64,<…> (a bare string is read as a path on the server)")
    return RequestImage(text, _clip(text))


def materialise(items: list[Any], row_no: int, folder: Path, stack: ExitStack) -> list[RequestImage]:
    """Local files for ``items`` (see the module docstring), each header probed against the readers' limits:
    bytes decoded into ``folder``, ``s3://`` objects fetched into folders that ``stack`` removes. Errors are
    :class:`PredictInputError` (:class:`InputLimitError` for a limit) naming the row, the image and the reason."""
    where = f"row {row_no}"
    out = []
    for k, item in enumerate(items):
        image = _one(item, k, where, folder, stack)
        probe(image.path, where, sample_id=where, label=image.label)
        out.append(image)
    return out


__all__ = ["READABLE", "S3_SCHEMES", "RequestImage", "check_sizes", "image_items", "materialise", "sniff"]
