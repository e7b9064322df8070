"""Wall time of each stage of `make demo` (the radfm-pipeline flow on MedMD-synth, tiny preset, CPU), the whole
command, the orchestration overhead and the peak memory; prints a table and writes JSON to bench/results/.

    .venv/bin/python bench/pipeline.py            # a fresh RADFM_HOME under bench/results/pipeline-home
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (default: the demo's)")
    parser.add_argument("--keep-home", action="store_true", help="reuse the previous bench RADFM_HOME (cached)")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    home = RESULTS / "pipeline-home"
    if home.exists() and not args.keep_home:
        shutil.rmtree(home)
    env = {**os.environ, "RADFM_HOME": str(home), "TORCHINDUCTOR_CACHE_DIR": str(home / "cache" / "torchinductor")}
    env.pop("PREFECT_HOME", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    out_json = RESULTS / "pipeline-run.json"
    # The data dir of the demo is the repository's data/ (DVC-tracked); the bench keeps its own copy in its home.
    cmd = [sys.executable, "-m", "flows.pipeline", "--json", str(out_json), *args.overrides,
           f"paths.data_dir={home / 'data'}"]
    if not args.overrides:
        cmd.insert(-1, "experiment=demo_tiny")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    whole = time.perf_counter() - t0
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-5000:])
        return proc.returncode
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    run = json.loads(out_json.read_text())
    t = run["timings"]
    rows = [(name, s["state"], s["wall_s"], s["work_s"]) for name, s in t["stages"].items()]
    print(f"{'stage':<16} {'state':<10} {'wall s':>8} {'work s':>8}")
    for name, state, wall, work in rows:
        print(f"{name:<16} {state:<10} {wall:>8.1f} {work:>8.1f}")
    startup = whole - t["flow_wall_s"]
    print(f"\nflow {t['flow_wall_s']:.1f} s = task work {t['work_s']:.1f} s + orchestration {t['overhead_s']:.1f} s "
          f"({100 * t['overhead_ratio']:.1f}%)")
    print(f"whole command {whole:.1f} s (process start, imports and Prefect's local API: {startup:.1f} s); "
          f"peak RSS {peak_mb:.0f} MB")
    tasks = {k: {m: v["model"].get(m) for m in ("accuracy", "findings_f1", "rougeL") if m in v["model"]}
             for k, v in run["radbench"].items()}
    print("RadBench (model):", json.dumps(tasks))
    record = {"date": time.strftime("%Y-%m-%d"), "command": " ".join(["python", "bench/pipeline.py", *args.overrides]),
              "machine": {"cpus": os.cpu_count(), "platform": sys.platform}, "whole_s": whole,
              "startup_s": startup, "peak_rss_mb": peak_mb, "timings": t, "radbench": run["radbench"],
              "families": run.get("families")}
    (RESULTS / "pipeline.json").write_text(json.dumps(record, indent=2, default=str))
    print(f"wrote {RESULTS / 'pipeline.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
