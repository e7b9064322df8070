"""Decoding benchmark (not a test): greedy tokens/s of the lean static-cache decoder against ``transformers``'
``generate`` (what main ran before it, still reachable as ``generate(lean=False)``), side by side in one process.

    python bench/decode.py [--config ref-tiny,ref-small] [--batch 1,8] [--beams 1,3] [--new-tokens 32] [--reps 5]
                           [--json PATH]

Each (config, batch) builds the preset's model (random weights: speed does not depend on them), a left-padded
batch of prompts (``--prompt`` tokens: a question and one image's 32 latents, as RadBench's prompts hold), and
decodes ``--new-tokens`` tokens with no EOS, alternating the two decoders ``--reps`` times after one warm-up
each; the figure is the best time of each (the machine is shared: the best is the least disturbed), and the
speed-up is their ratio. The tokens of the two are compared on every call. ``--beams``: 1 is greedy, more is beam
search (the lean loop's ``beam`` against ``generate(num_beams=…)``; tokens/s counts the returned tokens, not the
beams'). Goals (issue 27, greedy): ≥ 3× at batch 1, ≥ 2× at batch 8; reported as PASS/MISS, never asserted.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import fmt_table, machine_info, write_json  # noqa: E402

GOALS = {1: 3.0, 8: 2.0}


def _model(name: str) -> Any:
    from radfm.model import factory
    from radfm.model.presets import preset

    torch.manual_seed(0)
    return factory.build_model(preset(name)).eval()


def _prompts(model: Any, batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` left-padded prompts of ``length`` tokens at most (row r is r tokens shorter, up to a quarter)."""
    vocab = model.lm.get_input_embeddings().weight.shape[0]
    g = torch.Generator().manual_seed(batch)
    ids = torch.randint(3, vocab - 3, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    for r in range(batch):
        mask[r, : min(r, length // 4)] = 0
    return ids, mask


def matvec_bandwidth(reps: int = 5) -> float:
    """Bytes/s at which this process streams an fp32 weight matrix through ``F.linear`` at batch 1 (a 256 MB
    8192×8192 matrix: far larger than any cache): the memory roofline of a decoding step, best of ``reps``."""
    w, x = torch.randn(8192, 8192), torch.randn(1, 8192)
    best = float("inf")
    with torch.no_grad():
        torch.nn.functional.linear(x, w)
        for _ in range(reps):
            t0 = time.perf_counter()
            torch.nn.functional.linear(x, w)
            best = min(best, time.perf_counter() - t0)
    return w.numel() * w.element_size() / best


def weight_bytes_per_token(model: Any) -> int:
    """The LM weights one decoding step reads once each: every layer, the final norm and the LM head (the input
    embedding table is read one row per token)."""
    lm = model.lm
    read = [*lm.model.layers.parameters(), *lm.model.norm.parameters(), *lm.lm_head.parameters()]
    return sum(p.numel() * p.element_size() for p in read)


def matmul_only_step(model: Any, rows: int, reps: int = 5) -> float:
    """Seconds of one decoding step's matrix products alone: every linear layer of the LM (q, k, v, o, gate, up,
    down per layer, then the head) on ``rows`` rows, through the lean decoder's own path (its packed head
    included), one after another as a step runs them, nothing else; best of ``reps`` after a warm-up. No
    decoder that computes these products in fp32 with these kernels takes less per step: the roofline."""
    from radfm.model.decode import LeanDecoder

    dec = LeanDecoder(model.lm)
    dec._pack_head(rows)
    calls = []
    for layer in model.lm.model.layers:
        a, m = layer.self_attn, layer.mlp
        calls += [(mod, torch.randn(rows, mod.in_features))
                  for mod in (a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj)]
    calls.append((dec._head, torch.randn(rows, model.lm.lm_head.in_features)))
    best = float("inf")
    with torch.no_grad():
        for i in range(reps + 1):
            t0 = time.perf_counter()
            for fn, x in calls:
                fn(x)
            if i:
                best = min(best, time.perf_counter() - t0)
    return best


def _time(fn: Any) -> tuple[float, torch.Tensor]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def measure(name: str, batch: int, prompt: int, new: int, reps: int, beams: int = 1,
            model: Any = None) -> dict[str, Any]:
    model = model or _model(name)
    ids, mask = _prompts(model, batch, prompt)
    kw = dict(max_new_tokens=new, eos_token_id=None, pad_token_id=0, num_beams=beams)
    runs = {"lean": lambda: model.generate(ids, mask, **kw), "generate": lambda: model.generate(ids, mask, lean=False,
                                                                                                 **kw)}
    times: dict[str, list[float]] = {k: [] for k in runs}
    same = True
    with torch.no_grad():
        for fn in runs.values():
            fn()  # warm-up
        for _ in range(reps):
            outs = {}
            for key, fn in runs.items():
                seconds, outs[key] = _time(fn)
                times[key].append(seconds)
            same &= torch.equal(outs["lean"], outs["generate"])
    best = {k: min(v) for k, v in times.items()}
    return {"config": name, "batch": batch, "beams": beams, "prompt_tokens": prompt, "new_tokens": new, "reps": reps,
            "seconds": times, "best_s": best,
            "tokens_per_s": {k: batch * new / v for k, v in best.items()},
            "speedup": best["generate"] / best["lean"], "same_tokens": same,
            "goal": GOALS.get(batch) if beams == 1 else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="ref-tiny,ref-small")
    parser.add_argument("--batch", default="1,8")
    parser.add_argument("--beams", default="1,3", help="1: greedy; more: beam search")
    parser.add_argument("--prompt", type=int, default=64, help="prompt tokens (a question and 32 image latents)")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "decode.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bandwidth = matvec_bandwidth()
    results = []
    for c in args.config.split(","):
        model = _model(c)
        per_token = weight_bytes_per_token(model)
        for k in args.beams.split(","):
            for b in args.batch.split(","):
                r = measure(c, int(b), args.prompt, args.new_tokens, args.reps, int(k), model)
                # The roofline: a decoder whose steps did nothing but their matrix products (no prefill, no
                # attention, no norms, no Python) would return b tokens per matmul-only step of b·k rows.
                step = matmul_only_step(model, int(b) * int(k))
                r["weight_bytes_per_step"] = per_token
                r["matmul_only_step_s"] = step
                r["roofline_tokens_per_s"] = int(b) / step
                r["roofline_speedup"] = r["roofline_tokens_per_s"] / r["tokens_per_s"]["generate"]
                results.append(r)
    rows = []
    for r in results:
        goal = r["goal"]
        verdict = "" if goal is None else ("PASS" if r["speedup"] >= goal else "MISS") + f" (≥{goal:g}×)"
        rows.append([r["config"], str(r["batch"]), str(r["beams"]), f"{r['tokens_per_s']['generate']:.0f}",
                     f"{r['tokens_per_s']['lean']:.0f}", f"{r['speedup']:.2f}×", str(r["same_tokens"]), verdict,
                     f"{r['roofline_tokens_per_s']:.0f}", f"{r['roofline_speedup']:.2f}×"])
    print(f"fp32 weights streamed at batch 1 (F.linear, 8192×8192, 256 MB): {bandwidth / 1e9:.1f} GB/s; roofline: "
          "the tokens/s of steps that are nothing but their matrix products")
    print(fmt_table(["config", "batch", "beams", "generate tok/s", "lean tok/s", "speed-up", "same tokens", "goal",
                     "roofline tok/s", "roofline speed-up"], rows))
    write_json(args.json, {"machine": machine_info(dirty={"dirty": "radfm"}), "matvec_bytes_per_s": bandwidth,
                           "results": results})


if __name__ == "__main__":
    main()
