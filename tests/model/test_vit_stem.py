"""The opt-in convolutional stem of the ViT (Xiao et al. 2021): shapes, default off, gradients, bad patch sizes."""

from __future__ import annotations

import pytest
import torch

from radfm.model.config import VisionConfig
from radfm.model.vit3d import ConvStem, ViT3D


def cfg(**kw) -> VisionConfig:
    base = dict(in_channels=1, image_size=28, max_image_size=28, max_depth=4, patch_size=4, patch_depth=1,
                width=32, layers=1, heads=2, dim_head=16, mlp_dim=64, min_depth=1, patch_norm=False)
    return VisionConfig(**{**base, **kw})


def test_stem_is_off_by_default_and_the_patch_projection_keeps_radfms_shape():
    vit = ViT3D(cfg())
    assert vit.stem is None
    assert vit.patch_proj.in_features == 1 * 4 * 4 * 1
    assert VisionConfig().stem_channels == 0


@pytest.mark.parametrize("patch_size,depth,patch_depth", [(4, 1, 1), (2, 1, 1), (4, 4, 2)])
def test_stem_tokens_match_the_patch_grid(patch_size, depth, patch_depth):
    torch.manual_seed(0)
    c = cfg(patch_size=patch_size, patch_depth=patch_depth, min_depth=patch_depth, stem_channels=8)
    vit = ViT3D(c)
    n_convs = patch_size.bit_length() - 1
    assert vit.stem.out_channels == 8 << (n_convs - 1)
    assert vit.patch_proj.in_features == vit.stem.out_channels * patch_depth
    x = torch.randn(2, 1, 28, 28, depth)
    feat = vit.stem(x)
    assert feat.shape == (2, vit.stem.out_channels, 28 // patch_size, 28 // patch_size, depth)
    out = vit(x)
    g = 28 // patch_size
    assert out.shape == (2, g * g * (depth // patch_depth), c.width)
    out.sum().backward()
    assert vit.stem.net[0].weight.grad is not None and vit.stem.net[0].weight.grad.abs().sum() > 0


def test_stem_convolves_each_slice_on_its_own():
    torch.manual_seed(0)
    stem = ConvStem(1, 4, 4).eval()
    a, b = torch.randn(1, 1, 16, 16, 1), torch.randn(1, 1, 16, 16, 1)
    both = stem(torch.cat([a, b], dim=-1))
    assert torch.allclose(both[..., :1], stem(a), atol=1e-6)
    assert torch.allclose(both[..., 1:], stem(b), atol=1e-6)


@pytest.mark.parametrize("patch_size", [1, 3, 6])
def test_stem_needs_a_power_of_two_patch(patch_size):
    with pytest.raises(ValueError, match="power-of-2"):
        ViT3D(cfg(patch_size=patch_size, stem_channels=8))


def test_stem_blocks_add_residual_convolutions_at_each_stage_and_keep_the_grid():
    torch.manual_seed(0)
    c = cfg(patch_size=4, stem_channels=8, stem_blocks=2)
    vit = ViT3D(c)
    convs = [m for m in vit.stem.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 2 * (1 + 2)  # two stride-2 stages, each followed by two stride-1 convolutions
    assert [m.stride for m in convs] == [(2, 2), (1, 1), (1, 1)] * 2
    x = torch.randn(2, 1, 28, 28, 1)
    assert vit.stem(x).shape == (2, 16, 7, 7, 1)
    out = vit(x)
    assert out.shape == (2, 49, c.width)
    out.sum().backward()
    assert all(m.weight.grad is not None and m.weight.grad.abs().sum() > 0 for m in convs)


def test_a_2d_image_is_stemmed_once_with_the_same_result_as_its_repeated_slices():
    """The stem runs before the 2D → min_depth repeat: the same tokens and batch-norm statistics as stemming
    the min_depth identical slices (train mode, so the batch statistics are used and updated)."""
    import copy

    torch.manual_seed(0)
    c = cfg(patch_size=4, patch_depth=2, min_depth=4, max_depth=4, stem_channels=8, stem_blocks=1)
    once = ViT3D(c).train()
    every = copy.deepcopy(once)
    x = torch.randn(3, 1, 28, 28, 1)
    got = once(x)
    want = every(x.repeat_interleave(4, dim=-1))  # depth 4 already: every slice goes through the stem
    assert got.shape == want.shape == (3, 7 * 7 * 2, c.width)
    assert torch.allclose(got, want, atol=1e-5)
    for a, b in zip(once.stem.modules(), every.stem.modules(), strict=True):
        if isinstance(a, torch.nn.BatchNorm2d):
            assert torch.allclose(a.running_mean, b.running_mean, atol=1e-6)
            # The running variance is unbiased (× n/(n−1)) over 4× fewer values: 588 vs 2352 here.
            assert torch.allclose(a.running_var, b.running_var, rtol=3e-3)


def test_group_norm_stem_has_no_running_statistics_and_reads_the_same_in_train_and_eval():
    torch.manual_seed(0)
    c = cfg(patch_size=4, stem_channels=8, stem_blocks=1, stem_norm="group")
    vit = ViT3D(c)
    norms = [m for m in vit.stem.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert len(norms) == 4 and not any(isinstance(m, torch.nn.BatchNorm2d) for m in vit.stem.modules())
    x = torch.randn(2, 1, 28, 28, 1)
    assert torch.allclose(vit.train()(x), vit.eval()(x))
    # Each image is normalised on its own: its tokens do not depend on what else is in the batch.
    assert torch.allclose(vit(x)[:1], vit(x[:1]), atol=1e-5)
    with pytest.raises(ValueError, match="stem norm"):
        ViT3D(cfg(patch_size=4, stem_channels=8, stem_norm="layer"))
