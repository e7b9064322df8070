"""Where a train step's time goes (not a test): one profiled step of main's train step (fp32, fused AdamW) per
config, split into the matrix products and everything else, and the matrix products' own share of the fp32
peak.

    python bench/step_profile.py [--config small,ref-small] [--json PATH]

The step, batch and peak probe are bench/step_variants.py's (batch 2, one image per row; the peak a 2048²
matmul in this process). The products' FLOPs are counted from the profiled shapes (``mm``, ``addmm``, ``bmm``:
2·M·K·N); their time is the profiler's self time. The step as a whole cannot run nearer the peak than its
products do: that share bounds issue 27's "≥ 85 % of peak" goal for these shapes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import fmt_table, machine_info, write_json  # noqa: E402
from bench.model_step import BATCH, IMAGE_SHAPES, SEQ_LEN, make_batch, train_step  # noqa: E402
from bench.step_variants import MODES, peak  # noqa: E402

MATMULS = ("aten::mm", "aten::addmm", "aten::bmm")


def _flops(key: str, shapes: list[list[int]]) -> float:
    """2·M·K·N of one call from its input shapes (``addmm``: bias first)."""
    a, b = (shapes[1], shapes[2]) if key == "aten::addmm" else (shapes[0], shapes[1])
    if key == "aten::bmm":
        return 2.0 * a[0] * a[1] * a[2] * b[2]
    return 2.0 * a[0] * a[1] * b[1]


def profile_step(name: str, warmup: int = 2) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile

    from radfm.model import factory, presets

    torch.manual_seed(0)
    cfg = presets.preset(name)
    seq = cfg.max_length if name.startswith("ref-") else SEQ_LEN[name]
    model = factory.build_model(cfg, tokenizer=None).train()
    batch = make_batch(model, BATCH, seq, IMAGE_SHAPES[name][MODES[name]], gen=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    for _ in range(warmup):
        train_step(model, opt, batch)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        train_step(model, opt, batch)
    by_shape = prof.key_averages(group_by_input_shape=True)
    mm_flops = sum(_flops(e.key, e.input_shapes) * e.count for e in by_shape if e.key in MATMULS and e.input_shapes)
    mm_s = sum(e.self_cpu_time_total for e in by_shape if e.key in MATMULS) / 1e6
    total_s = sum(e.self_cpu_time_total for e in prof.key_averages()) / 1e6
    top = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
    fp32_peak = peak(torch.float32)
    return {"config": name, "step_s_profiled": total_s, "matmul_s": mm_s, "matmul_gflop": mm_flops / 1e9,
            "matmul_share_of_time": mm_s / total_s, "matmul_gflops": mm_flops / mm_s / 1e9,
            "fp32_peak_gflops": fp32_peak / 1e9, "matmul_share_of_peak": mm_flops / mm_s / fp32_peak,
            "top_ops": [{"op": e.key, "self_ms": e.self_cpu_time_total / 1e3, "calls": e.count} for e in top]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="small,ref-small")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "step_profile.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = [profile_step(c) for c in args.config.split(",")]
    print(fmt_table(["config", "step s (profiled)", "matmul share of time", "matmul GFLOP/s", "fp32 peak",
                     "matmuls % of peak"],
                    [[r["config"], f"{r['step_s_profiled']:.3f}", f"{r['matmul_share_of_time']:.0%}",
                      f"{r['matmul_gflops']:.0f}", f"{r['fp32_peak_gflops']:.0f}",
                      f"{r['matmul_share_of_peak']:.0%}"] for r in results]))
    for r in results:
        print(f"\n{r['config']}: top ops by self time")
        print(fmt_table(["op", "self ms", "calls"],
                        [[o["op"], f"{o['self_ms']:.1f}", str(o["calls"])] for o in r["top_ops"]]))
    write_json(args.json, {"machine": machine_info(), "results": results})


if __name__ == "__main__":
    main()
