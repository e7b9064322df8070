"""Bad images, one named test each: every one is a SampleError (or, for weights, one error line) naming the file
and the reason, raised before anything large is allocated. Real files throughout: headers written byte by byte,
files cut short, pydicom's and nibabel's own test data; no mocks."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import socket
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import nibabel as nib
import nibabel.testing
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from radfm.data.errors import SampleError
from radfm.data.limits import DEFAULT_MAX_BYTES, DEFAULT_MAX_VOXELS, ImageHeader, ImageLimits
from radfm.data.readers import probe_image, read_image

NIB_DATA = Path(nibabel.testing.data_path)
GIANT = (32000, 32000, 1000)


def _refused(path: Path | str, *words: str, sample_id: str = "s-1", limits: ImageLimits | None = None,
             probe: bool = True) -> list[SampleError]:
    """read_image (and probe_image) raise a SampleError naming the sample, the file and each word."""
    calls = [read_image, probe_image] if probe else [read_image]
    errors = []
    for call in calls:
        with pytest.raises(SampleError) as info:
            call(path, sample_id, limits=limits)
        err = info.value
        assert err.sample_id == sample_id and err.file == str(path), (call.__name__, str(err))
        for word in words:
            assert word in str(err), f"{call.__name__}: {word!r} not in {err}"
        assert "\n" not in str(err), f"{call.__name__}: more than one line: {err}"
        errors.append(err)
    return errors


def _nifti_header_only(path: Path, shape: tuple[int, ...], dtype=np.float32) -> Path:
    """A NIfTI file that is a header claiming ``shape`` and four bytes of padding, no voxels."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header["vox_offset"] = 352
    buf = io.BytesIO()
    header.write_to(buf)
    raw = buf.getvalue() + b"\0" * 4
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A valid PNG chunk chain whose IHDR claims width×height 8-bit grey pixels, with a few bytes of data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + _png_chunk(b"IEND", b""))
    return path


def _cut(src: Path, dst: Path, frac: float = 0.6) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * frac)])
    return dst


def _ramp(shape: tuple[int, ...], dtype=np.int16) -> np.ndarray:
    return (np.arange(int(np.prod(shape))) % 251).reshape(shape).astype(dtype)


# --- oversized headers: refused before allocation ---------------------------------------------------------


@pytest.mark.parametrize("name", ["giant.nii.gz", "giant.nii"])
def test_giant_nifti_header_is_refused_before_allocation(tmp_path: Path, name: str) -> None:
    path = _nifti_header_only(tmp_path / name, GIANT)
    assert path.stat().st_size < 400  # a few hundred bytes claiming 4 TB (today: a bare MemoryError)
    _refused(path, "header claims 32000×32000×1000 voxels", "over data.max_voxels = 536,870,912")


def test_giant_npy_header_is_refused_before_allocation(tmp_path: Path) -> None:
    path = tmp_path / "giant.npy"
    with path.open("wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": GIANT})
    _refused(path, "header claims 32000×32000×1000 voxels", "data.max_voxels")


def test_giant_npz_member_is_refused_before_allocation(tmp_path: Path) -> None:
    path = tmp_path / "giant.npz"
    member = io.BytesIO()
    np.lib.format.write_array_header_1_0(member, {"descr": "<f4", "fortran_order": False, "shape": GIANT})
    import zipfile

    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("image.npy", member.getvalue())
    _refused(path, "header claims 32000×32000×1000 voxels", "data.max_voxels")


def test_bytes_limit_is_checked_in_the_files_own_dtype(tmp_path: Path) -> None:
    path = tmp_path / "f64.npy"
    np.save(path, np.linspace(0, 1, 64 * 64 * 8).reshape(64, 64, 8))  # float64: 256 KiB
    _refused(path, "float64 voxels = 256.0 KiB", "over data.max_bytes = 64.0 KiB",
             limits=ImageLimits(max_voxels=10**9, max_bytes=64 * 1024))
    assert read_image(path, limits=ImageLimits(max_voxels=10**9, max_bytes=256 * 1024)).array.shape == (1, 64, 64, 8)


