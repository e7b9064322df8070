"""Train-step variants side by side (not a test): main's step (fp32, foreach AdamW) against fused AdamW and
bf16 autocast, on the same model, batch and thread count, alternating variants each round.

    python bench/step_variants.py [--config small,ref-small] [--rounds 4] [--json PATH]

Batches, FLOP counting and the fp32 matmul peak probe are bench/model_step.py's (batch 2, one image per row,
answer tokens to the sequence length). Each variant gets its own AdamW (the same initial weights: the model is
reloaded from a saved state before every variant's warm-up). Reported per variant: best and median step,
speed-up over main's step, FLOPs / best step as a share of the fp32 peak and of the bf16 peak (a 2048² matmul of
each dtype, probed in this process). Goals (issue 27) are printed as PASS/MISS, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import fmt_table, machine_info  # noqa: E402
from bench.model_step import BATCH, IMAGE_SHAPES, SEQ_LEN, count_step_flops, make_batch, train_step  # noqa: E402

VARIANTS = {
    "main": {"fused": False, "bf16": False},
    "fused": {"fused": True, "bf16": False},
    "bf16+fused": {"fused": True, "bf16": True},
}
MODES = {"small": "2d", "ref-small": "3d"}


def peak(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.matmul(a, b)
    best = min(_timed(lambda: torch.matmul(a, b)) for _ in range(reps))
    return 2 * n**3 / best


def _timed(fn: Any) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def one_step(model: Any, opt: torch.optim.Optimizer, batch: dict, bf16: bool) -> float:
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with ctx:
        return sum(train_step(model, opt, batch))


def run(name: str, rounds: int, warmup: int) -> dict[str, Any]:
    from radfm.model import factory, presets

    torch.manual_seed(0)
    cfg = presets.preset(name)
    seq = cfg.max_length if name.startswith("ref-") else SEQ_LEN[name]
    mode = MODES[name]
    model = factory.build_model(cfg, tokenizer=None).train()
    start = copy.deepcopy(model.state_dict())
    batch = make_batch(model, BATCH, seq, IMAGE_SHAPES[name][mode], gen=torch.Generator().manual_seed(0))
    flops = count_step_flops(model, batch)["total"]
    opts: dict[str, torch.optim.Optimizer] = {}
    losses: dict[str, float] = {}
    for key, v in VARIANTS.items():  # each variant's own optimizer, from the same weights
        model.load_state_dict(start)
        opts[key] = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=v["fused"] or None)
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if v["bf16"] else contextlib.nullcontext()
        with torch.no_grad(), ctx:
            losses[key] = float(model(**batch)["loss"])
    times: dict[str, list[float]] = {k: [] for k in VARIANTS}
    for r in range(warmup + rounds):
        for key, v in VARIANTS.items():
            t = one_step(model, opts[key], batch, v["bf16"])
            if r >= warmup:
                times[key].append(t)
    p32, p16 = peak(torch.float32), peak(torch.bfloat16)
    out = {"config": name, "mode": mode, "seq_len": seq, "batch": BATCH, "flops_per_step": flops,
           "peak_fp32_flops_per_s": p32, "peak_bf16_flops_per_s": p16, "first_loss": losses, "variants": {}}
    base = min(times["main"])
    for key, ts in times.items():
        best = min(ts)
        out["variants"][key] = {"steps_s": ts, "best_s": best, "median_s": statistics.median(ts),
                                "speedup_vs_main": base / best,
                                "fraction_of_fp32_peak": flops / best / p32,
                                "fraction_of_bf16_peak": flops / best / p16}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="small,ref-small")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--json", default=str(ROOT / "bench" / "results" / "step_variants.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    results = {"machine": machine_info(), "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
               "configs": [run(c, args.rounds, args.warmup) for c in args.config.split(",")]}
    rows = []
    for res in results["configs"]:
        for key, v in res["variants"].items():
            rows.append([res["config"], res["mode"], key, f"{v['best_s']:.3f} ({v['median_s']:.3f})",
                         f"{v['speedup_vs_main']:.2f}×", f"{100 * v['fraction_of_fp32_peak']:.0f}%",
                         f"{100 * v['fraction_of_bf16_peak']:.0f}%", f"{res['first_loss'][key]:.4f}"])
    print(fmt_table(["config", "mode", "variant", "step s best (median)", "vs main", "% fp32 peak",
                     "% bf16 peak", "first loss"], rows))
    for res in results["configs"]:
        print(f"{res['config']}: matmul peak fp32 {res['peak_fp32_flops_per_s'] / 1e9:.0f} GFLOP/s, "
              f"bf16 {res['peak_bf16_flops_per_s'] / 1e9:.0f} GFLOP/s")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
