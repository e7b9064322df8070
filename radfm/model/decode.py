"""A lean greedy decoder over the LLaMA LM: one preallocated (static) KV cache, one plain loop over the layers.

Why: at small batch, decoding spends most of each token in ``transformers``' ``generate`` machinery (logits
processors, stopping criteria, cache objects, mask builders) rather than in the LM's matmuls (BENCHMARKS.md,
"Decoding"). This loop reads the same weights and computes the same operations in the same order as
``LlamaForCausalLM`` (RMSNorm in fp32, rotary embeddings, SDPA, SwiGLU), so its greedy tokens are ``generate``'s
(tests/model/test_decode.py), at a fraction of the per-token overhead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def supports(lm: nn.Module) -> bool:
    """Whether ``lm`` is a LLaMA causal LM this decoder reads (a plain ``LlamaForCausalLM``: no rope scaling
    other than the default, no sliding window, no attention or MLP biases)."""
    cfg = getattr(lm, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) != "llama":
        return False
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", "default") if isinstance(rope, dict) else "default"
    return (rope_type == "default" and not getattr(cfg, "attention_bias", False)
            and not getattr(cfg, "mlp_bias", False) and getattr(cfg, "hidden_act", "silu") == "silu")


def _rms_norm(x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """``LlamaRMSNorm`` as it computes it: the variance in fp32, the weight applied in the input dtype."""
    dtype = x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    return norm.weight * h.to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


@dataclass
class _Shape:
    layers: int
    heads: int
    kv_heads: int
    head_dim: int


class LeanDecoder:
    """Greedy decoding of a ``LlamaForCausalLM`` from input embeddings, with a static KV cache.

    The cache of each layer is ``B×kv_heads×(T+N)×head_dim`` (prompt length T, at most N new tokens), allocated
    once per call; a decoding step writes one column and attends over the columns written so far.
    """

    def __init__(self, lm: nn.Module) -> None:
        if not supports(lm):
            raise ValueError("the lean decoder reads a plain LlamaForCausalLM only")
        self.lm = lm
        cfg = lm.config
        heads = cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        self.shape = _Shape(cfg.num_hidden_layers, heads, cfg.num_key_value_heads or heads, head_dim)
        self.rotary = lm.model.rotary_emb
        self.scaling = head_dim ** -0.5

    def _cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotary ``cos``/``sin`` of ``positions`` (``B×L``) → each ``B×1×L×head_dim``, as the LM's own rotary
        module computes them (fp32 frequencies, its attention scaling, cast to the activations' dtype)."""
        cos, sin = self.rotary(torch.empty((), dtype=dtype, device=positions.device), positions)
        return cos.unsqueeze(1), sin.unsqueeze(1)

    def _layers(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, keys: list[torch.Tensor],
                values: list[torch.Tensor], at: int, mask: torch.Tensor | None, causal: bool = False) -> torch.Tensor:
        """Run every decoder layer on ``h`` (``B×L×hidden``, the positions ``at … at+L-1`` of the cache), writing
        their keys and values into the cache; ``mask``: ``B×1×L×(at+L)`` boolean, True where attention may look,
        or None with ``causal`` (a prompt without padding) or without (one new token that sees every column)."""
        s = self.shape
        b, n, _ = h.shape
        end = at + n
        for i, layer in enumerate(self.lm.model.layers):
            attn = layer.self_attn
            x = _rms_norm(h, layer.input_layernorm)
            q = attn.q_proj(x).view(b, n, s.heads, s.head_dim).transpose(1, 2)
            k = attn.k_proj(x).view(b, n, s.kv_heads, s.head_dim).transpose(1, 2)
            v = attn.v_proj(x).view(b, n, s.kv_heads, s.head_dim).transpose(1, 2)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            keys[i][:, :, at:end] = k
            values[i][:, :, at:end] = v
            kk, vv = keys[i][:, :, :end], values[i][:, :, :end]
            if s.kv_heads != s.heads:
                rep = s.heads // s.kv_heads
                kk, vv = kk.repeat_interleave(rep, dim=1), vv.repeat_interleave(rep, dim=1)
            o = F.scaled_dot_product_attention(q, kk, vv, attn_mask=mask, is_causal=causal and mask is None,
                                               scale=self.scaling)
            h = h + attn.o_proj(o.transpose(1, 2).reshape(b, n, -1))
            x = _rms_norm(h, layer.post_attention_layernorm)
            mlp = layer.mlp
            h = h + mlp.down_proj(F.silu(mlp.gate_proj(x)) * mlp.up_proj(x))
        return h

    def _next(self, h_last: torch.Tensor, suppress: Sequence[int]) -> torch.Tensor:
        """The argmax token of the last position's hidden state ``B×hidden`` (``suppress``: never chosen)."""
        logits = self.lm.lm_head(_rms_norm(h_last, self.lm.model.norm)).float()
        if suppress:
            logits[:, list(suppress)] = float("-inf")
        return logits.argmax(-1)

    @torch.no_grad()
    def greedy(self, embeds: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int,
               eos_token_id: int | None, pad_token_id: int | None, suppress: Sequence[int] = ()) -> torch.Tensor:
        """Left-padded prompt embeddings ``B×T×hidden`` and their mask ``B×T`` → new tokens ``B×N`` (N ≤
        ``max_new_tokens``; after a row's EOS its tokens are ``pad_token_id``; the loop ends when every row
        has ended), as ``generate(inputs_embeds=…)`` greedy returns them."""
        b, t, _ = embeds.shape
        if max_new_tokens <= 0:
            return torch.zeros(b, 0, dtype=torch.long, device=embeds.device)
        s = self.shape
        total = t + max_new_tokens
        dtype, device = embeds.dtype, embeds.device
        keys = [torch.zeros(b, s.kv_heads, total, s.head_dim, dtype=dtype, device=device) for _ in range(s.layers)]
        values = [torch.zeros_like(k) for k in keys]
        valid = torch.zeros(b, total, dtype=torch.bool, device=device)  # the cache columns a query may see
        valid[:, :t] = attention_mask.bool()
        # generate's positions: the count of real tokens before each one (left padding takes position 1).
        positions = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)
        padded = not bool(attention_mask.bool().all())
        mask = None
        if padded:
            causal = torch.ones(t, t, dtype=torch.bool, device=device).tril()
            mask = (causal[None] & valid[:, None, :t])[:, None]  # B×1×T×T
            # A padding row that may see nothing gets NaN from SDPA: let it see itself (its output is never read).
            mask = mask | torch.eye(t, dtype=torch.bool, device=device)[None, None]
        cos, sin = self._cos_sin(positions, dtype)
        h = self._layers(embeds, cos, sin, keys, values, 0, mask, causal=True)
        nxt = self._next(h[:, -1], suppress)
        table = self.lm.get_input_embeddings()
        finished = torch.zeros(b, dtype=torch.bool, device=device)
        pos = positions[:, -1:]
        out = []
        for step in range(max_new_tokens):
            if pad_token_id is not None:
                nxt = torch.where(finished, torch.full_like(nxt, pad_token_id), nxt)
            out.append(nxt)
            if eos_token_id is not None:
                finished |= nxt == eos_token_id
            if bool(finished.all()) or step == max_new_tokens - 1:
                break
            at = t + step
            valid[:, at] = True
            pos = pos + 1
            cos, sin = self._cos_sin(pos, dtype)
            # Without padding a new token sees every column written so far: no mask (SDPA's fastest path).
            h = self._layers(table(nxt)[:, None].to(dtype), cos, sin, keys, values, at,
                             valid[:, None, None, :at + 1] if padded else None)
            nxt = self._next(h[:, -1], suppress)
        return torch.stack(out, dim=1)
