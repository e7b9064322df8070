"""DVC on a real S3 API (moto's server on 127.0.0.1): add → version id, push, wipe, pull, same bytes;
and manifests/images read straight from s3:// through s3fs."""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from radfm.data import versioning
from radfm.data.manifest import ImageRef, Sample, read_manifest, resolve_image_path, write_manifest


def _png_bytes(seed: int) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, size=(16, 16), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _sample(i: int = 0) -> Sample:
    return Sample(id=f"s{i}", task="vqa", split="train", question="Is there a nodule?", answer="No.",
                  images=[ImageRef(path=f"images/img{i}.png", kind="2d")], source="test")


def _make_data(root: Path) -> Path:
    data = root / "data"
    (data / "images").mkdir(parents=True)
    (data / "images" / "img0.png").write_bytes(_png_bytes(0))
    (data / "images" / "img1.png").write_bytes(_png_bytes(1))
    write_manifest([_sample(0), _sample(1)], data / "manifest.jsonl")
    return data


def _hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def git_repo(tmp_path: Path) -> Path:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "repo"
    repo.mkdir()
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "t@example.org"],
                ["git", "config", "user.name", "radfm tests"], ["git", "config", "commit.gpgsign", "false"]):
        subprocess.run(cmd, cwd=repo, check=True, capture_output=True)
    return repo


def test_version_id_without_dvc_is_a_stable_content_hash(tmp_path: Path) -> None:
    data = _make_data(tmp_path)
    v1 = versioning.data_version(tmp_path)
    assert len(v1) == 32 and v1 == versioning.data_version(tmp_path)
    (data / "images" / "img1.png").write_bytes(_png_bytes(2))
    v2 = versioning.data_version(tmp_path)
    assert v2 != v1
    (data / "images" / "img1.png").write_bytes(_png_bytes(1))
    assert versioning.data_version(tmp_path) == v1  # content, not mtimes
    with pytest.raises(FileNotFoundError, match="no data to version"):
        versioning.data_version(tmp_path, "missing")


def test_dvc_add_push_wipe_pull_roundtrip_on_s3(moto_server, git_repo: Path) -> None:
    data = _make_data(git_repo)
    before = _hashes(data)
    untracked_version = versioning.data_version(git_repo)

    versioning.init_repo(git_repo)
    assert (git_repo / ".dvc").is_dir()
    versioning.init_repo(git_repo)  # idempotent
    bucket = moto_server.bucket()
    versioning.configure_remote(git_repo, f"s3://{bucket}/dvc", endpoint_url=moto_server.endpoint_url)
    config = (git_repo / ".dvc" / "config").read_text()
    assert "endpointurl" in config and "testing" not in config  # no credentials in the config

    version = versioning.add(git_repo, "data")
    assert (git_repo / "data.dvc").is_file()
    # The id computed before DVC tracked the folder is DVC's own directory md5.
    assert version == untracked_version
    assert "/data" in (git_repo / ".gitignore").read_text()

    versioning.push(git_repo)
    keys = [o["Key"] for o in moto_server.client().list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert any(k.endswith(".dir") for k in keys) and len(keys) == 4  # 3 files + the directory listing

    shutil.rmtree(data)
    shutil.rmtree(git_repo / ".dvc" / "cache")
    assert versioning.pull(git_repo) == version
    assert _hashes(data) == before

    # A changed file is a new version at once (the workspace, as DVC computes it); data.dvc keeps the last added one.
    (data / "images" / "img0.png").write_bytes(_png_bytes(7))
    assert versioning.data_version(git_repo) == versioning.content_hash(data) != version
    assert versioning.recorded_version(git_repo, "data") == version
    new_version = versioning.add(git_repo, "data")
    assert new_version != version
    assert new_version == versioning.content_hash(data)


def test_dvc_errors_name_the_command(tmp_path: Path) -> None:
    versioning.init_repo(tmp_path)  # no git here: --no-scm
    assert (tmp_path / ".dvc").is_dir()
    with pytest.raises(FileNotFoundError):
        versioning.add(tmp_path, "data")
    with pytest.raises(versioning.VersioningError, match="dvc push"):
        versioning.push(tmp_path, target=None, remote="nowhere")


def test_read_manifest_and_image_from_s3(moto_server, monkeypatch: pytest.MonkeyPatch) -> None:
    s3fs = pytest.importorskip("s3fs")
    import fsspec

    bucket = moto_server.bucket()
    client = moto_server.client()
    png = _png_bytes(3)
    client.put_object(Bucket=bucket, Key="medmd/images/img0.png", Body=png)
    # s3fs honours botocore's AWS_ENDPOINT_URL (read when its client is created); FSSPEC_S3_ENDPOINT_URL
    # only counts if set before fsspec is imported, so it is no use to a running process.
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server.endpoint_url)
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        write_manifest([_sample(0)], f"s3://{bucket}/medmd/manifest.jsonl")
        samples = read_manifest(f"s3://{bucket}/medmd/manifest.jsonl")
        assert [s.id for s in samples] == ["s0"]
        uri = resolve_image_path(f"s3://{bucket}/medmd", samples[0].images[0].path)
        assert uri == f"s3://{bucket}/medmd/images/img0.png"
        fs = s3fs.S3FileSystem(use_listings_cache=False)
        with fs.open(uri, "rb") as f:
            assert f.read() == png
        with fsspec.open(uri, "rb") as f:
            img = np.asarray(Image.open(f))
        assert img.shape == (16, 16)
        # Parquet manifests travel the same way.
        write_manifest(samples, f"s3://{bucket}/medmd/manifest.parquet")
        assert read_manifest(f"s3://{bucket}/medmd/manifest.parquet") == samples
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