def test_pil_decompression_bomb_is_a_sample_error_naming_the_file(tmp_path: Path) -> None:
    path = _png_header_only(tmp_path / "bomb.png", 20000, 10000)  # 200 M pixels in ~100 bytes
    _refused(path, "decompression-bomb")


def test_png_over_the_data_config_limit_is_refused_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "xray.png"
    Image.fromarray(_ramp((64, 64), np.uint8)).save(path)
    _refused(path, "header claims 64×64 voxels (4,096)", "over data.max_voxels = 1,000",
             limits=ImageLimits(max_voxels=1000))


def test_dicom_over_the_limit_is_refused_from_its_header(tmp_path: Path) -> None:
    path = Path(get_testdata_file("emri_small.dcm"))  # 10 frames of 64×64
    _refused(path, "header claims 64×64×10 voxels (40,960)", "data.max_voxels = 40,000",
             limits=ImageLimits(max_voxels=40_000))


def test_dicom_series_over_the_limit_counts_every_slice(tmp_path: Path) -> None:
    folder = _series(tmp_path / "series", 5)
    _refused(folder, "header claims 128×128×5 voxels", "data.max_voxels = 80,000",
             limits=ImageLimits(max_voxels=80_000))
    assert read_image(folder, limits=ImageLimits(max_voxels=128 * 128 * 5)).array.shape == (1, 128, 128, 5)


def test_mha_over_the_limit_is_refused_from_its_header(tmp_path: Path) -> None:
    sitk = pytest.importorskip("SimpleITK")
    path = tmp_path / "vol.mha"
    sitk.WriteImage(sitk.GetImageFromArray(_ramp((6, 5, 4))), str(path))
    _refused(path, "header claims 4×5×6 voxels (120)", "data.max_voxels = 100", limits=ImageLimits(max_voxels=100))


# --- broken files ------------------------------------------------------------------------------------------


def test_truncated_nifti(tmp_path: Path) -> None:
    path = _cut(NIB_DATA / "anatomical.nii", tmp_path / "cut.nii")
    _refused(path, "truncated")
    gz = tmp_path / "cut.nii.gz"
    gz.write_bytes(gzip.compress((NIB_DATA / "anatomical.nii").read_bytes())[:900])
    _refused(gz, "corrupt or truncated NIfTI", probe=False)  # only decoding finds a cut inside a gzip stream


def test_truncated_png(tmp_path: Path) -> None:
    path = tmp_path / "full.png"
    Image.fromarray(_ramp((256, 256), np.uint8)).save(path)
    _refused(_cut(path, tmp_path / "cut.png", 0.5), "truncated")


def test_truncated_dicom_pixel_data_is_found_by_the_probe(tmp_path: Path) -> None:
    path = _cut(Path(get_testdata_file("CT_small.dcm")), tmp_path / "cut.dcm", 0.7)
    [_, probed] = _refused(path, "truncated")
    assert "PixelData claims 32,768 bytes" in probed.reason


def test_truncated_npy(tmp_path: Path) -> None:
    path = tmp_path / "full.npy"
    np.save(path, _ramp((64, 64, 8)))
    _refused(_cut(path, tmp_path / "cut.npy"), "truncated")


def test_truncated_mha_and_missing_mhd_data(tmp_path: Path) -> None:
    sitk = pytest.importorskip("SimpleITK")
    img = sitk.GetImageFromArray(_ramp((6, 5, 4)))
    sitk.WriteImage(img, str(tmp_path / "vol.mha"))
    _refused(_cut(tmp_path / "vol.mha", tmp_path / "cut.mha", 0.9), "truncated: the header claims 240 bytes")
    sitk.WriteImage(img, str(tmp_path / "vol.mhd"))
    (tmp_path / "vol.raw").unlink()
    _refused(tmp_path / "vol.mhd", "data file 'vol.raw' named by the header is missing")


