"""Transforms, the preprocessing pipeline and the tensor cache, on real files the packages ship."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import nibabel as nib
import nibabel.testing
import numpy as np
import pytest
import torch
from pydicom.data import get_testdata_file

from radfm.data.cache import TensorCache
from radfm.data.errors import SampleError
from radfm.data.readers import read_image
from radfm.data.transforms import (
    DEFAULT_BUCKETS,
    Compose,
    DepthBucket,
    Normalize,
    RandomResizedCrop,
    Resize,
    ToChannels,
    TransformConfig,
    ZeroCentre,
    bucket_depth,
    build_transforms,
    preprocess,
)

NIB_DATA = Path(nibabel.testing.data_path)
CT = Path(get_testdata_file("CT_small.dcm"))
MR = Path(get_testdata_file("MR_small.dcm"))
EMRI = Path(get_testdata_file("emri_small.dcm"))
ANAT = NIB_DATA / "anatomical.nii"


def as_data(path: Path) -> dict:
    img = read_image(path)
    return {"image": img.array, "meta": {**img.meta, "modality": img.modality, "spacing": img.spacing}}


# --- single transforms -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("depth", "bucket"), [(13, 12), (14, 16), (10, 12), (70, 64), (500, 64), (2, 4),
                                               (3, 4), (4, 4), (48, 48), (1, 1)])
def test_bucket_depth(depth: int, bucket: int) -> None:
    assert bucket_depth(depth, DEFAULT_BUCKETS) == bucket


def test_depth_bucket_on_volumes() -> None:
    vol = read_image(ANAT).array  # 1×33×41×25
    out = DepthBucket()({"image": vol[..., :13], "meta": {"spacing": (2.0, 2.0, 2.0)}})
    assert out["image"].shape == (1, 33, 41, 12) and out["meta"]["source_depth"] == 13
    assert out["meta"]["spacing"][2] == pytest.approx(2.0 * 13 / 12)
    deep = np.concatenate([vol, vol, vol], axis=-1)  # 75 slices
    assert DepthBucket()({"image": deep, "meta": {}})["image"].shape[-1] == 64
    flat = {"image": vol[..., :1], "meta": {}}
    assert DepthBucket()(flat)["image"].shape[-1] == 1  # 2D stays 2D: the model brings it to its min depth


def test_ct_window_versus_percentile() -> None:
    data = as_data(CT)
    hu = data["image"]
    auto = Normalize("auto")(data)
    assert auto["meta"]["normalize"]["mode"] == "ct_window"
    np.testing.assert_allclose(auto["image"], np.clip((hu + 1000) / 2000, 0, 1), atol=1e-6)
    pct = Normalize("percentile")(data)
    lo, hi = np.percentile(hu, (0.5, 99.5))
    np.testing.assert_allclose(pct["image"], np.clip((hu - lo) / (hi - lo), 0, 1), atol=1e-6)
    assert not np.allclose(auto["image"], pct["image"])
    narrow = Normalize("ct_window", window=(-160, 240))(data)  # a soft-tissue window saturates air and bone
    assert (narrow["image"] == 0).mean() > (auto["image"] == 0).mean()
    mr = Normalize("auto")(as_data(MR))
    assert mr["meta"]["normalize"]["mode"] == "percentile"
    for out in (auto, pct, mr):
        assert out["image"].dtype == np.float32 and out["image"].min() >= 0 and out["image"].max() <= 1
    assert Normalize()({"image": np.full((1, 4, 4, 1), 3.0, np.float32), "meta": {}})["image"].max() == 0


def test_percentiles_of_a_large_image_come_from_a_sample_close_to_exact() -> None:
    data = as_data(Path(get_testdata_file("RG1_UNCI.dcm")))  # 1955×1841 CR chest: 3.6 M pixels
    x = data["image"]
    meta = Normalize("percentile")(data)["meta"]["normalize"]
    lo, hi = np.percentile(x, (0.5, 99.5))
    span = float(x.max() - x.min())
    assert abs(meta["lo"] - lo) < 0.01 * span and abs(meta["hi"] - hi) < 0.01 * span


def test_resize_in_plane_antialiased_and_spacing_kept_in_mm() -> None:
    data = Normalize()(as_data(EMRI))
    out = Resize(32)(data)
    assert out["image"].shape == (1, 32, 32, 10) and out["image"].dtype == np.float32
    assert out["meta"]["spacing"] == pytest.approx((2.0, 2.0, 1.2))
    up = Resize(100)(as_data(CT))
    assert up["image"].shape == (1, 100, 100, 1)
    # a one-pixel checkerboard halved: with antialiasing it averages to flat grey instead of aliasing
    board = (np.indices((128, 128)).sum(0) % 2).astype(np.float32)[None, ..., None]
    small = Resize(64)({"image": board, "meta": {}})["image"]
    assert abs(small.mean() - 0.5) < 1e-3 and small.std() < 0.05


def test_to_channels_and_zero_centre() -> None:
    x = Normalize()(as_data(MR))
    three = ToChannels(3)(x)["image"]
    assert three.shape == (3, 64, 64, 1)
    np.testing.assert_array_equal(three[0], three[2])
    assert ToChannels(1)({"image": three, "meta": {}})["image"].shape == (1, 64, 64, 1)
    z = ZeroCentre(0.5, 0.25)(x)["image"]
    np.testing.assert_allclose(z, (x["image"] - 0.5) / 0.25, atol=1e-6)
    assert z.min() >= -2 and z.max() <= 2


def test_output_is_zero_centred_on_a_typical_image() -> None:
    unit = TransformConfig(zero_centre=False, channels=1)
    centred = TransformConfig(channels=1)
    # CT_small: a body slice that fills the field of view, the typical case
    x0, x1 = preprocess(CT, unit), preprocess(CT, centred)
    assert 0.2 < float(x0.mean()) < 0.8  # [0, 1] images are all positive…
    assert abs(float(x1.mean())) < 0.5 and float(x1.min()) < 0 < float(x1.max())  # …centred ones straddle 0
    # fixed constants centre the [0, 1] range, not each image: background-heavy MR stays below 0 on average
    for p in (MR, EMRI, ANAT):
        x = preprocess(p, centred)
        lo, hi = float(x.min()), float(x.max())
        assert -2 <= lo < 0 < hi <= 2


def test_random_resized_crop_seeded_and_in_bounds() -> None:
    data = Normalize()(as_data(EMRI))
    crop = RandomResizedCrop((0.5, 1.0))
    a = crop({**data, "rng": np.random.default_rng(7)})
    b = crop({**data, "rng": np.random.default_rng(7)})
    c = crop({**data, "rng": np.random.default_rng(8)})
    np.testing.assert_array_equal(a["image"], b["image"])
    assert a["meta"]["crop"] != c["meta"]["crop"]
    assert a["image"].shape == data["image"].shape
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = crop.box(64, 48, rng)
        assert top >= 0 and left >= 0 and top + h <= 64 and left + w <= 48
        assert 0.5 * 64 * 48 * 0.9 <= h * w <= 64 * 48
    seeded = RandomResizedCrop(rng=np.random.default_rng(3))
    again = RandomResizedCrop(rng=np.random.default_rng(3))
    assert seeded(data)["meta"]["crop"] == again(data)["meta"]["crop"]


# --- the pipeline ------------------------------------------------------------------------------------------


def test_config_key_is_stable_and_only_covers_the_cached_part() -> None:
    a = TransformConfig()
    assert a.key() == TransformConfig().key() and len(a.key()) == 16
    hydra_like = TransformConfig(ct_window=[-1000, 1000], depth_buckets=list(DEFAULT_BUCKETS))
    assert hydra_like.key() == a.key()
    assert TransformConfig(image_size=32).key() != a.key()
    assert TransformConfig(normalize="percentile").key() != a.key()
    assert TransformConfig(zero_centre=False).key() != a.key()
    # augmentation and channel replication run after the cache, so they do not split it
    assert TransformConfig(crop_scale=(0.5, 1.0), augment=False, channels=1).key() == a.key()
    with pytest.raises(ValueError):
        TransformConfig(normalize="zscore")


def test_build_transforms_eval_deterministic_train_random_but_seeded() -> None:
    cfg = TransformConfig()
    data = as_data(EMRI)
    ev = build_transforms(cfg, train=False)
    assert isinstance(ev, Compose) and not any(isinstance(t, RandomResizedCrop) for t in ev.transforms)
    np.testing.assert_array_equal(ev(data)["image"], ev(data)["image"])
    out = ev(data)["image"]
    assert out.shape == (3, 64, 64, 12) and out.dtype == np.float32
    tr = build_transforms(cfg, train=True, rng=np.random.default_rng(0))
    e1, e2 = tr(data)["image"], tr(data)["image"]  # two epochs from one generator
    assert not np.array_equal(e1, e2)
    replay = build_transforms(cfg, train=True, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(replay(data)["image"], e1)
    np.testing.assert_array_equal(replay(data)["image"], e2)
    assert len(build_transforms(TransformConfig(augment=False), train=True)) == len(ev)


@pytest.mark.parametrize(("path", "shape"), [(CT, (3, 64, 64, 1)), (EMRI, (3, 64, 64, 12)),
                                             (NIB_DATA / "example4d.nii.gz", (3, 64, 64, 24))])
def test_preprocess_shapes(path: Path, shape: tuple) -> None:
    x = preprocess(path, TransformConfig(), sample_id="s")
    assert isinstance(x, torch.Tensor) and x.dtype == torch.float32 and tuple(x.shape) == shape
    assert x.is_contiguous()


def test_preprocess_errors_name_the_sample(tmp_path: Path) -> None:
    with pytest.raises(SampleError) as e:
        preprocess(tmp_path / "gone.nii.gz", TransformConfig(), sample_id="p-9",
                   cache=TensorCache(tmp_path / "c"))
    assert "p-9" in str(e.value) and "gone.nii.gz" in str(e.value)


# --- the cache ---------------------------------------------------------------------------------------------


def test_cached_equals_uncached_and_hits(tmp_path: Path) -> None:
    cfg = TransformConfig()
    cache = TensorCache(tmp_path / "cache")
    for path in (CT, EMRI, ANAT):
        plain = preprocess(path, cfg)
        first = preprocess(path, cfg, cache=cache)
        second = preprocess(path, cfg, cache=cache)
        assert torch.equal(plain, first) and torch.equal(first, second)
    assert cache.stats() == {"hits": 3, "misses": 3} and len(cache) == 3
    assert not list((tmp_path / "cache").rglob(".tmp-*"))


def test_train_augmentation_runs_after_the_cache(tmp_path: Path) -> None:
    cfg = TransformConfig()
    cache = TensorCache(tmp_path / "cache")
    rng = np.random.default_rng(1)
    epochs = [preprocess(EMRI, cfg, cache=cache, train=True, rng=rng) for _ in range(3)]
    assert cache.hits == 2 and cache.misses == 1  # cached once…
    # …yet random each epoch
    assert not torch.equal(epochs[0], epochs[1]) and not torch.equal(epochs[1], epochs[2])
    rng2 = np.random.default_rng(1)
    replay = [preprocess(EMRI, cfg, train=True, rng=rng2) for _ in range(3)]  # no cache: same draws
    for a, b in zip(epochs, replay):
        torch.testing.assert_close(a, b)


def test_changed_bytes_or_config_miss_the_cache(tmp_path: Path) -> None:
    cfg = TransformConfig()
    cache = TensorCache(tmp_path / "cache")
    path = tmp_path / "vol.nii.gz"
    img = nib.load(ANAT)
    nib.save(img, path)
    before = preprocess(path, cfg, cache=cache)
    preprocess(path, cfg, cache=cache)
    assert cache.stats() == {"hits": 1, "misses": 1}
    stat = path.stat()
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj)[::-1].copy(), img.affine, img.header), path)
    # the hash memo trusts (inode, size, mtime): move mtime on explicitly, as the file system's tick may not
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10_000_000))
    after = preprocess(path, cfg, cache=cache)
    assert cache.misses == 2 and not torch.equal(before, after)
    preprocess(path, TransformConfig(image_size=32), cache=cache)
    assert cache.misses == 3
    preprocess(path, TransformConfig(percentiles=(1.0, 99.0)), cache=cache)
    assert cache.misses == 4
    preprocess(path, TransformConfig(crop_scale=(0.5, 1.0)), cache=cache)
    assert cache.hits == 2  # an augmentation-only change reuses the cached tensor


def test_series_folder_content_hash_covers_every_slice(tmp_path: Path) -> None:
    import pydicom

    (tmp_path / "series").mkdir()
    src = pydicom.dcmread(EMRI)
    for k in range(3):  # three single-frame slices cut from a real multi-frame MR
        ds = pydicom.dcmread(EMRI)
        del ds.NumberOfFrames
        ds.PixelData = np.ascontiguousarray(src.pixel_array[k]).tobytes()
        ds.InstanceNumber = k + 1
        ds.save_as(tmp_path / "series" / f"s{k}.dcm", enforce_file_format=True)
    assert read_image(tmp_path / "series").array.shape == (1, 64, 64, 3)
    cache = TensorCache(tmp_path / "cache")
    h0 = cache.content_hash(tmp_path / "series")
    assert cache.content_hash(tmp_path / "series") == h0
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "series", copy)
    assert cache.content_hash(copy) == h0  # content-addressed: the place does not matter
    victim = tmp_path / "series" / "s1.dcm"
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(victim.stat().st_atime_ns, victim.stat().st_mtime_ns + 10_000_000))
    assert cache.content_hash(tmp_path / "series") != h0


def test_damaged_entry_is_recomputed(tmp_path: Path) -> None:
    cache = TensorCache(tmp_path / "cache")
    cfg = TransformConfig()
    good = preprocess(CT, cfg, cache=cache)
    entry = cache.entry(cache.key(CT, cfg.key()))
    entry.write_bytes(entry.read_bytes()[:100])
    assert torch.equal(preprocess(CT, cfg, cache=cache), good) and cache.misses == 2


def test_concurrent_writers_leave_one_whole_entry(tmp_path: Path) -> None:
    cache = TensorCache(tmp_path / "cache")
    cfg = TransformConfig()
    results: list[torch.Tensor] = []

    def work() -> None:
        results.append(preprocess(EMRI, cfg, cache=TensorCache(tmp_path / "cache")))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8 and all(torch.equal(r, results[0]) for r in results)
    assert len(cache) == 1 and not list((tmp_path / "cache").rglob(".tmp-*"))
    assert torch.equal(preprocess(EMRI, cfg, cache=cache), results[0]) and cache.hits == 1


def test_default_root_is_under_radfm_home(radfm_home: Path) -> None:
    assert TensorCache().root.resolve() == (radfm_home / "cache" / "tensors").resolve()


def test_zero_centre_per_image_standardises_each_image():
    from radfm.data.transforms import ZeroCentre

    img = np.concatenate([np.zeros((1, 8, 8, 1)), np.full((1, 8, 8, 1), 0.3)], axis=1).astype(np.float32)
    out = ZeroCentre(per_image=True)({"image": img})["image"]
    assert abs(float(out.mean())) < 1e-6 and abs(float(out.std()) - 1.0) < 1e-5
    flat = ZeroCentre(per_image=True)({"image": np.full((1, 4, 4, 1), 0.7, np.float32)})["image"]
    assert np.all(flat == 0)  # a constant image stays finite
    fixed = ZeroCentre()({"image": img})["image"]
    assert float(fixed.mean()) < -1.0  # what the fixed shift does to a dark image


def test_checkpoint_transform_reads_what_training_saved(tmp_path):
    import json

    from radfm.data.transforms import TransformConfig, checkpoint_transform

    assert checkpoint_transform(tmp_path, 32) == TransformConfig(image_size=32, augment=False)
    saved = {"image_size": 64, "standardize": True, "depth_buckets": [4, 8], "augment": True, "rotate_degrees": 10}
    (tmp_path / "radfm.json").write_text(json.dumps({"transform": saved}))
    cfg = checkpoint_transform(tmp_path, 32)
    assert cfg.standardize and cfg.image_size == 64 and cfg.depth_buckets == (4, 8)
    assert not cfg.augment and cfg.rotate_degrees == 0.0  # evaluation never augments
    assert cfg.key() == TransformConfig(image_size=64, standardize=True, depth_buckets=(4, 8)).key()
