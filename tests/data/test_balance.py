"""Class-balanced training batches (``data.balance``) and the X-ray augmentations (rotation/shift, intensity)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from radfm.data.config import DataConfig, class_of
from radfm.data.manifest import Sample
from radfm.data.sampler import ModalityBatchSampler
from radfm.data.transforms import RandomAffine2D, RandomIntensity, TransformConfig, tail_transforms

CLASSES = [1] * 45 + [0] * 5  # 10% minority, like PneumoniaMNIST's train split


def indices(batch):
    return [i for i, _ in batch]


def test_balanced_batches_hold_each_class_equally():
    s = ModalityBatchSampler([False] * 50, 10, 4, seed=0, classes=CLASSES)
    batches = [indices(b) for b in s]
    assert len(batches) == 9 == len(s)  # 2 classes × 45 = 90 samples
    for b in batches:
        assert Counter(CLASSES[i] for i in b) == {0: 5, 1: 5}
    seen = Counter(i for b in batches for i in b)
    assert all(seen[i] == 1 for i in range(45))  # the majority class once each
    assert all(seen[i] == 9 for i in range(45, 50))  # each minority sample 45 / 5 = 9 times


def test_balanced_order_is_seeded_and_changes_with_the_epoch():
    a = ModalityBatchSampler([False] * 50, 10, 4, seed=3, classes=CLASSES)
    b = ModalityBatchSampler([False] * 50, 10, 4, seed=3, classes=CLASSES)
    first = [indices(x) for x in a]
    assert first == [indices(x) for x in b]
    a.set_epoch(1)
    assert [indices(x) for x in a] != first


def test_balance_keeps_modalities_apart_and_ignores_evaluation():
    is_3d = [i % 2 == 0 for i in range(50)]
    s = ModalityBatchSampler(is_3d, 6, 2, seed=1, classes=CLASSES)
    for b in s:
        assert len({is_3d[i] for i in indices(b)}) == 1
    plain = ModalityBatchSampler([False] * 50, 10, 4, shuffle=False, classes=CLASSES)
    assert [i for b in plain for i in indices(b)] == list(range(50))
    one_class = ModalityBatchSampler([False] * 6, 3, 2, seed=0, classes=[1] * 6)
    assert sorted(i for b in one_class for i in indices(b)) == list(range(6))
    with pytest.raises(ValueError, match="classes has 3"):
        ModalityBatchSampler([False] * 4, 2, 2, classes=[0, 1, 0])


def test_class_keys():
    s = Sample(id="a", task="diagnosis", split="train", question="Is there pneumonia?", answer="Yes",
               labels=["pneumonia"], meta={"label": 1})
    assert class_of(s, "label") == 1
    assert class_of(s, "answer") == "yes"
    assert class_of(s.model_copy(update={"meta": None}), "label") == ("pneumonia",)
    assert DataConfig().balance is None
    with pytest.raises(ValueError, match="balance"):
        DataConfig(balance="labels")


def test_affine_keeps_shape_and_is_reproducible():
    x = np.random.default_rng(0).normal(size=(1, 28, 28, 1)).astype(np.float32)
    t = RandomAffine2D(10, 0.1)
    a = t({"image": x, "rng": np.random.default_rng(5)})
    b = t({"image": x, "rng": np.random.default_rng(5)})
    assert a["image"].shape == x.shape and np.array_equal(a["image"], b["image"])
    assert abs(a["meta"]["affine"]["degrees"]) <= 10
    assert not np.allclose(a["image"], x)
    same = RandomAffine2D(0, 0)({"image": x, "rng": np.random.default_rng(5)})
    assert np.array_equal(same["image"], x)


def test_affine_rotates_about_the_centre():
    x = np.zeros((1, 9, 9, 1), np.float32)
    x[0, 4, 1:8, 0] = 1.0  # a horizontal bar through the centre

    class Fixed:
        def uniform(self, lo, hi):  # 90° and no shift
            return hi if hi == 90 else 0.0

    y = RandomAffine2D(90, 0.0)({"image": x, "rng": Fixed()})["image"][0, :, :, 0]
    assert y[1:8, 4].min() > 0.99 and y[4, 1] < 0.01  # now vertical


def test_intensity_is_affine_in_its_recorded_factors():
    x = np.linspace(-2, 2, 28 * 28, dtype=np.float32).reshape(1, 28, 28, 1)
    out = RandomIntensity(0.2, 0.3)({"image": x, "rng": np.random.default_rng(1)})
    a, b = out["meta"]["intensity"]["contrast"], out["meta"]["intensity"]["brightness"]
    assert 0.8 <= a <= 1.2 and -0.3 <= b <= 0.3
    np.testing.assert_allclose(out["image"], a * x + b, rtol=1e-5, atol=1e-6)


def test_new_augmentations_are_off_by_default_and_outside_the_cache_key():
    cfg = TransformConfig()
    assert len(tail_transforms(cfg, train=True)) == 2  # crop + channels, as before
    aug = TransformConfig(rotate_degrees=10, translate=0.05, contrast=0.1, brightness=0.2)
    assert aug.key() == cfg.key()
    assert len(tail_transforms(aug, train=True)) == 4
    assert len(tail_transforms(aug, train=False)) == 1
