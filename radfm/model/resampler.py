"""Building block: the Flamingo-style perceiver resampler that turns image tokens into a fixed latent set."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from radfm.model.config import ResamplerConfig


class PerceiverAttention(nn.Module):
    """Latents attend to ``image tokens ++ latents``. ``x: B×N×dim``, ``latents: B×L×dim`` → ``B×L×dim``."""

    def __init__(self, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        x = self.norm_media(x)
        latents = self.norm_latents(latents)
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat([x, latents], dim=1)).chunk(2, dim=-1)
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


class LatentFeedForward(nn.Module):
    def __init__(self, dim: int, mult: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, dim * mult, bias=False)
        self.fc2 = nn.Linear(dim * mult, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class PerceiverResampler(nn.Module):
    """``B×N×dim`` image tokens → ``B×num_latents×dim`` (RadFM: 32 latents, 6 layers, final LayerNorm)."""

    def __init__(self, cfg: ResamplerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        # Small latents (RadFM/open_flamingo: std 1). With std-1 latents the residual stream of every layer is
        # dominated by the image-independent latents: measured on a tiny model after 600 steps on MedMD-synth,
        # the output varied across images by 5% of its spread and the LM learned to ignore images. Small
        # latents let the first cross-attention read-out (which depends on the image) dominate from step 0.
        # An imported checkpoint overwrites them anyway.
        self.latents = nn.Parameter(torch.randn(cfg.num_latents, cfg.dim) * cfg.latent_init_std)
        self.attn_layers = nn.ModuleList(
            PerceiverAttention(cfg.dim, cfg.heads, cfg.dim_head) for _ in range(cfg.layers)
        )
        self.ff_layers = nn.ModuleList(LatentFeedForward(cfg.dim, cfg.ff_mult) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        latents = self.latents.unsqueeze(0).expand(x.shape[0], -1, -1)
        for attn, ff in zip(self.attn_layers, self.ff_layers):
            latents = latents + attn(x, latents)
            latents = latents + ff(latents)
        return self.norm(latents)