def test_mhd_naming_a_data_file_outside_its_folder_is_refused(tmp_path: Path) -> None:
    sitk = pytest.importorskip("SimpleITK")
    (tmp_path / "data").mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(_ramp((6, 5, 4))), str(tmp_path / "data" / "vol.mhd"))
    shutil.move(tmp_path / "data" / "vol.raw", tmp_path / "secret.raw")
    header = (tmp_path / "data" / "vol.mhd").read_text().replace("= vol.raw", "= ../secret.raw")
    (tmp_path / "data" / "vol.mhd").write_text(header)
    _refused(tmp_path / "data" / "vol.mhd", "outside its own folder")


@pytest.mark.parametrize("name", ["scan.nii", "scan.nii.gz", "img.png", "img.jpg", "arr.npy", "arr.npz",
                                  "slice.dcm", "vol.mha", "vol.nrrd"])
def test_wrong_magic(tmp_path: Path, name: str) -> None:
    if name.endswith((".mha", ".nrrd")):
        pytest.importorskip("SimpleITK")
    path = tmp_path / name
    path.write_bytes(b"this is not an image, whatever its name says\n" * 20)
    _refused(path)  # each format words it its own way; the file and the sample are always named


def test_zero_size_array_is_refused_by_the_probe_too(tmp_path: Path) -> None:
    np.save(tmp_path / "empty.npy", np.zeros((0, 5), np.float32))
    _refused(tmp_path / "empty.npy", "zero-size image")


def test_nan_volume_is_still_refused(tmp_path: Path) -> None:
    vol = np.linspace(0, 1, 8 * 8 * 4, dtype=np.float32).reshape(8, 8, 4)
    vol[2, 3, 1] = np.nan
    np.save(tmp_path / "nan.npy", vol)
    _refused(tmp_path / "nan.npy", "1 NaN", probe=False)
    assert probe_image(tmp_path / "nan.npy").shape == (1, 8, 8, 4)  # the header is fine: values need decoding


# --- NRRD / MetaImage through SimpleITK ----------------------------------------------------------------------

SAGITTAL = (0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # index x → S, y → L, z → A (a permuted stack)


@pytest.mark.parametrize("direction", [None, SAGITTAL], ids=["identity", "sagittal"])
@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".mhd"])
def test_sitk_3d_reads_as_its_nifti_with_spacing_kept(tmp_path: Path, suffix: str, direction) -> None:
    sitk = pytest.importorskip("SimpleITK")
    img = sitk.GetImageFromArray(_ramp((6, 5, 4)))  # numpy (z, y, x): an x=4, y=5, z=6 volume
    img.SetSpacing((0.5, 0.75, 2.0))
    if direction is not None:
        img.SetDirection(direction)
    sitk.WriteImage(img, str(tmp_path / f"vol{suffix}"))
    sitk.WriteImage(img, str(tmp_path / "vol.nii"))  # ITK's own NIfTI of the same image: the reference
    ours, ref = read_image(tmp_path / f"vol{suffix}", "v"), read_image(tmp_path / "vol.nii", "v")
    np.testing.assert_array_equal(ours.array, ref.array)
    assert ours.spacing == pytest.approx(ref.spacing)
    assert ours.meta["format"] == suffix[1:] and ours.meta["orientation"] == ref.meta["orientation"]
    assert ours.array.shape[-1] == 6 and ours.is_3d  # the file's slices stay the depth
    assert sorted(ours.spacing) == pytest.approx([0.5, 0.75, 2.0]) and ours.spacing[2] == pytest.approx(2.0)
    assert probe_image(tmp_path / f"vol{suffix}").shape == ours.array.shape


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".mhd"])
def test_sitk_2d_grey_and_rgb(tmp_path: Path, suffix: str) -> None:
    sitk = pytest.importorskip("SimpleITK")
    grey = sitk.GetImageFromArray(_ramp((5, 7)).astype(np.float32))  # numpy (y, x): x=7, y=5
    grey.SetSpacing((0.3, 0.4))
    sitk.WriteImage(grey, str(tmp_path / f"grey{suffix}"))
    got = read_image(tmp_path / f"grey{suffix}")
    assert got.array.shape == (1, 7, 5, 1) and not got.is_3d  # H along ITK's first index, as for NIfTI
    np.testing.assert_array_equal(got.array[0, :, :, 0], _ramp((5, 7)).T)
    assert got.spacing == pytest.approx((0.3, 0.4, 1.0))
    rgb = _ramp((5, 7, 3), np.uint8)
    rgb[..., 1] += 1  # not grey
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp_path / f"rgb{suffix}"))
    got = read_image(tmp_path / f"rgb{suffix}")
    assert got.array.shape == (3, 7, 5, 1)
    np.testing.assert_array_equal(got.array[:, :, :, 0], np.transpose(rgb, (2, 1, 0)))
    assert probe_image(tmp_path / f"rgb{suffix}") == ImageHeader("sitk", (3, 7, 5, 1), "uint8", 105)


