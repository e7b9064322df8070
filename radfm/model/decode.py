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


# The largest fp32 LM head the decoder packs for MKL (the packed copy, 1.36× its bytes, is held beside it): 89 MB
# at ref-small; base's 655 MB head is packed too, anything larger keeps F.linear.
PACK_MAX_BYTES = 1 << 30


@dataclass
class _Shape:
    layers: int
    heads: int
    kv_heads: int
    head_dim: int


@dataclass
class _Cache:
    """A static KV cache in use: per layer ``B×kv_heads×(T+N)×head_dim`` keys and values, the columns a query
    may see (``B×(T+N)``), each row's last position (``B×1``), and the last prompt position's hidden state."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    valid: torch.Tensor
    pos: torch.Tensor
    padded: bool
    prompt_len: int
    last: torch.Tensor

    def select(self, rows: torch.Tensor, upto: int) -> None:
        """Keep the cache rows ``rows`` (``B``, indices into the current rows), their first ``upto`` columns
        copied (the later ones are written before they are read)."""
        for cache in (self.keys, self.values):
            for i, c in enumerate(cache):
                cache[i][:, :, :upto] = c[rows, :, :upto]
        self.valid = self.valid[rows]
        self.pos = self.pos[rows]

    def repeat(self, k: int) -> None:
        """Each row ``k`` times in a row (``B`` → ``B·k``), as beam search starts."""
        self.keys = [c.repeat_interleave(k, dim=0) for c in self.keys]
        self.values = [c.repeat_interleave(k, dim=0) for c in self.values]
        self.valid, self.pos = self.valid.repeat_interleave(k, 0), self.pos.repeat_interleave(k, 0)
        self.last = self.last.repeat_interleave(k, 0)


class LeanDecoder:
    """Greedy decoding of a ``LlamaForCausalLM`` from input embeddings, with a static KV cache.

    The cache of each layer is ``B×kv_heads×(T+N)×head_dim`` (prompt length T, at most N new tokens), allocated
    once per call; a decoding step writes one column and attends over the columns written so far.
    """

    def __init__(self, lm: nn.Module, pack: bool = True) -> None:
        if not supports(lm):
            raise ValueError("the lean decoder reads a plain LlamaForCausalLM only")
        self.lm = lm
        cfg = lm.config
        heads = cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        self.shape = _Shape(cfg.num_hidden_layers, heads, cfg.num_key_value_heads or heads, head_dim)
        self.rotary = lm.model.rotary_emb
        self.scaling = head_dim ** -0.5
        self.pack = pack
        self._packed: tuple[int, torch.Tensor] | None = None  # (rows, the head packed for them)

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

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        """The LM head on ``x`` (``M×hidden`` → ``M×V``): through MKL's packed GEMM when a copy packed for ``M``
        rows is held (:meth:`_pack_head`), else the module itself."""
        head = self.lm.lm_head
        if self._packed is not None and self._packed[0] == x.shape[0]:
            return torch.ops.mkl._mkl_linear(x, self._packed[1], head.weight, head.bias, self._packed[0])
        return head(x)

    def _logits(self, h_last: torch.Tensor) -> torch.Tensor:
        """fp32 next-token logits ``B×V`` of the last hidden states ``B×hidden`` (the final norm, then the head)."""
        return self._head(_rms_norm(h_last, self.lm.model.norm)).float()

    def _pack_head(self, rows: int) -> None:
        """Hold the LM head's weight packed by MKL for ``rows``-row products, where that pays: an fp32 head on
        the CPU, more than one row (at one row MKL takes its matrix-vector path either way), at most
        :data:`PACK_MAX_BYTES`.

        Why: at 8 rows a plain ``F.linear`` re-packs its weight on every call; in ref-small's decoding step the
        65 MB LM head alone took 9.2 of 24 ms that way (BENCHMARKS.md, "Decoding"). The packed products sum in
        another order, so logits differ from ``F.linear``'s in the last bits (5.7e-5 at most on that head): a
        token can differ only where two logits tie that closely. The packed copy (1.36× the weight) stays on
        the head module, keyed by the weight's storage, version, shape and the row count, for the next call.
        Only the head: MKL pads a packed copy for a few rows (ref-small's 512×512 projections grow 8.8×), and
        packing every projection gained 6 % over the whole decode.
        """
        self._packed = None
        head = self.lm.lm_head
        w = head.weight
        if (not self.pack or rows < 2 or w.device.type != "cpu" or w.dtype != torch.float32
                or w.numel() * w.element_size() > PACK_MAX_BYTES or not torch.backends.mkl.is_available()
                or not hasattr(torch.ops.mkl, "_mkl_linear")):
            return
        key = (w.data_ptr(), w._version, tuple(w.shape), rows)
        held = getattr(head, "_radfm_packed", None)
        if held is None or held[0] != key:
            held = (key, torch.ops.mkl._mkl_reorder_linear_weight(w.detach(), rows))
            head._radfm_packed = held
        self._packed = (rows, held[1])

    def _next(self, h_last: torch.Tensor, suppress: Sequence[int]) -> torch.Tensor:
        """The argmax token of the last position's hidden state ``B×hidden`` (``suppress``: never chosen)."""
        logits = self._logits(h_last)
        if suppress:
            logits[:, list(suppress)] = float("-inf")
        return logits.argmax(-1)

    def _prefill(self, embeds: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int) -> _Cache:
        """Run the prompt (``B×T×hidden``, left-padded, mask ``B×T``) into a fresh cache with room for
        ``max_new_tokens`` more columns."""
        b, t, _ = embeds.shape
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
        return _Cache(keys, values, valid, positions[:, -1:], padded, t, h[:, -1])

    def _step(self, cache: _Cache, tokens: torch.Tensor, step: int) -> torch.Tensor:
        """Feed one new token per row (``tokens``: ``B``) as the ``step``-th new column; → its hidden state
        ``B×hidden``."""
        at = cache.prompt_len + step
        cache.valid[:, at] = True
        cache.pos = cache.pos + 1
        dtype = cache.keys[0].dtype
        cos, sin = self._cos_sin(cache.pos, dtype)
        table = self.lm.get_input_embeddings()
        # Without padding a new token sees every column written so far: no mask (SDPA's fastest path).
        h = self._layers(table(tokens)[:, None].to(dtype), cos, sin, cache.keys, cache.values, at,
                         cache.valid[:, None, None, :at + 1] if cache.padded else None)
        return h[:, -1]

    @torch.no_grad()
    def greedy(self, embeds: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int,
               eos_token_id: int | None, pad_token_id: int | None, suppress: Sequence[int] = ()) -> torch.Tensor:
        """Left-padded prompt embeddings ``B×T×hidden`` and their mask ``B×T`` → new tokens ``B×N`` (N ≤
        ``max_new_tokens``; after a row's EOS its tokens are ``pad_token_id``; the loop ends when every row
        has ended), as ``generate(inputs_embeds=…)`` greedy returns them."""
        b = embeds.shape[0]
        if max_new_tokens <= 0:
            return torch.zeros(b, 0, dtype=torch.long, device=embeds.device)
        cache = self._prefill(embeds, attention_mask, max_new_tokens)
        self._pack_head(b)
        nxt = self._next(cache.last, suppress)
        finished = torch.zeros(b, dtype=torch.bool, device=embeds.device)
        out = []
        for step in range(max_new_tokens):
            if pad_token_id is not None:
                nxt = torch.where(finished, torch.full_like(nxt, pad_token_id), nxt)
            out.append(nxt)
            if eos_token_id is not None:
                finished |= nxt == eos_token_id
            if bool(finished.all()) or step == max_new_tokens - 1:
                break
            nxt = self._next(self._step(cache, nxt, step), suppress)
        return torch.stack(out, dim=1)

    def _log_probs(self, h_last: torch.Tensor, suppress: Sequence[int]) -> torch.Tensor:
        """Next-token log-probabilities ``B×V`` (fp32) of the last hidden states ``B×hidden``; ``suppress``: -inf,
        after the softmax, as ``generate``'s processor sets them."""
        logp = F.log_softmax(self._logits(h_last), dim=-1)
        if suppress:
            logp[:, list(suppress)] = float("-inf")
        return logp

    @torch.no_grad()
    def beam(self, embeds: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int, num_beams: int,
             eos_token_id: int | None, pad_token_id: int | None, suppress: Sequence[int] = (),
             length_penalty: float = 1.0) -> torch.Tensor:
        """Beam search over left-padded prompt embeddings ``B×T×hidden`` (mask ``B×T``) → each row's best
        sequence of new tokens ``B×N``, as ``generate(inputs_embeds=…, num_beams=k)`` returns it (its defaults:
        ``early_stopping=False``, a finished beam scored by its summed log-probability over its length **
        ``length_penalty``; shorter rows filled after their end).

        The bookkeeping follows transformers' vectorised ``_beam_search`` step for step (keep the top 2k of the
        k·V continuations, the best k unfinished go on, the top-k that end join the finished, stop when no
        running beam can beat the worst finished); what differs is the model call: the prompt runs once per row
        rather than once per beam, and the static cache is reordered in place.
        """
        b = embeds.shape[0]
        k = num_beams
        device = embeds.device
        if max_new_tokens <= 0:
            return torch.zeros(b, 0, dtype=torch.long, device=device)
        n = max_new_tokens
        cache = self._prefill(embeds, attention_mask, n)
        cache.repeat(k)
        self._pack_head(b * k)
        h_last = cache.last
        fill = (pad_token_id if pad_token_id else eos_token_id) if eos_token_id is not None else -1
        keep = 2 * k  # max(2, 1 + number of EOS ids) beams per kept beam: one EOS id at most here
        top_mask = torch.arange(keep, device=device) < k  # only these may join the finished
        running = torch.full((b, k, n), fill, dtype=torch.long, device=device)
        done = running.clone()
        run_scores = torch.zeros(b, k, device=device)
        run_scores[:, 1:] = -1e9  # every beam starts as the same prompt: expand from the first only
        done_scores = torch.full((b, k), -1e9, device=device)
        done_flag = torch.zeros(b, k, dtype=torch.bool, device=device)
        done_len = torch.zeros(b, k, dtype=torch.long, device=device)
        improvable = torch.ones(b, 1, dtype=torch.bool, device=device)
        offsets = torch.arange(b, device=device)[:, None] * k
        for step in range(n):
            logp = self._log_probs(h_last, suppress)
            vocab = logp.shape[-1]
            acc = (logp.view(b, k, vocab) + run_scores[:, :, None]).view(b, -1)
            top_lp, top_idx = torch.topk(acc, keep)
            src, tok = top_idx // vocab, top_idx % vocab
            top_seqs = running.gather(1, src[:, :, None].expand(-1, -1, n)).clone()
            top_seqs[:, :, step] = tok
            hits = tok == eos_token_id if eos_token_id is not None else torch.zeros_like(tok, dtype=torch.bool)
            if step + 1 >= n:
                hits = torch.ones_like(hits)
            # The best k that did not end go on.
            run_lp = top_lp + hits.float() * -1e9
            nxt = torch.topk(run_lp, k)[1]
            running = top_seqs.gather(1, nxt[:, :, None].expand(-1, -1, n))
            run_scores, beam_src, beam_tok = run_lp.gather(1, nxt), src.gather(1, nxt), tok.gather(1, nxt)
            # Those of the top k that ended join the finished if they beat the worst kept.
            ended = hits & top_mask[None]
            fin_lp = top_lp / ((step + 1) ** length_penalty)
            fin_lp = fin_lp + (~improvable).float() * -1e9
            fin_lp = fin_lp + (~ended) * -1e9
            merged_scores = torch.cat((done_scores, fin_lp), dim=1)
            sel = torch.topk(merged_scores, k)[1]
            done = torch.cat((done, top_seqs), dim=1).gather(1, sel[:, :, None].expand(-1, -1, n))
            done_scores = merged_scores.gather(1, sel)
            done_flag = torch.cat((done_flag, ended), dim=1).gather(1, sel)
            done_len = torch.cat((done_len, torch.full_like(tok, step + 1)), dim=1).gather(1, sel)
            best_possible = run_scores[:, :1] / ((step + 1) ** length_penalty)
            worst_done = torch.where(done_flag, done_scores.min(dim=1, keepdim=True)[0], -1.0e9)
            improvable = improvable & (best_possible > worst_done).any(dim=-1, keepdim=True)
            if not bool(improvable.any()) or bool(hits.all()):
                break
            cache.select((beam_src + offsets).view(-1), cache.prompt_len + step)
            h_last = self._step(cache, beam_tok.view(-1), step)
        return done[:, 0, :int(done_len[:, 0].max())]
