"""A real S3 API for tests: moto's server on 127.0.0.1 at a free port, fake credentials, nothing leaves loopback.

``moto_server`` is session-scoped; import it into a conftest (``from tests.s3 import moto_server``). Tests make
their own buckets (``server.bucket()``), so they never see each other's objects.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

FAKE_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}
# No real AWS profile or config file may leak into a test: both point at empty files.
AWS_FILES = ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE")
LOOPBACK = "127.0.0.1,localhost"


@dataclass
class MotoS3:
    endpoint_url: str

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name="us-east-1")

    def bucket(self, prefix: str = "radfm") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def storage_options(self) -> dict:
        """fsspec/s3fs options for this server (listings cache off: tests rewrite keys)."""
        return {"client_kwargs": {"endpoint_url": self.endpoint_url}, "use_listings_cache": False}


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    pytest.importorskip("moto.server", reason="moto[server] is not installed (pip install -e '.[dev]')")
    from moto.server import ThreadedMotoServer

    saved = {k: os.environ.get(k) for k in [*FAKE_ENV, *AWS_FILES, "NO_PROXY", "no_proxy"]}
    os.environ.update(FAKE_ENV)
    aws_dir = tmp_path_factory.mktemp("aws")
    for key in AWS_FILES:
        empty = aws_dir / key.lower()
        empty.write_text("")
        os.environ[key] = str(empty)
    # A proxy from the environment must not see loopback traffic.
    for key in ("NO_PROXY", "no_proxy"):
        os.environ[key] = ",".join(x for x in (os.environ.get(key), LOOPBACK) if x)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield MotoS3(endpoint_url=f"http://{host}:{port}")
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
