"""Remote images (``s3://`` and any other fsspec URL): the file system to reach them, a fetch to a temporary
folder, and every failure on the way as one :class:`SampleError` line that says which setting to fix.

Without this, an ``s3://`` row without credentials ended ``radfm validate`` in a 96-line ``NoCredentialsError``
and ``radfm train`` in a connection traceback. The endpoint is ``RADFM_S3_ENDPOINT_URL`` (MinIO, moto, Ceph;
then ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``, as for ``radfm data push``); credentials come from the
standard AWS variables or files. Importing :mod:`radfm` sets ``AWS_EC2_METADATA_DISABLED=true`` unless the user
set it, so a missing key is reported at once instead of after a probe of a cloud metadata address.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

from radfm.data.errors import SampleError

CREDENTIALS_HINT = ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE with a credentials file); "
                    "for MinIO or a moto server also RADFM_S3_ENDPOINT_URL")


def is_remote(path: str) -> bool:
    """A URL with a scheme other than ``file://``."""
    return "://" in path and not path.startswith("file://")


def remote_fs(url: str) -> tuple[Any, str]:
    """The fsspec file system for ``url`` and the path inside it; ``s3://`` gets radfm's endpoint setting."""
    import fsspec

    options: dict[str, Any] = {}
    if url.startswith(("s3://", "s3a://")):
        from radfm.data.versioning import endpoint_from_env

        endpoint = endpoint_from_env()
        if endpoint:
            options["client_kwargs"] = {"endpoint_url": endpoint}
    return fsspec.core.url_to_fs(url, **options)


def remote_reason(url: str, exc: BaseException) -> str:
    """What went wrong reaching ``url``, in one line that names the setting to check."""
    try:
        from botocore import exceptions as boto
    except ImportError:  # no S3 support installed: only the generic reasons apply
        boto = None
    detail = " ".join(str(exc).split()) or type(exc).__name__
    if boto is not None:
        if isinstance(exc, boto.NoCredentialsError | boto.PartialCredentialsError):
            return f"no S3 credentials found ({detail}): {CREDENTIALS_HINT}"
        if isinstance(exc, boto.ConnectionError | boto.HTTPClientError):
            from radfm.data.versioning import endpoint_from_env

            endpoint = endpoint_from_env()
            return (f"cannot reach the S3 endpoint ({detail}): check RADFM_S3_ENDPOINT_URL "
                    f"(now {endpoint or 'unset, so AWS itself'}) and the network")
        if isinstance(exc, boto.BotoCoreError):
            return f"S3 client error ({type(exc).__name__}: {detail}): check the AWS_* settings"
    if isinstance(exc, PermissionError):
        return (f"access denied by the storage ({detail}): check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and "
                "the bucket's policy")
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    return f"cannot fetch it ({type(exc).__name__}: {detail})"


def remote_error(url: str, exc: BaseException, sample_id: str | None = None) -> SampleError:
    return SampleError(sample_id, url, remote_reason(url, exc))


@contextmanager
def fetched(url: str) -> Iterator[Path]:
    """Download an fsspec URL (a file or a flat series folder) to a temporary folder under RADFM_HOME.

    Every failure to reach or read the URL is a :class:`SampleError` naming it (the sample id is the caller's).
    """
    from radfm.data.headers import is_series_member
    from radfm.paths import home_path

    try:
        fs, rpath = remote_fs(url)
        rpath = rpath.rstrip("/")
        if not fs.exists(rpath):
            raise SampleError(None, url, "file not found")
        is_dir = fs.isdir(rpath)
    except SampleError:
        raise
    except Exception as exc:  # the remote boundary: every client library fails in its own way
        raise remote_error(url, exc) from exc
    name = PurePosixPath(rpath).name or "image"
    with tempfile.TemporaryDirectory(prefix="fetch-", dir=home_path("tmp")) as tmp:
        local = Path(tmp) / name
        try:
            if is_dir:
                local.mkdir()
                for entry in fs.ls(rpath, detail=True):
                    if entry["type"] == "file" and is_series_member(PurePosixPath(entry["name"]).name):
                        fs.get_file(entry["name"], str(local / PurePosixPath(entry["name"]).name))
            else:
                fs.get_file(rpath, str(local))
        except Exception as exc:
            raise remote_error(url, exc) from exc
        yield local