# --- probe_image on every format ----------------------------------------------------------------------------


def _series(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True)
    for k in range(n):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [0.0, 0.0, 5.0 * k]
        ds.save_as(folder / f"{k:03d}.dcm", enforce_file_format=True)
    return folder


def _one_of_each(tmp: Path) -> dict[str, Path]:
    files = {"nifti": NIB_DATA / "anatomical.nii", "nifti_4d": NIB_DATA / "example4d.nii.gz",
             "dicom": Path(get_testdata_file("CT_small.dcm")),
             "dicom_multiframe": Path(get_testdata_file("emri_small.dcm")),
             "dicom_series": _series(tmp / "series", 3)}
    Image.fromarray(_ramp((40, 30), np.uint8)).save(tmp / "grey.png")
    Image.fromarray(_ramp((40, 30, 3), np.uint8)).convert("RGB").save(tmp / "colour.jpg")
    np.save(tmp / "vol.npy", _ramp((20, 24, 8)))
    np.savez_compressed(tmp / "vol.npz", image=_ramp((20, 24, 8)), spacing=np.array([0.5, 0.5, 2.0]))
    files.update(png=tmp / "grey.png", jpg=tmp / "colour.jpg", npy=tmp / "vol.npy", npz=tmp / "vol.npz")
    try:
        import SimpleITK as sitk  # noqa: N813

        for suffix in (".nrrd", ".mha", ".mhd"):
            sitk.WriteImage(sitk.GetImageFromArray(_ramp((6, 5, 4))), str(tmp / f"vol{suffix}"))
            files[suffix[1:]] = tmp / f"vol{suffix}"
    except ImportError:
        pass
    return files


def test_probe_image_on_every_format_matches_what_the_reader_decodes(tmp_path: Path) -> None:
    for kind, path in _one_of_each(tmp_path).items():
        header = probe_image(path, kind)
        img = read_image(path, kind)
        assert isinstance(header, ImageHeader), kind
        if kind == "jpg":  # an RGB JPEG's three channels are known only after decoding
            assert header.shape == (3, *img.array.shape[1:]), kind
        else:
            assert header.shape == img.array.shape, (kind, header, img.array.shape)
        assert header.voxels == int(np.prod(header.shape)) and header.bytes >= header.voxels // 8, kind
        assert header.is_3d == img.is_3d, kind
        np.dtype(header.dtype)  # a numpy dtype name


def test_probe_image_reads_no_pixels(tmp_path: Path) -> None:
    """A header claiming more than the file holds is refused as truncated: probe compared, it did not decode."""
    path = _nifti_header_only(tmp_path / "hdr.nii", (64, 64, 16), np.int16)
    with pytest.raises(SampleError, match=r"truncated: the header claims 131,072 bytes of voxel data"):
        probe_image(path, "p")
    header = probe_image(_nifti_header_only(tmp_path / "hdr.nii.gz", (64, 64, 16), np.int16), "p")
    assert header == ImageHeader("nifti", (1, 64, 64, 16), "int16", 131072)


def test_probe_image_names_missing_and_unsupported_files(tmp_path: Path) -> None:
    with pytest.raises(SampleError, match="file not found") as info:
        probe_image(tmp_path / "absent.nii.gz", "row-4")
    assert info.value.sample_id == "row-4"
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(SampleError, match="unsupported format"):
        probe_image(tmp_path / "notes.txt", "row-5")


# --- the data config's limits reach the dataset, which quarantines ----------------------------------------


