"""Train the demo config with Hydra overrides (no MLflow), then RadBench on the test split: a quick A/B harness.

    .venv/bin/python bench/train_eval.py NAME [OVERRIDES…]     # e.g. callbacks.vision_warmup.steps=900
    .venv/bin/python bench/train_eval.py NAME --ablate …        # also the image-ablated baseline

Runs under RADFM_HOME (default bench/results/train-eval-home; data in its data/ folder), prints the per-task and
per-family RadBench tables and writes bench/results/train-eval-NAME.json. The same data and seed give the same
table as `make demo` for the same config (BENCHMARKS.md, "Main job").
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help="run name (also names the JSON)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides on top of experiment=demo_tiny")
    parser.add_argument("--ablate", action="store_true", help="also score the image-ablated model")
    args = parser.parse_args()
    home = Path(os.environ.setdefault("RADFM_HOME", str(RESULTS / "train-eval-home")))
    os.environ.setdefault("RADFM_DATA_DIR", str(home / "data"))

    from radfm.eval.radbench import evaluate_checkpoint
    from radfm.eval.report import headline_table
    from radfm.train.compose import compose
    from radfm.train.train import train

    cfg = compose(["experiment=demo_tiny", "logger=none", f"run_name={args.name}", *args.overrides])
    t0 = time.perf_counter()
    metrics = train(cfg)
    train_s = time.perf_counter() - t0
    run_dir = Path(str(cfg.paths.runs_dir)) / args.name
    t0 = time.perf_counter()
    summary = evaluate_checkpoint(run_dir / "model", cfg.data.manifest, run_dir / "radbench", ablate=args.ablate,
                                  embedding=False)
    eval_s = time.perf_counter() - t0
    print(f"{args.name}: train {train_s:.0f} s, RadBench {eval_s:.0f} s, {int(metrics['global_step'])} joint steps")
    for level in ("tasks", "families"):
        for row in headline_table(summary, level):
            print("  ".join(f"{c:>20}" for c in row))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"train-eval-{args.name}.json"
    out.write_text(json.dumps({"name": args.name, "overrides": args.overrides, "train_s": train_s,
                               "eval_s": eval_s, "metrics": metrics, "summary": summary}, indent=2, default=str))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
