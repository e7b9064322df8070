"""Building block: the 3D vision transformer of RadFM (patch embedding, factorised 3D positions, SDPA blocks)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from radfm.model.config import VisionConfig


class PositionEmbedding3D(nn.Module):
    """Learned factorised 3D position embedding: one table per axis, concatenated on the channel axis.

    A grid smaller than the tables indexes them with a stride (RadFM's rule), so one model serves any
    grid up to the configured maximum. Output: ``(h·w·d) × width``.
    """

    def __init__(self, rows: int, cols: int, depths: int, width: int) -> None:
        super().__init__()
        part = width // 3
        self.row_embed = nn.Embedding(rows, part)
        self.col_embed = nn.Embedding(cols, part)
        self.dep_embed = nn.Embedding(depths, width - 2 * part)
        nn.init.uniform_(self.row_embed.weight)
        nn.init.uniform_(self.col_embed.weight)
        nn.init.uniform_(self.dep_embed.weight)

    @staticmethod
    def _index(n: int, table: int, axis: str, device: torch.device) -> torch.Tensor:
        if n > table:
            raise ValueError(
                f"the image has {n} patches along {axis} but the position table holds {table}: "
                f"too many {'slices' if axis == 'depth' else 'pixels'} for this model "
                f"(raise vision.max_{'depth' if axis == 'depth' else 'image_size'} or resize the input)"
            )
        return (torch.arange(n, device=device) + 1) * (table // n) - 1

    def forward(self, h: int, w: int, d: int, device: torch.device) -> torch.Tensor:
        """Return the ``(h·w·d) × width`` position embedding of an ``h × w × d`` patch grid."""
        i = self._index(h, self.row_embed.num_embeddings, "height", device)
        j = self._index(w, self.col_embed.num_embeddings, "width", device)
        k = self._index(d, self.dep_embed.num_embeddings, "depth", device)
        row = self.row_embed(i)[:, None, None, :].expand(h, w, d, -1)
        col = self.col_embed(j)[None, :, None, :].expand(h, w, d, -1)
        dep = self.dep_embed(k)[None, None, :, :].expand(h, w, d, -1)
        return torch.cat([row, col, dep], dim=-1).reshape(h * w * d, -1)


class Attention(nn.Module):
    """Multi-head self-attention through ``scaled_dot_product_attention``. ``B×N×width → B×N×width``."""

    def __init__(self, width: int, heads: int, dim_head: int, dropout: float = 0.0) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.dropout = dropout
        self.norm = nn.LayerNorm(width)
        self.to_qkv = nn.Linear(width, inner * 3, bias=False)
        self.to_out = nn.Linear(inner, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.to_qkv(self.norm(x)).chunk(3, dim=-1)
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


class FeedForward(nn.Module):
    """Pre-norm GELU MLP. ``B×N×width → B×N×width``."""

    def __init__(self, width: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(self.norm(x))))))


class TransformerBlock(nn.Module):
    def __init__(self, width: int, heads: int, dim_head: int, mlp_dim: int, dropout: float) -> None:
        super().__init__()
        self.attn = Attention(width, heads, dim_head, dropout)
        self.ff = FeedForward(width, mlp_dim, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x)
        return x + self.ff(x)


STEM_NORMS = ("batch", "group")


def _stem_norm(kind: str, channels: int) -> nn.Module:
    """BatchNorm, or GroupNorm with up to 8 groups (no running statistics: the same in train and eval)."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    raise ValueError(f"stem norm {kind!r} is not one of {STEM_NORMS}")


class _ResidualConv(nn.Module):
    """``x + ReLU(norm(conv3×3(x)))`` at a fixed channel count and resolution (ConvStem's ``blocks``)."""

    def __init__(self, channels: int, norm: str = "batch") -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm = _stem_norm(norm, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.relu(self.norm(self.conv(x)))


class ConvStem(nn.Module):
    """Early-convolution stem (Xiao et al. 2021): ``n = log2(patch_size)`` in-plane 3×3 stride-2 convolutions,
    each norm + ReLU, channels ``c, 2c, 4c, …``. Each depth slice is convolved on its own (depth is
    folded into the batch), so the stem is 2D in-plane as RadFM's patches are, and depth is still cut by
    ``patch_depth`` afterwards.

    ``blocks`` > 0 adds that many 3×3 stride-1 convolutions (norm + ReLU, residual) after each stride-2 one:
    more local depth at little cost beside the ViT (they run at ≤ H/2 × W/2 with ≤ 4c channels). On
    MedMD-synth it did not help the warm-up read lesions (BENCHMARKS.md, "Main job").

    ``norm="group"``: GroupNorm instead of BatchNorm. Why: a mixed-modality fit alternates 2D batches and 3D
    batches (each volume's slices folded into the batch) whose statistics differ, so BatchNorm's running
    averages match neither at evaluation. On MedMD-synth the vision warm-up's head read test lesions at 0.63
    with BatchNorm and 0.78 with GroupNorm after 600 steps, but 0.82 and 0.80 after 1200, and the joint fit
    was worse with GroupNorm (BENCHMARKS.md, "Main job"), so the demo keeps BatchNorm.

    ``B×C×H×W×D → B×(c·2^(n−1))×(H/patch_size)×(W/patch_size)×D``.
    """

    def __init__(self, in_channels: int, channels: int, patch_size: int, blocks: int = 0,
                 norm: str = "batch") -> None:
        super().__init__()
        n = patch_size.bit_length() - 1
        if patch_size < 2 or 1 << n != patch_size:
            raise ValueError(f"a convolutional stem needs a power-of-2 patch size ≥ 2, got {patch_size}")
        layers: list[nn.Module] = []
        c_in = in_channels
        for k in range(n):
            c_out = channels << k
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), _stem_norm(norm, c_out),
                       nn.ReLU(inplace=True)]
            layers += [_ResidualConv(c_out, norm) for _ in range(blocks)]
            c_in = c_out
        self.net = nn.Sequential(*layers)
        self.out_channels = c_in

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        d = images.shape[-1]
        x = rearrange(images, "b c h w d -> (b d) c h w")
        return rearrange(self.net(x), "(b d) c h w -> b c h w d", d=d)


