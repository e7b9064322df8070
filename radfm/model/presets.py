"""Model presets: ``tiny`` (CPU, minutes), ``small`` (~100M), ``base`` (RadFM's 13B shape), and the two fixed
reference configurations the benchmark uses to compare with the original implementation at equal sizes.

``conf/model/*.yaml`` mirror these (a test keeps them equal); Hydra instantiates them via ``make_config``.
"""

from __future__ import annotations

from typing import Any

from radfm.model.config import LMConfig, RadFMConfig, ResamplerConfig, TokenizerConfig, VisionConfig


def make_config(**kwargs: Any) -> RadFMConfig:
    """Hydra entry point: ``_target_: radfm.model.presets.make_config`` with the config's sections."""
    return RadFMConfig.from_dict(kwargs)


def tiny() -> RadFMConfig:
    return RadFMConfig(
        name="tiny",
        vision=VisionConfig(image_size=64, max_image_size=64, max_depth=64, patch_size=8, patch_depth=4,
                            width=192, layers=4, heads=4, dim_head=48, mlp_dim=512, min_depth=4, patch_norm=False),
        resampler=ResamplerConfig(dim=192, layers=2, heads=4, dim_head=48, ff_mult=2, num_latents=32),
        lm=LMConfig(hidden_size=256, layers=4, heads=4, intermediate_size=688, vocab_size=4096,
                    max_position_embeddings=512),
        tokenizer=TokenizerConfig(kind="bpe", vocab_size=4096),
        max_length=512,
    )


def small() -> RadFMConfig:
    return RadFMConfig(
        name="small",
        vision=VisionConfig(image_size=128, max_image_size=256, max_depth=128, patch_size=16, patch_depth=4,
                            width=512, layers=6, heads=8, dim_head=64, mlp_dim=2048, min_depth=4, patch_norm=False),
        resampler=ResamplerConfig(dim=512, layers=3, heads=8, dim_head=64, ff_mult=4, num_latents=32),
        lm=LMConfig(hidden_size=768, layers=8, heads=12, intermediate_size=2048, vocab_size=16000,
                    max_position_embeddings=1024),
        tokenizer=TokenizerConfig(kind="bpe", vocab_size=16000),
        max_length=1024,
    )


def base() -> RadFMConfig:
    """RadFM's released shape: ViT 768×12 (patch 32×32×4, up to 512³), resampler 768×6, LLaMA-13B LM."""
    return RadFMConfig(
        name="base",
        vision=VisionConfig(image_size=512, max_image_size=512, max_depth=512, patch_size=32, patch_depth=4,
                            width=768, layers=12, heads=8, dim_head=64, mlp_dim=2048, dropout=0.1,
                            min_depth=4),
        resampler=ResamplerConfig(dim=768, layers=6, heads=8, dim_head=64, ff_mult=4, num_latents=32),
        lm=LMConfig(hidden_size=5120, layers=40, heads=40, intermediate_size=13824, vocab_size=32003,
                    max_position_embeddings=2048),
        tokenizer=TokenizerConfig(kind="local", vocab_size=32003, path=None),
        max_length=2048,
        gradient_checkpointing=True,
    )


def ref_tiny() -> RadFMConfig:
    """Fixed comparison size (keep exact): image 64×64×8, patch 16×16×2, sequence 256."""
    return RadFMConfig(
        name="ref-tiny",
        vision=VisionConfig(image_size=64, max_image_size=64, max_depth=8, patch_size=16, patch_depth=2,
                            width=264, layers=4, heads=4, dim_head=None, mlp_dim=512, min_depth=2),
        resampler=ResamplerConfig(dim=264, layers=2, heads=8, dim_head=64, ff_mult=4, num_latents=32),
        lm=LMConfig(hidden_size=256, layers=4, heads=4, intermediate_size=688, vocab_size=32000,
                    max_position_embeddings=256),
        tokenizer=TokenizerConfig(kind="bpe", vocab_size=32000),
        max_length=256,
    )


def ref_small() -> RadFMConfig:
    """Fixed comparison size (keep exact): image 128×128×16, patch 16×16×4, sequence 512."""
    return RadFMConfig(
        name="ref-small",
        vision=VisionConfig(image_size=128, max_image_size=128, max_depth=16, patch_size=16, patch_depth=4,
                            width=384, layers=6, heads=6, dim_head=None, mlp_dim=1536, min_depth=4),
        resampler=ResamplerConfig(dim=384, layers=4, heads=8, dim_head=64, ff_mult=4, num_latents=32),
        lm=LMConfig(hidden_size=512, layers=8, heads=8, intermediate_size=1376, vocab_size=32000,
                    max_position_embeddings=512),
        tokenizer=TokenizerConfig(kind="bpe", vocab_size=32000),
        max_length=512,
    )


def mnist28() -> RadFMConfig:
    """2D 28×28 grey images (MedMNIST): ~1.5M parameters, patch 4×4 (a 7×7 grid), for CPU minutes.

    A lesion inside a single patch is hard for a ViT to see, so the patch is small relative to the image;
    one channel and depth 1 because MedMNIST's 2D sets are single grey slices.
    """
    return RadFMConfig(
        name="mnist28",
        vision=VisionConfig(in_channels=1, image_size=28, max_image_size=28, max_depth=1, patch_size=4,
                            patch_depth=1, width=128, layers=4, heads=4, dim_head=32, mlp_dim=256, min_depth=1,
                            patch_norm=False, stem_channels=0),
        resampler=ResamplerConfig(dim=128, layers=1, heads=4, dim_head=32, ff_mult=2, num_latents=32),
        lm=LMConfig(hidden_size=128, layers=2, heads=4, intermediate_size=344, vocab_size=1024,
                    max_position_embeddings=128),
        tokenizer=TokenizerConfig(kind="bpe", vocab_size=1024),
        max_length=128,
    )


PRESETS = {"tiny": tiny, "small": small, "base": base, "ref-tiny": ref_tiny, "ref-small": ref_small,
           "mnist28": mnist28}


def preset(name: str) -> RadFMConfig:
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}") from None
