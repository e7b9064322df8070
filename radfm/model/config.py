"""Typed configuration of the RadFM model; saved beside the weights so the model can be rebuilt exactly."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class VisionConfig:
    """3D ViT over C×H×W×D inputs cut into ``patch_size × patch_size × patch_depth`` patches.

    ``max_image_size`` and ``max_depth`` size the factorised position tables (one row per patch along
    each axis); smaller grids index those tables with a stride, as RadFM does.
    """

    in_channels: int = 3
    image_size: int = 512
    max_image_size: int = 512
    max_depth: int = 512
    patch_size: int = 32
    patch_depth: int = 4
    width: int = 768
    layers: int = 12
    heads: int = 8
    dim_head: int | None = 64
    mlp_dim: int = 2048
    dropout: float = 0.0
    min_depth: int = 4
    # RadFM LayerNorms each raw patch before projecting it. That discards a patch's mean intensity, which is
    # exactly what separates a flat bright lesion from tissue; small presets turn it off.
    patch_norm: bool = True
    # Opt-in convolutional stem (Xiao et al. 2021, "Early convolutions help transformers see better"): 0 = off,
    # RadFM's linear patch projection. N > 0: log2(patch_size) in-plane 3×3 stride-2 convolutions
    # (N, 2N, 4N, … channels, BatchNorm + ReLU) replace the in-plane patchify; see ViT3D. patch_size must then
    # be a power of 2.
    stem_channels: int = 0
    # With the stem: residual 3×3 stride-1 convolutions after each stride-2 one (ConvStem's ``blocks``).
    stem_blocks: int = 0
    # The stem's normalisation: "batch" (BatchNorm) or "group" (GroupNorm; see ConvStem for why).
    stem_norm: str = "batch"

    def __post_init__(self) -> None:
        # A 2D image is repeated to min_depth slices and then cut into patch_depth slabs: refuse a pair that
        # cannot be cut here, not at the first forward pass of a run.
        if self.patch_depth < 1 or self.min_depth < 1 or self.min_depth % self.patch_depth:
            raise ValueError(f"vision.min_depth = {self.min_depth} must be a positive multiple of "
                             f"vision.patch_depth = {self.patch_depth} (2D images are repeated to min_depth "
                             f"slices, then cut into patch_depth slabs)")

    @property
    def head_dim(self) -> int:
        return self.dim_head if self.dim_head is not None else self.width // self.heads


@dataclass
class ResamplerConfig:
    """Perceiver resampler: ``num_latents`` learned queries attend to image tokens ++ latents."""

    dim: int = 768
    layers: int = 6
    heads: int = 8
    dim_head: int = 64
    ff_mult: int = 4
    num_latents: int = 32
    latent_init_std: float = 0.02  # RadFM: 1.0 (see PerceiverResampler: small latents let images through)


@dataclass
class LMConfig:
    """The causal language model (LLaMA architecture), built from this config or loaded from ``path``."""

    hidden_size: int = 5120
    layers: int = 40
    heads: int = 40
    kv_heads: int | None = None
    intermediate_size: int = 13824
    vocab_size: int = 32003
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    path: str | None = None


@dataclass
class TokenizerConfig:
    """Where the tokenizer comes from: ``bpe`` trains a small byte-level BPE; ``local`` loads a directory."""

    kind: str = "bpe"
    vocab_size: int = 4096
    path: str | None = None


@dataclass
class RadFMConfig:
    """The whole model. ``num_image_tokens`` LM tokens stand for each image (RadFM: 32)."""

    name: str = "custom"
    vision: VisionConfig = field(default_factory=VisionConfig)
    resampler: ResamplerConfig = field(default_factory=ResamplerConfig)
    lm: LMConfig = field(default_factory=LMConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    max_length: int = 2048
    gradient_checkpointing: bool = False

    @property
    def num_image_tokens(self) -> int:
        return self.resampler.num_latents

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RadFMConfig:
        """Rebuild from a dict (JSON or an OmegaConf container); unknown keys are an error."""
        data = dict(data)
        data.pop("_target_", None)
        sections = {"vision": VisionConfig, "resampler": ResamplerConfig, "lm": LMConfig,
                    "tokenizer": TokenizerConfig}
        kwargs: dict[str, Any] = {}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown RadFMConfig keys: {sorted(unknown)}")
        for key, value in data.items():
            if key in sections and isinstance(value, dict):
                section_cls = sections[key]
                section_known = {f.name for f in dataclasses.fields(section_cls)}
                bad = set(value) - section_known
                if bad:
                    raise ValueError(f"unknown keys in model config section {key!r}: {sorted(bad)}")
                kwargs[key] = section_cls(**value)
            else:
                kwargs[key] = value
        return cls(**kwargs)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))

    @classmethod
    def load(cls, path: str | Path) -> RadFMConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))