class ViT3D(nn.Module):
    """RadFM's 3D ViT: ``B×C×H×W×D`` images → ``B×(h·w·d)×width`` patch tokens (no CLS token).

    ``h = H / patch_size``, ``w = W / patch_size``, ``d = D / patch_depth``. A 2D image (``D = 1``) is
    repeated along depth to ``min_depth`` slices, as RadFM feeds 2D images.

    With ``cfg.stem_channels > 0`` a :class:`ConvStem` replaces the in-plane patchify: ``B×C×H×W×D →
    B×C'×h×w×D``, then each token is ``patch_depth`` slices of one stem pixel (``C'·patch_depth`` values) through
    the same ``patch_proj`` linear layer (Xiao et al.'s final 1×1 convolution). Off by default (RadFM's
    layout, so its checkpoints import unchanged).
    """

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.stem = (ConvStem(cfg.in_channels, cfg.stem_channels, cfg.patch_size, cfg.stem_blocks, cfg.stem_norm)
                     if cfg.stem_channels else None)
        if self.stem is not None:
            patch_dim = self.stem.out_channels * cfg.patch_depth
        else:
            patch_dim = cfg.in_channels * cfg.patch_size * cfg.patch_size * cfg.patch_depth
        self.patch_norm_in = nn.LayerNorm(patch_dim) if cfg.patch_norm else nn.Identity()
        self.patch_proj = nn.Linear(patch_dim, cfg.width)
        self.patch_norm_out = nn.LayerNorm(cfg.width)
        grid = cfg.max_image_size // cfg.patch_size
        self.pos_embedding = PositionEmbedding3D(grid, grid, cfg.max_depth // cfg.patch_depth, cfg.width)
        self.dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(cfg.width, cfg.heads, cfg.head_dim, cfg.mlp_dim, cfg.dropout)
            for _ in range(cfg.layers)
        )
        self.gradient_checkpointing = False

    def check_input(self, images: torch.Tensor) -> torch.Tensor:
        """Validate ``B×C×H×W×D`` and bring 2D (depth-1) images to the minimum depth."""
        cfg = self.cfg
        if images.dim() != 5:
            raise ValueError(
                f"images must have rank 5 (B×C×H×W×D), got rank {images.dim()} with shape {tuple(images.shape)}"
            )
        _, c, h, w, d = images.shape
        if c != cfg.in_channels:
            raise ValueError(f"images have {c} channels, the vision encoder expects {cfg.in_channels}")
        if h % cfg.patch_size or w % cfg.patch_size:
            raise ValueError(
                f"image height×width {h}×{w} is not a multiple of the patch size {cfg.patch_size}"
            )
        if d < cfg.min_depth:
            if cfg.min_depth % d:
                raise ValueError(f"depth {d} cannot be brought to the minimum depth {cfg.min_depth}")
            images = images.repeat_interleave(cfg.min_depth // d, dim=-1)
            d = cfg.min_depth
        if d % cfg.patch_depth:
            raise ValueError(f"depth {d} is not a multiple of the patch depth {cfg.patch_depth}")
        return images

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        raw, images = images, self.check_input(images)
        cfg = self.cfg
        h = images.shape[2] // cfg.patch_size
        w = images.shape[3] // cfg.patch_size
        d = images.shape[4] // cfg.patch_depth
        if self.stem is not None:
            # The stem works slice by slice, so a 2D image is stemmed once and its features repeated to the
            # minimum depth: the same output (per-slice convolutions; batch statistics of identical copies are
            # the same, only BatchNorm's running variance's n/(n−1) correction sees fewer values) at
            # 1/min_depth of the stem's cost.
            feat = self.stem(raw)
            if raw.shape[-1] != images.shape[-1]:
                feat = feat.repeat_interleave(images.shape[-1] // raw.shape[-1], dim=-1)
            x = rearrange(feat, "b c h w (f pf) -> b (h w f) (pf c)", pf=cfg.patch_depth)
        else:
            # Patch layout (p1 p2 pf c) matches RadFM's, so its patch projection imports unchanged.
            x = rearrange(
                images, "b c (h p1) (w p2) (f pf) -> b (h w f) (p1 p2 pf c)",
                p1=cfg.patch_size, p2=cfg.patch_size, pf=cfg.patch_depth,
            )
        x = self.patch_norm_out(self.patch_proj(self.patch_norm_in(x)))
        x = self.dropout(x + self.pos_embedding(h, w, d, x.device).to(x.dtype))
        for block in self.blocks:
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x
