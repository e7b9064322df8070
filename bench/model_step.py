"""Model-step benchmark (not a test): train-step throughput, FLOP utilisation, peak memory, the cost of the
image-embedding path against RadFM's one-hot matmul, and generation speed with and without the KV cache.

    python bench/model_step.py [--config tiny,small,ref-tiny,ref-small] [--steps N] [--json PATH] [--quick]

Each configuration runs in its own child process so that its peak RSS is its own. The machine is shared and
noisy (another process on a 2-core box slows small, barrier-bound ops by up to ~10x), so headline figures use
the best of several timed steps, the matmul peak is probed in the same process before every timed step, the
CPU load of other processes is recorded per step, and every speed-up is a ratio of timings taken back to back.
Goals are reported as PASS/MISS, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import BackgroundLoad, QuietWait, fmt_table, machine_info, peak_rss_mb, rss_mb  # noqa: E402

CONFIGS = ("tiny", "small", "ref-tiny", "ref-small")
QUICK_CONFIGS = ("tiny", "ref-tiny")
BATCH = 2
QUESTION_TOKENS = 32
RADFM_VOCAB = 32000  # RadFM's LLaMA vocabulary: its one-hot runs over this + 2 figure rows + S×32 image rows
SEQ_LEN = {"tiny": 256, "small": 256}  # ref-*: the preset's max_length (fixed comparison configurations)
# (H, W, D) per mode. A 2D image has depth 1 and is brought to the preset's minimum depth by the ViT.
IMAGE_SHAPES = {
    "tiny": {"2d": (64, 64, 1), "3d": (64, 64, 8)},
    "small": {"2d": (128, 128, 1), "3d": (128, 128, 8)},
    "ref-tiny": {"3d": (64, 64, 8)},
    "ref-small": {"3d": (128, 128, 16)},
}
GOAL_CONFIG = "small"
GOAL_PEAK_FRACTION = 0.25
GOAL_EMBED_FRACTION = 0.02
CONTENDED_CORES = 0.5  # other processes' load during the best step above which a verdict is flagged
PEAK_N = 2048
FLOP_METHOD = ("torch.utils.flop_counter.FlopCounterMode on one forward+backward (exact matmul + SDPA FLOPs; "
               "CPU flash-attention kernels registered here; causal masking not discounted; AdamW not counted)")


QUIET = QuietWait(0.0)


def probe_peak(reps: int = 2, n: int = PEAK_N) -> float:
    """Best FLOP/s of an ``n×n`` fp32 matmul over ``reps`` runs (the machine's matmul peak right now)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    c = torch.empty(n, n)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.matmul(a, b, out=c)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def timeit(fn: Callable[[], Any], min_reps: int = 3, max_reps: int = 50, min_time: float = 0.5) -> dict[str, float]:
    """Run ``fn`` once to warm up, then at least ``min_reps`` times and until ``min_time`` s have passed."""
    fn()
    QUIET()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - start < min_time and len(times) < max_reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return {"best_s": min(times), "median_s": statistics.median(times), "reps": len(times)}


def flop_mapping() -> dict[Any, Any]:
    """Count the CPU flash-attention kernels with the same formulas PyTorch uses for the GPU kernels."""
    from torch.utils import flop_counter as fc

    def forward(query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return fc.sdpa_flop_count(query, key, value)

    def backward(grad_out: Any, query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None,
                 **kwargs: Any) -> int:
        return fc.sdpa_backward_flop_count(grad_out, query, key, value)

    aten = torch.ops.aten
    mapping: dict[Any, Any] = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = forward
        mapping[aten._scaled_dot_product_flash_attention_for_cpu_backward] = backward
    return mapping


# ---- inputs -----------------------------------------------------------------------------------------------
def special_ids(model: Any) -> tuple[int, int, int]:
    """(``<image>``, ``</image>``, placeholder) ids of a model built without a tokenizer: the last 3 rows."""
    vocab = model.lm.get_input_embeddings().weight.shape[0]
    return vocab - 3, vocab - 2, model.image_patch_id


def make_batch(model: Any, batch: int, seq_len: int, hwd: tuple[int, int, int], answer: bool = True,
               gen: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """``<image>`` + 32 placeholders + ``</image>`` + 32 question tokens (+ answer tokens up to ``seq_len``)."""
    cfg = model.cfg
    start, end, patch = special_ids(model)
    vocab = model.lm.get_input_embeddings().weight.shape[0]
    k = cfg.num_image_tokens
    prompt = k + 2 + QUESTION_TOKENS
    n_answer = seq_len - prompt if answer else 0
    if n_answer < 0:
        raise ValueError(f"sequence length {seq_len} is shorter than the {prompt}-token prompt")
    ids = torch.cat([
        torch.full((batch, 1), start), torch.full((batch, k), patch), torch.full((batch, 1), end),
        torch.randint(3, vocab - 3, (batch, QUESTION_TOKENS + n_answer), generator=gen),
    ], dim=1)
    labels = ids.clone()
    labels[:, :prompt] = -100
    h, w, d = hwd
    images = torch.randn(batch, cfg.vision.in_channels, h, w, d, generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "images": images, "labels": labels}


# ---- measurements ------------------------------------------------------------------------------------------
def train_step(model: Any, opt: torch.optim.Optimizer, batch: dict[str, torch.Tensor]) -> tuple[float, float, float]:
    t0 = time.perf_counter()
    loss = model(**batch)["loss"]
    t1 = time.perf_counter()
    loss.backward()
    t2 = time.perf_counter()
    opt.step()
    opt.zero_grad(set_to_none=True)
    t3 = time.perf_counter()
    return t1 - t0, t2 - t1, t3 - t2


def count_step_flops(model: Any, batch: dict[str, torch.Tensor]) -> dict[str, float]:
    from torch.utils.flop_counter import FlopCounterMode

    model.zero_grad(set_to_none=True)
    with FlopCounterMode(display=False, custom_mapping=flop_mapping()) as counter:
        model(**batch)["loss"].backward()
    model.zero_grad(set_to_none=True)
    by_op = {str(op): float(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    # Split by part from a forward pass alone: the module tracker attributes backward ops imprecisely.
    with FlopCounterMode(display=False, custom_mapping=flop_mapping()) as fwd:  # (its tracker needs grad mode)
        model(**batch)
    by_module = fwd.get_flop_counts()

    def part(name: str) -> float:
        return float(sum(by_module.get(name, {}).values()))

    return {"total": float(counter.get_total_flops()), "by_op": by_op, "forward_total": float(fwd.get_total_flops()),
            "forward_by_part": {"vision_encoder": part("RadFMModel.vision.encoder"),
                                "resampler": part("RadFMModel.vision.resampler")
                                + part("RadFMModel.vision.projection"),
                                "lm": part("RadFMModel.lm")}}


def profile_step(model: Any, opt: torch.optim.Optimizer, batch: dict[str, torch.Tensor], rows: int = 12) -> dict:
    """One profiled train step: self CPU time by op, grouped into matmul / attention / other."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fwd, bwd, opt_s = train_step(model, opt, batch)
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) / 1e6
    matmul = sum(e.self_cpu_time_total for e in events
                 if e.key in ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")) / 1e6
    attention = sum(e.self_cpu_time_total for e in events if "scaled_dot_product" in e.key) / 1e6
    top = [{"op": e.key, "self_s": e.self_cpu_time_total / 1e6, "calls": e.count} for e in events[:rows]]
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows), flush=True)
    return {"phases_s": {"forward": fwd, "backward": bwd, "optimizer": opt_s}, "self_total_s": total,
            "matmul_s": matmul, "attention_s": attention, "top_ops": top}


def bench_train(model: Any, name: str, mode: str, hwd: tuple[int, int, int], seq_len: int, warmup: int,
                steps: int, adamw: str, profile: bool, max_seconds: float) -> dict[str, Any]:
    """Warm-up steps, one FLOP-counted step (also a warm-up), then ``steps`` timed steps (fewer if the timed
    steps pass ``max_seconds``; at least 2). Each timed step is preceded by a matmul peak probe."""
    gen = torch.Generator().manual_seed(0)
    batch = make_batch(model, BATCH, seq_len, hwd, gen=gen)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=(adamw == "fused") or None)
    for _ in range(warmup):
        train_step(model, opt, batch)
    flops = count_step_flops(model, batch)
    step_s: list[float] = []
    phases: list[tuple[float, float, float]] = []
    peaks: list[float] = []
    bg: list[float] = []
    start = time.perf_counter()
    while len(step_s) < steps and (len(step_s) < 2 or time.perf_counter() - start < max_seconds):
        QUIET()
        peaks.append(probe_peak())
        with BackgroundLoad() as load:
            f, b, o = train_step(model, opt, batch)
        step_s.append(f + b + o)
        phases.append((f, b, o))
        bg.append(load.cores)
    med, best = statistics.median(step_s), min(step_s)
    i_best = step_s.index(best)
    total = flops["total"]
    result = {
        "config": name, "mode": mode, "image_hwd": list(hwd), "batch": BATCH, "seq_len": seq_len,
        "warmup_steps": warmup, "timed_steps": len(step_s), "adamw": adamw,
        "step_s": step_s, "step_best_s": best, "step_median_s": med,
        "phases_best_step_s": dict(zip(("forward", "backward", "optimizer"), phases[i_best])),
        "samples_per_s": BATCH / best, "tokens_per_s": BATCH * seq_len / best,
        "samples_per_s_median": BATCH / med, "tokens_per_s_median": BATCH * seq_len / med,
        "flops_per_step": total, "forward_flops": flops["forward_total"],
        "forward_flops_by_part": flops["forward_by_part"],
        "flops_by_op": flops["by_op"], "achieved_flops_per_s": total / best,
        "peak_probe_flops_per_s": peaks, "peak_flops_per_s": max(peaks),
        "peak_fraction": total / best / max(peaks),
        "peak_fraction_median": statistics.median(total / t / p for t, p in zip(step_s, peaks)),
        "background_cores_per_step": bg, "background_cores_best_step": bg[i_best],
        "peak_rss_mb": peak_rss_mb(),
    }
    if profile:
        print(f"-- profile {name} {mode}: one train step", flush=True)
        result["profile"] = profile_step(model, opt, batch)
    del opt
    model.zero_grad(set_to_none=True)
    return result


def radfm_embed(ids: torch.Tensor, table: torch.Tensor, figure_rows: torch.Tensor,
                image_rows: torch.Tensor) -> torch.Tensor:
    """RadFM's way: ``one_hot(ids, V + 2 + S·32) @ [table; figure rows; this sample's image rows]`` per sample.

    ``ids`` B×T in RadFM's id space, ``image_rows`` B×(S·32)×H → B×T×H.
    """
    b = ids.shape[0]
    weight = torch.cat([table, figure_rows], dim=0).unsqueeze(0).expand(b, -1, -1)
    weight = torch.cat([weight, image_rows], dim=1)
    return F.one_hot(ids, weight.shape[1]).to(image_rows.dtype) @ weight


def to_radfm_ids(model: Any, ids: torch.Tensor) -> torch.Tensor:
    """Map our ids to RadFM's layout: text < 32000, ``<image>`` 32000, ``</image>`` 32001, ``<imageK>`` 32002+K."""
    start, end, patch = special_ids(model)
    out = ids.remainder(RADFM_VOCAB)
    out[ids == start] = RADFM_VOCAB
    out[ids == end] = RADFM_VOCAB + 1
    is_patch = ids == patch
    k = torch.cumsum(is_patch.long(), dim=1) - 1  # one image per sample here: K = 0…31
    out[is_patch] = RADFM_VOCAB + 2 + k[is_patch]
    return out


def bench_embedding(model: Any, batch: dict[str, torch.Tensor], quick: bool) -> dict[str, Any]:
    """Our ``model.embed`` without the vision encoder vs RadFM's one-hot matmul, forward and forward+backward."""
    model.train()
    ids, images = batch["input_ids"], batch["images"]
    with torch.no_grad():
        feats = model.encode_images(images)
    hidden = feats.shape[-1]
    feats = feats.detach().requires_grad_(True)
    table = model.lm.get_input_embeddings().weight
    model.encode_images = lambda _images: feats  # precomputed features: time only lookup + scatter
    try:
        out = model.embed(ids, images)
        grad = torch.randn_like(out)
        rt = dict(min_reps=2 if quick else 3, min_time=0.2 if quick else 1.0)

        def ours_fwd() -> None:
            with torch.no_grad():
                model.embed(ids, images)

        def ours_fwd_bwd() -> None:
            table.grad, feats.grad = None, None
            model.embed(ids, images).backward(grad)

        ours = {"forward": timeit(ours_fwd, **rt), "forward_backward": timeit(ours_fwd_bwd, **rt)}
    finally:
        del model.encode_images
    table.grad = None

    r_ids = to_radfm_ids(model, ids)
    r_table = (torch.randn(RADFM_VOCAB, hidden) * 0.02).requires_grad_(True)
    r_fig = (torch.randn(2, hidden) * 0.02).requires_grad_(True)
    r_img = feats.detach().reshape(ids.shape[0], -1, hidden).clone().requires_grad_(True)
    with torch.no_grad():
        same = torch.allclose(radfm_embed(r_ids, r_table, r_fig, r_img)[ids == model.image_patch_id],
                              feats.reshape(-1, hidden), atol=1e-5)

    def radfm_fwd() -> None:
        with torch.no_grad():
            radfm_embed(r_ids, r_table, r_fig, r_img)

    def radfm_fwd_bwd() -> None:
        r_table.grad, r_fig.grad, r_img.grad = None, None, None
        radfm_embed(r_ids, r_table, r_fig, r_img).backward(grad)

    rt = dict(min_reps=2 if quick else 3, min_time=0.2 if quick else 1.0)
    radfm = {"forward": timeit(radfm_fwd, **rt), "forward_backward": timeit(radfm_fwd_bwd, **rt)}
    return {
        "ours_vocab": table.shape[0], "radfm_vocab_rows": RADFM_VOCAB + 2 + model.cfg.num_image_tokens,
        "hidden": hidden, "radfm_image_rows_match": bool(same), "ours": ours, "radfm": radfm,
        "ratio_forward": radfm["forward"]["best_s"] / ours["forward"]["best_s"],
        "ratio_forward_backward": radfm["forward_backward"]["best_s"] / ours["forward_backward"]["best_s"],
    }


@torch.no_grad()
def greedy_recompute(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, images: Any,
                     new_tokens: int) -> torch.Tensor:
    """Greedy decoding without a KV cache: every step runs the LM over the whole sequence (prompt embeddings +
    generated tokens), keeps the last position's logits and masks the image tokens like ``generate`` does.
    Prompts here are unpadded, so default positions equal the ones ``generate`` derives from the mask."""
    embeds = model.embed(input_ids, images)
    table = model.lm.get_input_embeddings()
    mask = attention_mask
    out = []
    for _ in range(new_tokens):
        logits = model.lm(inputs_embeds=embeds, attention_mask=mask, use_cache=False, logits_to_keep=1).logits[:, -1]
        logits[:, model.suppress_ids] = float("-inf")
        nxt = logits.argmax(-1)
        out.append(nxt)
        embeds = torch.cat([embeds, table(nxt)[:, None].to(embeds.dtype)], dim=1)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
    return torch.stack(out, dim=1)


def bench_generation(model: Any, hwd: tuple[int, int, int], batches: tuple[int, ...], new_tokens: int,
                     budget_s: float) -> dict:
    """New tokens/s of greedy decoding (prefill included, image features precomputed): ``model.generate`` with
    ``use_cache=True`` and ``False``, and a full-recompute loop without any cache. Variants run interleaved,
    best of up to 3 rounds while a batch size has used less than ``budget_s``.

    transformers forces the cache on for decoder-only ``generate(inputs_embeds=...)``, so ``use_cache=False``
    may still decode from a cache; a forward hook records whether it did. The cache speed-up is therefore
    ``generate(use_cache=True)`` over the recompute loop.
    """
    model.eval()
    never = model.suppress_ids[0]  # an image token: suppressed, so EOS never fires and all rows run full length
    out: dict[str, Any] = {"max_new_tokens": new_tokens,
                           "prompt_len": model.cfg.num_image_tokens + 2 + QUESTION_TOKENS}
    step_lengths: list[int] = []

    def hook(_module: Any, args: tuple, kwargs: dict, _out: Any) -> None:
        x = kwargs.get("inputs_embeds")
        x = kwargs.get("input_ids") if x is None else x
        if x is None and args:
            x = args[0]
        step_lengths.append(int(x.shape[1]) if x is not None else -1)

    handle = model.lm.register_forward_hook(hook, with_kwargs=True)
    try:
        for b in batches:
            batch = make_batch(model, b, 0, hwd, answer=False, gen=torch.Generator().manual_seed(1))
            ids, mask, images = batch["input_ids"], batch["attention_mask"], batch["images"]
            with torch.no_grad():
                feats = model.encode_images(images)
            model.encode_images = lambda _images, feats=feats: feats
            try:
                variants: dict[str, Callable[[int], torch.Tensor]] = {
                    "cache": lambda n, ids=ids, mask=mask, images=images: model.generate(
                        ids, mask, images, max_new_tokens=n, eos_token_id=never, pad_token_id=0, use_cache=True),
                    "use_cache_false": lambda n, ids=ids, mask=mask, images=images: model.generate(
                        ids, mask, images, max_new_tokens=n, eos_token_id=never, pad_token_id=0, use_cache=False),
                    "recompute": lambda n, ids=ids, mask=mask, images=images: greedy_recompute(
                        model, ids, mask, images, n),
                }
                times: dict[str, list[float]] = {k: [] for k in variants}
                bg: dict[str, list[float]] = {k: [] for k in variants}
                tokens: dict[str, torch.Tensor] = {}
                used_cache: dict[str, bool] = {}
                for key, fn in variants.items():
                    step_lengths.clear()
                    fn(3)
                    used_cache[key] = len(step_lengths) > 1 and all(n == 1 for n in step_lengths[1:])
                start = time.perf_counter()
                while not times["cache"] or (len(times["cache"]) < 3 and time.perf_counter() - start < budget_s):
                    for key, fn in variants.items():
                        QUIET()
                        with BackgroundLoad() as load:
                            t = time.perf_counter()
                            tokens[key] = fn(new_tokens)
                            times[key].append(time.perf_counter() - t)
                        bg[key].append(load.cores)
                row: dict[str, Any] = {}
                for key in variants:
                    best = min(times[key])
                    n = int(tokens[key].numel())
                    row[key] = {"best_s": best, "runs": len(times[key]), "new_tokens": n,
                                "new_tokens_per_s": n / best, "decoded_from_cache": used_cache[key],
                                "background_cores_best_run": bg[key][times[key].index(best)]}
                row["cache_speedup"] = row["cache"]["new_tokens_per_s"] / row["recompute"]["new_tokens_per_s"]
                row["same_tokens"] = bool(torch.equal(tokens["cache"], tokens["recompute"])
                                          and torch.equal(tokens["cache"], tokens["use_cache_false"]))
                out[f"batch{b}"] = row
            finally:
                del model.encode_images
    finally:
        handle.remove()
    return out


def run_config(name: str, warmup: int, steps: int, quick: bool, adamw: str, profile: bool,
               max_seconds: float, quiet_wait: float) -> dict[str, Any]:
    from radfm.model import factory, presets

    torch.manual_seed(0)
    QUIET.left = quiet_wait
    base_rss = rss_mb()
    cfg = presets.preset(name)
    seq_len = cfg.max_length if name.startswith("ref-") else SEQ_LEN[name]
    model = factory.build_model(cfg, tokenizer=None)
    counts = factory.count_parameters(model)
    res: dict[str, Any] = {"config": name, "params": counts, "seq_len": seq_len, "rss_after_import_mb": base_rss,
                           "rss_after_build_mb": rss_mb(), "peak_before_mb": peak_rss_mb()}
    peaks = [probe_peak(reps=5)]
    res["train"] = {}
    for mode, hwd in IMAGE_SHAPES[name].items():
        print(f"[{name}] train {mode} {hwd} seq {seq_len}", flush=True)
        res["train"][mode] = bench_train(model, name, mode, hwd, seq_len, warmup, steps, adamw, profile,
                                           max_seconds)
    res["peak_rss_train_mb"] = peak_rss_mb()
    primary = "3d" if "3d" in IMAGE_SHAPES[name] else next(iter(IMAGE_SHAPES[name]))
    hwd = IMAGE_SHAPES[name][primary]
    print(f"[{name}] embedding path ({primary})", flush=True)
    emb = bench_embedding(model, make_batch(model, BATCH, seq_len, hwd, gen=torch.Generator().manual_seed(0)), quick)
    emb["mode"] = primary
    for mode, tr in res["train"].items():
        emb[f"ours_fraction_of_step_{mode}"] = emb["ours"]["forward_backward"]["best_s"] / tr["step_best_s"]
        emb[f"radfm_fraction_of_step_{mode}"] = emb["radfm"]["forward_backward"]["best_s"] / tr["step_best_s"]
    res["embedding"] = emb
    print(f"[{name}] generation", flush=True)
    res["generation"] = bench_generation(model, hwd, (1, 8), 8 if quick else 32, 3.0 if quick else 10.0)
    peaks.append(probe_peak(reps=5))
    res["peak_probe_flops_per_s"] = peaks
    res["peak_rss_end_mb"] = peak_rss_mb()
    res["quiet_waited_s"] = QUIET.waited
    return res


# ---- report -------------------------------------------------------------------------------------------------
def report(results: dict[str, Any]) -> str:
    out: list[str] = []
    rows = []
    for name, res in results["configs"].items():
        for mode, tr in res["train"].items():
            ph = tr["phases_best_step_s"]
            rows.append([name, mode, "x".join(map(str, tr["image_hwd"])), str(tr["seq_len"]),
                         f"{res['params']['total'] / 1e6:.1f}M",
                         f"{tr['step_best_s']:.3f}/{tr['step_median_s']:.3f}",
                         f"{ph['forward']:.2f}/{ph['backward']:.2f}/{ph['optimizer']:.2f}",
                         f"{tr['samples_per_s']:.2f}", f"{tr['tokens_per_s']:.0f}",
                         f"{tr['flops_per_step'] / 1e9:.1f}",
                         "/".join(f"{100 * v / tr['forward_flops']:.0f}" for v in tr["forward_flops_by_part"].values()),
                         f"{tr['achieved_flops_per_s'] / 1e9:.1f}",
                         f"{tr['peak_flops_per_s'] / 1e9:.0f}",
                         f"{100 * tr['peak_fraction']:.1f}%", f"{100 * tr['peak_fraction_median']:.1f}%",
                         f"{tr['background_cores_best_step']:.1f}/{max(tr['background_cores_per_step']):.1f}",
                         f"{res['peak_rss_train_mb']:.0f}"])
    out.append(f"Train step (batch {BATCH}, 1 image/sample, {QUESTION_TOKENS}-token question, AdamW "
               f"{results['meta'].get('adamw', 'default')}; best of {results['meta'].get('timed_steps')} timed steps)")
    out.append(fmt_table(["config", "mode", "image", "seq", "params", "step s best/med", "fwd/bwd/opt s",
                          "samples/s", "tokens/s", "GFLOP/step", "V/R/LM %", "GFLOP/s", "peak GFLOP/s", "% peak",
                          "% peak med", "bg cores", "peak RSS MB"], rows))
    out.append(f"FLOPs: {FLOP_METHOD}.")
    out.append(f"peak: best {PEAK_N}x{PEAK_N} fp32 torch.matmul probed before each timed step. % peak = step FLOPs "
               "/ best step time / peak; '% peak med' = median over steps of the same ratio with that step's own "
               "probe. samples/s, tokens/s and fwd/bwd/opt are from the best step. bg cores = CPU cores busy "
               "with other processes during the best / the worst step (shared machine). V/R/LM % = share of "
               "forward FLOPs in the vision encoder / resampler+projection / language model.")

    rows = []
    for name, res in results["configs"].items():
        e = res["embedding"]
        fr = "  ".join(f"{m}:{100 * e[f'ours_fraction_of_step_{m}']:.2f}%" for m in res["train"])
        rf = "  ".join(f"{m}:{100 * e[f'radfm_fraction_of_step_{m}']:.1f}%" for m in res["train"])
        rows.append([name, f"{e['ours_vocab']}/{e['radfm_vocab_rows']}x{e['hidden']}",
                     f"{1e3 * e['ours']['forward']['best_s']:.2f}", f"{1e3 * e['radfm']['forward']['best_s']:.1f}",
                     f"{e['ratio_forward']:.0f}x", f"{1e3 * e['ours']['forward_backward']['best_s']:.2f}",
                     f"{1e3 * e['radfm']['forward_backward']['best_s']:.1f}", f"{e['ratio_forward_backward']:.0f}x",
                     fr, rf])
    out.append("")
    out.append("Embedding path without the vision encoder (our lookup + masked_scatter vs RadFM's one-hot @ "
               "[32000-row table; 2; 32 image rows]); best of repeated runs; % of step = f+b / best train step")
    out.append(fmt_table(["config", "vocab ours/radfm x H", "ours fwd ms", "radfm fwd ms", "ratio",
                          "ours f+b ms", "radfm f+b ms", "ratio", "ours % of step", "radfm % of step"], rows))

    rows = []
    for name, res in results["configs"].items():
        g = res["generation"]
        for b in (1, 8):
            r = g[f"batch{b}"]
            c, f, n = r["cache"], r["use_cache_false"], r["recompute"]
            rows.append([name, str(b), str(g["max_new_tokens"]), f"{c['new_tokens_per_s']:.1f}",
                         f"{f['new_tokens_per_s']:.1f} ({'cached' if f['decoded_from_cache'] else 'no cache'})",
                         f"{n['new_tokens_per_s']:.1f}", f"{r['cache_speedup']:.2f}x",
                         "yes" if r["same_tokens"] else "NO",
                         f"{c['background_cores_best_run']:.1f}/{n['background_cores_best_run']:.1f}"])
    out.append("")
    out.append("Generation, greedy, new tokens/s, prefill included (prompt = image block + 32-token question; image "
               "features precomputed; EOS never fires). 'recompute' = the LM rerun over the whole sequence per "
               "token (no cache); ratio = cache / recompute")
    out.append(fmt_table(["config", "batch", "new", "generate cache", "generate use_cache=False", "recompute",
                          "ratio", "same tokens", "bg cores"], rows))
    if any(r["use_cache_false"]["decoded_from_cache"] for res in results["configs"].values()
           for k, r in res["generation"].items() if k.startswith("batch")):
        out.append("note: model.generate(use_cache=False) still decoded one token per step from a cache: "
                   "transformers forces use_cache=True for decoder-only generate(inputs_embeds=...).")

    out.append("")
    goals = results["goals"]
    if goals:
        for g in goals:
            out.append(f"goal {g['goal']}: {g['value']} -> {g['verdict']}")
    else:
        out.append(f"goals concern {GOAL_CONFIG!r}, which was not run")
    return "\n".join(out)


def evaluate_goals(configs: dict[str, Any]) -> list[dict[str, str]]:
    res = configs.get(GOAL_CONFIG)
    if res is None:
        return []
    goals = []
    for mode, tr in res["train"].items():
        bg = tr["background_cores_best_step"]
        caveat = (f" (contended: other processes kept {bg:.1f} cores busy during the best step; rerun on a quiet "
                  "machine)") if bg >= CONTENDED_CORES else ""
        frac = tr["peak_fraction"]
        goals.append({"goal": f"{GOAL_CONFIG} {mode} train step >= {GOAL_PEAK_FRACTION:.0%} of matmul peak",
                      "value": f"{frac:.1%} (best step; median of per-step ratios {tr['peak_fraction_median']:.1%})",
                      "verdict": ("PASS" if frac >= GOAL_PEAK_FRACTION else "MISS") + caveat})
        emb = res["embedding"][f"ours_fraction_of_step_{mode}"]
        goals.append({"goal": f"{GOAL_CONFIG} {mode} embedding path <= {GOAL_EMBED_FRACTION:.0%} of the step",
                      "value": f"{emb:.2%}",
                      "verdict": ("PASS" if emb <= GOAL_EMBED_FRACTION else "MISS") + caveat})
    return goals


# ---- entry points -------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=None,
                   help=f"comma-separated presets (default {','.join(CONFIGS)}; with --quick {','.join(QUICK_CONFIGS)})")
    p.add_argument("--steps", type=int, default=None, help="timed train steps per mode (default 5; --quick 2)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed warm-up steps before the FLOP-counted step (default 1)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="stop timing a mode after this many seconds once 2 steps ran (default 60; --quick 10)")
    p.add_argument("--json", default=str(ROOT / "bench" / "results" / "model_step.json"), help="where to write JSON")
    p.add_argument("--quick", action="store_true", help="~1-minute smoke run")
    p.add_argument("--quiet-wait", type=float, default=None,
                   help="seconds per config it may spend waiting for other processes to leave the CPUs before "
                        "measurements, at most 3 s at a time (default 20; --quick 5; 0 disables)")
    p.add_argument("--adamw", choices=("default", "fused"), default="default",
                   help="AdamW implementation (default: torch's default, i.e. foreach)")
    p.add_argument("--profile", action="store_true", help="also profile one train step per mode (torch.profiler)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    warmup = args.warmup if args.warmup is not None else 1
    steps = args.steps if args.steps is not None else (2 if args.quick else 5)
    max_seconds = args.max_seconds if args.max_seconds is not None else (10.0 if args.quick else 60.0)
    quiet_wait = args.quiet_wait if args.quiet_wait is not None else (5.0 if args.quick else 20.0)
    if args.worker:
        res = run_config(args.worker, warmup, max(2, steps), args.quick, args.adamw, args.profile, max_seconds,
                         quiet_wait)
        Path(args.worker_out).write_text(json.dumps(res))
        return 0

    names = [c.strip() for c in (args.config or ",".join(QUICK_CONFIGS if args.quick else CONFIGS)).split(",")
             if c.strip()]
    unknown = [n for n in names if n not in IMAGE_SHAPES]
    if unknown:
        print(f"unknown config(s) {unknown}; choose from {list(IMAGE_SHAPES)}", file=sys.stderr)
        return 2
    meta = machine_info(("torch", "transformers"), dirty={"model_code_dirty": "radfm/model"})
    meta["flop_method"] = FLOP_METHOD
    meta.update(warmup_steps=warmup, timed_steps=steps, max_seconds_per_mode=max_seconds, adamw=args.adamw,
                quiet_wait_s=quiet_wait)
    print(f"{meta['cpu']}, {meta['nproc']} CPUs, torch {meta['torch']} ({meta['torch_threads']} threads)", flush=True)
    configs: dict[str, Any] = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            out = Path(tmp) / f"{name}.json"
            cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--worker-out", str(out),
                   "--steps", str(steps), "--warmup", str(warmup), "--adamw", args.adamw,
                   "--max-seconds", str(max_seconds), "--quiet-wait", str(quiet_wait)]
            cmd += ["--quick"] if args.quick else []
            cmd += ["--profile"] if args.profile else []
            t = time.perf_counter()
            proc = subprocess.run(cmd, check=False)
            if proc.returncode != 0:
                print(f"[{name}] worker failed with exit code {proc.returncode}", file=sys.stderr)
                return proc.returncode
            configs[name] = json.loads(out.read_text())
            configs[name]["wall_s"] = time.perf_counter() - t
            print(f"[{name}] done in {configs[name]['wall_s']:.0f} s "
                  f"({configs[name]['quiet_waited_s']:.0f} s of it waiting for a quiet CPU)", flush=True)
    meta["wall_s"] = time.perf_counter() - t0
    results = {"meta": meta, "configs": configs, "goals": evaluate_goals(configs)}
    print()
    print(report(results))
    print(f"\nwall time {meta['wall_s']:.0f} s")
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