def test_data_config_limits_reach_the_dataset_and_quarantine(tmp_path: Path, tiny_cfg) -> None:
    from radfm.data.cache import TensorCache
    from radfm.data.config import DataConfig
    from radfm.data.datamodule import RadFMDataModule
    from radfm.data.manifest import read_manifest
    from radfm.data.synth import SynthConfig, generate
    from radfm.data.transforms import TransformConfig
    from radfm.model import factory

    root = tmp_path / "data"
    generate(SynthConfig(n_samples=12, seed=1), root)  # 2D PNGs 64×64, 3D volumes 64×64×16
    samples = read_manifest(root / "manifest.jsonl")
    tokenizer = factory.build_tokenizer(tiny_cfg, [t for s in samples for t in (s.question, s.answer)])
    cfg = DataConfig(manifest=str(root / "manifest.jsonl"), root=str(root), on_error="quarantine",
                     transform=TransformConfig(image_size=32), max_voxels=64 * 64 * 4)
    assert cfg.limits == ImageLimits(max_voxels=64 * 64 * 4, max_bytes=DEFAULT_MAX_BYTES)
    dm = RadFMDataModule(cfg, tokenizer, cache=TensorCache(tmp_path / "cache"),
                         quarantine_path=tmp_path / "quarantine.jsonl")
    dm.setup()
    kept = [s for split in dm.splits.values() for s in split]
    n_3d = sum(s.is_3d for s in samples)
    assert 0 < n_3d < len(samples)
    assert len(kept) + len(dm.quarantine) == len(samples) and len(dm.quarantine) == n_3d
    assert not any(s.is_3d for s in kept)
    report = [json.loads(x) for x in (tmp_path / "quarantine.jsonl").read_text().splitlines()]
    assert all("64×64×16 voxels" in r["reason"] and "data.max_voxels = 16,384" in r["reason"] for r in report)
    assert all(r["file"].endswith(".nii.gz") and r["sample_id"] for r in report)


def test_a_giant_header_in_a_manifest_is_quarantined_with_the_default_limits(tmp_path: Path, tiny_cfg) -> None:
    from radfm.data.config import DataConfig
    from radfm.data.datamodule import RadFMDataModule
    from radfm.data.manifest import read_manifest
    from radfm.data.synth import SynthConfig, generate
    from radfm.data.transforms import TransformConfig
    from radfm.model import factory

    root = tmp_path / "data"
    generate(SynthConfig(n_samples=6, seed=2), root)
    samples = read_manifest(root / "manifest.jsonl")
    victim = next(s for s in samples if s.is_3d).images[0].path
    _nifti_header_only(root / victim, GIANT)
    tokenizer = factory.build_tokenizer(tiny_cfg, [t for s in samples for t in (s.question, s.answer)])
    cfg = DataConfig(manifest=str(root / "manifest.jsonl"), root=str(root), on_error="quarantine",
                     transform=TransformConfig(image_size=32))
    dm = RadFMDataModule(cfg, tokenizer)
    dm.setup()
    hits = [r for r in dm.quarantine.items if r.file and r.file.endswith(victim)]
    assert hits and all("32000×32000×1000" in r.reason and "data.max_voxels" in r.reason for r in hits)
    assert len(dm.quarantine) == len(hits)


def test_loader_yaml_limits_instantiate_to_the_defaults() -> None:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    conf = Path(__file__).resolve().parents[2] / "conf" / "data" / "_loader.yaml"
    root = OmegaConf.create({"seed": 0, "model": {"vision": {"image_size": 32}}, "data": OmegaConf.load(conf)})
    cfg = instantiate(root.data)
    assert cfg.limits == ImageLimits() == ImageLimits(DEFAULT_MAX_VOXELS, DEFAULT_MAX_BYTES)
    assert cfg.limits.max_voxels >= 512**3 and cfg.limits.max_bytes >= 512**3 * 8  # a 512³ CT, even float64


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_non_positive_limits_are_refused_naming_the_key(bad) -> None:
    from radfm.data.config import DataConfig

    with pytest.raises(ValueError, match="data.max_voxels must be a positive integer"):
        DataConfig(max_voxels=bad)


