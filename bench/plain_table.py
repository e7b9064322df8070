"""MedMD-synth as a plain user table: id, image, split, question, answer — no labels, family, choices or meta —
ingested with `radfm ingest table` and run through the radfm-pipeline flow with `data=csv` and a recipe of
overrides; prints the families table (model / blind / image-ablated, closed, beats both) and the gate's
decision, and writes JSON to bench/results/plain_table.json.

    .venv/bin/python bench/plain_table.py                      # the answers recipe (below)
    .venv/bin/python bench/plain_table.py --recipe none        # data=csv as shipped (objective=[answer])
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
# The demo's model and schedule, with targets made from the table's own answers instead of MedMD-synth's scenes.
RECIPES = {
    # The demo's patch head learns finding-type names, which answer targets do not have: weight 0 leaves it out
    # (the experiment configures it, so a shorter objective list would leave its options without a class).
    "answers": ["experiment=demo_tiny", "data=csv", "data.label_source=answers", "data.turns=null",
                "objective.patch_head.weight=0", "objective.answer.term_extra=[]"],
    "none": ["data=csv"],
}


def export_plain(home: Path) -> Path:
    """Generate MedMD-synth and write it as a table holding only what any user's table holds."""
    sys.path.insert(0, str(ROOT))
    from radfm.data.manifest import read_manifest
    from radfm.data.synth import SynthConfig, generate

    src = home / "synth"
    manifest = generate(SynthConfig(n_samples=600, seed=0, variant="easy"), src)
    table = home / "table.csv"
    with table.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "image", "split", "question", "answer"])
        for s in read_manifest(manifest):
            if len(s.images) == 1:
                w.writerow([s.id, str(src / s.images[0].path), s.split, s.question, s.answer])
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="answers")
    parser.add_argument("overrides", nargs="*", help="more Hydra overrides")
    args = parser.parse_args()
    home = RESULTS / "plain-table-home"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    table = export_plain(home)
    data = home / "data" / "plain"
    env = {**os.environ, "RADFM_HOME": str(home), "RADFM_DATA_ROOT": str(data)}
    env.pop("MLFLOW_TRACKING_URI", None)
    subprocess.run([sys.executable, "-m", "radfm.cli", "ingest", "table", str(table), "--out", str(data),
                    "--image-root", "/"], cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    out_json = home / "run.json"
    cmd = [sys.executable, "-m", "flows.pipeline", "--json", str(out_json), *RECIPES[args.recipe], *args.overrides]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    whole = time.perf_counter() - t0
    if not out_json.exists():
        print(proc.stdout[-3000:], proc.stderr[-5000:])
        return proc.returncode or 1
    run = json.loads(out_json.read_text())
    print(f"{'family':<28} {'n':>4} {'closed':>6} {'model':>7} {'blind':>7} {'ablated':>7}  beats both")
    for name, f in sorted((run.get("families") or {}).items()):
        print(f"{name:<28} {f.get('n', 0):>4.0f} {str(f.get('closed')):>6} {f['model']['headline']:>7.3f} "
              f"{f['blind']['headline']:>7.3f} {f['ablated']['headline']:>7.3f}  {f['beats_both']}")
    decision = run.get("decision") or {}
    print(f"\ngate: {'promoted' if decision.get('promoted') else 'refused'}: {decision.get('reason')}")
    print(f"train {run['timings']['stages']['train']['wall_s']:.1f} s, whole {whole:.1f} s, exit code {proc.returncode}")
    record = {"date": time.strftime("%Y-%m-%d"), "command": " ".join(["python bench/plain_table.py", "--recipe",
                                                                     args.recipe, *args.overrides]),
              "overrides": RECIPES[args.recipe] + args.overrides, "whole_s": whole, "exit_code": proc.returncode,
              "families": run.get("families"), "decision": decision, "timings": run["timings"]}
    (RESULTS / "plain_table.json").write_text(json.dumps(record, indent=2, default=str))
    print(f"wrote {RESULTS / 'plain_table.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
