"""What one step of the demo's training costs on this CPU (not a test): the vision warm-up step and the joint
step, on the demo's own batches, in fp32 and under bf16 autocast, with 2 torch threads and with 1.

    .venv/bin/python bench/demo_step.py [--batches 22] [--rounds 2] [OVERRIDE ...]

Why: ``make demo``'s time is ~95 % training (2000 warm-up steps + 350 joint steps, BENCHMARKS.md "Main job"),
so the ≤ 10 minute goal is a question of what a step costs and what cheapens it. The config is
``experiment=demo_tiny`` plus the overrides; the batches are the first ``--batches`` + 3 of the training loader
(the first 3 warm the kernels and are not timed), the same list for every mode, so the modes are compared as
ratios measured in one process, in alternating rounds. Weights move (lr 1e-5) but that does not change a
step's cost. Runs under ``RADFM_HOME`` (default bench/results/train-eval-home); writes
bench/results/demo_step.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import cpu_model, fmt_table, machine_info, training_parts, write_json  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=22, help="timed batches per mode and round")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds over the modes")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    os.environ.setdefault("RADFM_HOME", str(ROOT / "bench" / "results" / "train-eval-home"))
    os.environ.setdefault("RADFM_DATA_DIR", str(Path(os.environ["RADFM_HOME"]) / "data"))

    import lightning as L
    import torch

    from radfm.train.callbacks.vision_warmup import warm_up_vision
    from radfm.train.compose import compose

    cfg = compose(["experiment=demo_tiny", "logger=none", *args.overrides])
    L.seed_everything(int(cfg.seed))
    _, _, dm, module = training_parts(cfg, Path(str(cfg.paths.runs_dir)) / "demo-step")
    module.log = lambda *a, **k: None  # no Trainer attached: the step's logging has nowhere to go
    batches: list[dict[str, Any]] = []
    for batch in dm.train_dataloader():
        batches.append(batch)
        if len(batches) >= args.batches + 3:
            break
    warm, timed = batches[:3], batches[3:]
    opt = torch.optim.AdamW(module.parameters(), lr=1e-5)
    bf16 = torch.bfloat16

    def joint(bs: list[dict[str, Any]], dtype: torch.dtype | None) -> float:
        """Mean seconds of a joint step (vision + LM + heads, backward, AdamW) over ``bs``."""
        t0 = time.perf_counter()
        for b in bs:
            with torch.autocast("cpu", dtype=dtype or bf16, enabled=dtype is not None):
                loss = module._step(b, "train")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return (time.perf_counter() - t0) / len(bs)

    def vision(bs: list[dict[str, Any]], dtype: torch.dtype | None) -> float:
        """Mean seconds of a vision warm-up step over ``bs`` (radfm.train.warmup, as `radfm train` runs it)."""
        return warm_up_vision(module, bs, len(bs), 1e-5, autocast_dtype=dtype)["seconds"] / len(bs)

    modes = [(kind, threads, dtype) for kind in ("warm-up", "joint") for threads in (2, 1)
             for dtype in (None, bf16)]
    threads0 = torch.get_num_threads()
    for dtype in (None, bf16):  # first calls build oneDNN kernels: not timed
        joint(warm, dtype)
        vision(warm, dtype)
    times: dict[tuple[str, int, str], list[float]] = {}
    for _ in range(args.rounds):
        for kind, threads, dtype in modes:
            torch.set_num_threads(threads)
            s = (vision if kind == "warm-up" else joint)(timed, dtype)
            times.setdefault((kind, threads, "bf16" if dtype else "fp32"), []).append(s)
    torch.set_num_threads(threads0)

    rows, result = [], []
    for (kind, threads, prec), ss in times.items():
        ref = statistics.median(times[(kind, 2, "fp32")])
        med = statistics.median(ss)
        rows.append([kind, str(threads), prec, f"{1000 * med:.0f}", f"{med / ref:.2f}"])
        result.append({"step": kind, "threads": threads, "precision": prec, "ms": 1000 * med,
                       "ms_rounds": [1000 * s for s in ss], "ratio_to_fp32_2_threads": med / ref})
    print(f"demo steps on {cpu_model()} ({args.batches} batches × {args.rounds} rounds, median)")
    print(fmt_table(["step", "threads", "precision", "ms / step", "× fp32, 2 threads"], rows))
    write_json(ROOT / "bench" / "results" / "demo_step.json",
               {"machine": machine_info(), "overrides": args.overrides, "batches": args.batches,
                "rounds": args.rounds, "cpu_flags_bf16": cpu_bf16(), "modes": result})
    return 0


def cpu_bf16() -> bool | None:
    """Whether the CPU has native bf16 dot products (AVX512_BF16 or AMX_BF16); None where /proc is absent.
    Without them bf16 autocast is emulated and is no speed lever."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    return "avx512_bf16" in flags or "amx_bf16" in flags


if __name__ == "__main__":
    raise SystemExit(main())