# --- remote paths ---------------------------------------------------------------------------------------------

AWS_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE",
            "AWS_DEFAULT_PROFILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


@pytest.fixture()
def s3_bucket(moto_server, monkeypatch: pytest.MonkeyPatch):
    """A moto bucket holding one NIfTI, reached through RADFM_S3_ENDPOINT_URL (not AWS_ENDPOINT_URL)."""
    s3fs = pytest.importorskip("s3fs")
    bucket = moto_server.bucket()
    moto_server.client().put_object(Bucket=bucket, Key="scans/anat.nii",
                                    Body=(NIB_DATA / "anatomical.nii").read_bytes())
    for key in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("RADFM_S3_ENDPOINT_URL", moto_server.endpoint_url)
    s3fs.S3FileSystem.clear_instance_cache()  # a cached client would keep the credentials it started with
    yield f"s3://{bucket}/scans/anat.nii"
    s3fs.S3FileSystem.clear_instance_cache()


def test_s3_through_radfm_endpoint_setting(s3_bucket: str) -> None:
    assert read_image(s3_bucket, "row-1").array.shape == (1, 33, 41, 25)
    assert probe_image(s3_bucket, "row-1").shape == (1, 33, 41, 25)


def test_s3_without_credentials_is_one_line_naming_the_row_and_the_setting(
        s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from radfm.data.cache import TensorCache
    from radfm.data.transforms import TransformConfig, preprocess

    for key in AWS_KEYS:
        if key not in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            monkeypatch.delenv(key, raising=False)
    [err, _] = _refused(s3_bucket, "no S3 credentials", "AWS_ACCESS_KEY_ID", "RADFM_S3_ENDPOINT_URL",
                        sample_id="row-7")
    assert str(err).startswith(f"sample row-7: file {s3_bucket}: ")
    # the training path hashes the file for the cache before it reads it: the same line, the same row
    with pytest.raises(SampleError, match="no S3 credentials") as info:
        preprocess(s3_bucket, TransformConfig(image_size=32), "row-8", cache=TensorCache(tmp_path / "c"))
    assert info.value.sample_id == "row-8" and info.value.file == s3_bucket and "\n" not in str(info.value)


def test_s3_unreachable_endpoint_names_the_setting(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("RADFM_S3_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's own setting: one try keeps the test short
    _refused(s3_bucket, "cannot reach the S3 endpoint", f"RADFM_S3_ENDPOINT_URL (now http://127.0.0.1:{port})",
             sample_id="row-9")


@pytest.mark.parametrize("user_value", [None, "false"])
def test_radfm_disables_the_cloud_metadata_probe_unless_the_user_set_it(user_value: str | None) -> None:
    import os

    env = {k: v for k, v in os.environ.items() if k != "AWS_EC2_METADATA_DISABLED"}
    if user_value is not None:
        env["AWS_EC2_METADATA_DISABLED"] = user_value
    out = subprocess.run([sys.executable, "-c", "import os, radfm; print(os.environ['AWS_EC2_METADATA_DISABLED'])"],
                         env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert out == (user_value or "true")


# --- weights ---------------------------------------------------------------------------------------------------


def test_truncated_safetensors_names_the_file(tmp_path: Path, tiny_model, tiny_tokenizer) -> None:
    from radfm.model.checkpoint import WEIGHTS, CorruptWeightsError, load_pretrained, save_pretrained
    from radfm.model.convert import load_official_state_dict

    ckpt = save_pretrained(tiny_model, tiny_tokenizer, tmp_path / "model")
    weights = ckpt / WEIGHTS
    data = weights.read_bytes()
    for n in (len(data) // 2, 6):  # cut in the tensors, cut in the header's length field
        weights.write_bytes(data[:n])
        for load in (lambda: load_pretrained(ckpt), lambda: load_official_state_dict(weights)):
            with pytest.raises(CorruptWeightsError) as info:
                load()
            msg = str(info.value)
            assert str(weights) in msg and "truncated or corrupt" in msg and "\n" not in msg, msg
