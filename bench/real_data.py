"""Issue 24's measure: the default `data=csv` pipeline on plain user tables (id, image, split, question, answer
only: no labels, family or choices), over seeds; prints a table per data set and writes JSON.

    .venv/bin/python bench/real_data.py                               # both data sets, seeds 0,1,2
    .venv/bin/python bench/real_data.py --data medmd --seeds 0        # one run
    .venv/bin/python bench/real_data.py --data pneumonia --resnet-epochs 4 -- callbacks.vision_warmup.steps=800

* ``medmd``: MedMD-synth (600 images, seed 0, easy) exported to the plain table (the single-image rows).
  Goals: modality ≥ 0.95, lesion yes/no ≥ 0.80 (the row-weighted accuracy of the yes/no families), every
  closed family the gate judges beats both baselines, the whole pipeline ≤ 15 min on 2 cores.
* ``pneumonia``: ``../shared/data/pneumoniamnist.npz`` (or ``RADFM_MEDMNIST_NPZ``) as PNGs and a table: per
  image one yes/no question in one of three phrasings and "What is the diagnosis?" (normal / pneumonia).
  Goal: yes/no AUC ≥ 0.95 and above a ResNet-18 trained on the same train split in the same run (``_resnet``;
  the split holds 388 normal images against the official 1,214: MedMNIST's table is not comparable).

Each (data set, tag, seed) runs the radfm-pipeline flow in its own RADFM_HOME (its own MLflow store and registry,
so every seed's version 1 meets the gate alone), on a table ingested once with `radfm ingest table`.
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
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from bench._common import machine_info  # noqa: E402

RESULTS = ROOT / "bench" / "results"
PHRASINGS = ("Is there pneumonia in this chest X-ray?", "Does this X-ray show pneumonia?", "Is pneumonia present?")


def export_medmd(src: Path) -> Path:
    """MedMD-synth as the plain table (single-image rows; a multi-image row has no one image to name)."""
    from radfm.data.manifest import read_manifest
    from radfm.data.synth import SynthConfig, generate

    manifest = generate(SynthConfig(n_samples=600, seed=0, variant="easy"), src / "synth")
    table = src / "table.csv"
    with table.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "image", "split", "question", "answer"])
        for s in read_manifest(manifest):
            if len(s.images) == 1:
                w.writerow([s.id, str(src / "synth" / s.images[0].path), s.split, s.question, s.answer])
    return table


def npz_path() -> Path:
    return Path(os.environ.get("RADFM_MEDMNIST_NPZ") or ROOT.parent / "shared" / "data" / "pneumoniamnist.npz")


def export_pneumonia(src: Path) -> Path:
    """PneumoniaMNIST as PNGs and a plain table: two rows per image (a yes/no phrasing, the diagnosis)."""
    import numpy as np
    from PIL import Image

    data = np.load(npz_path())
    table = src / "table.csv"
    (src / "images").mkdir(parents=True, exist_ok=True)
    with table.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "image", "split", "question", "answer"])
        for split in ("train", "val", "test"):
            images, labels = data[f"{split}_images"], data[f"{split}_labels"].reshape(-1)
            for i, (img, y) in enumerate(zip(images, labels, strict=True)):
                name = f"images/{split}-{i:05d}.png"
                Image.fromarray(img).save(src / name)
                w.writerow([f"{split}-{i:05d}-yesno", name, split, PHRASINGS[i % 3], "yes" if y else "no"])
                w.writerow([f"{split}-{i:05d}-diagnosis", name, split, "What is the diagnosis?",
                            "pneumonia" if y else "normal"])
    return table


EXPORTS = {"medmd": export_medmd, "pneumonia": export_pneumonia}


def ingest(name: str, home: Path) -> Path:
    src, data = home / "src", home / "data"
    if (data / "manifest.jsonl").is_file():
        return data
    shutil.rmtree(home, ignore_errors=True)
    src.mkdir(parents=True)
    table = EXPORTS[name](src)
    subprocess.run([sys.executable, "-m", "radfm.cli", "ingest", "table", str(table), "--out", str(data),
                    "--image-root", str(src) if name == "pneumonia" else "/"], cwd=ROOT, check=True,
                   env={**os.environ, "RADFM_HOME": str(home)}, capture_output=True, text=True)
    return data


def run_pipeline(data: Path, home: Path, seed: int, overrides: list[str]) -> dict[str, Any]:
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    env = {**os.environ, "RADFM_HOME": str(home), "RADFM_DATA_ROOT": str(data)}
    env.pop("MLFLOW_TRACKING_URI", None)
    out_json = home / "run.json"
    cmd = [sys.executable, "-m", "flows.pipeline", "--json", str(out_json), "data=csv", f"seed={seed}", *overrides]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    whole = time.perf_counter() - t0
    if not out_json.exists():
        print(proc.stdout[-3000:], proc.stderr[-5000:])
        raise SystemExit(f"pipeline failed (exit {proc.returncode}) for seed {seed}")
    run = json.loads(out_json.read_text())
    return {"seed": seed, "whole_s": whole, "exit_code": proc.returncode, "families": run.get("families") or {},
            "decision": run.get("decision") or {}, "train_s": run["timings"]["stages"]["train"]["wall_s"]}


def summarise(name: str, run: dict[str, Any]) -> dict[str, Any]:
    fams = run["families"]
    yes_no = {k: f for k, f in fams.items() if f.get("closed") and "auc" in f["model"]}
    judged = {k: f for k, f in fams.items() if f.get("closed") and f.get("n", 0) >= 20}
    n_yes_no = sum(f["n"] for f in yes_no.values())
    out: dict[str, Any] = {
        "yes_no_accuracy": (sum(f["model"]["headline"] * f["n"] for f in yes_no.values()) / n_yes_no
                            if n_yes_no else None),
        "yes_no_auc": {k: f["model"]["auc"] for k, f in yes_no.items()},
        "judged": len(judged), "judged_beat_both": sum(bool(f["beats_both"]) for f in judged.values()),
        "promoted": bool(run["decision"].get("promoted")),
    }
    modality = [f for k, f in judged.items() if "modality" in k]
    if name == "medmd":
        out["modality"] = modality[0]["model"]["headline"] if modality else None
    return out


def print_runs(name: str, runs: list[dict[str, Any]]) -> None:
    print(f"\n## {name}")
    names = sorted({k for r in runs for k, f in r["families"].items() if f.get("closed") and f.get("n", 0) >= 20})
    print(f"{'family (closed, n ≥ 20)':<40} {'n':>4} " + " ".join(f"{'seed ' + str(r['seed']):>22}" for r in runs))
    for fam in names:
        cells = []
        for r in runs:
            f = r["families"].get(fam)
            if f is None:
                cells.append(f"{'-':>22}")
                continue
            auc = f" A{f['model']['auc']:.3f}" if "auc" in f["model"] else ""
            cells.append(f"{f['model']['headline']:.3f}/{f['blind']['headline']:.2f}/{f['ablated']['headline']:.2f}"
                         f"{auc}{'' if f['beats_both'] else ' ✗'}".rjust(22))
        n = next(r["families"][fam]["n"] for r in runs if fam in r["families"])
        print(f"{fam[:40]:<40} {n:>4.0f} " + " ".join(cells))
    for r in runs:
        s = r["summary"]
        print(f"seed {r['seed']}: train {r['train_s']:.0f} s, whole {r['whole_s']:.0f} s, exit {r['exit_code']}, "
              f"{'promoted' if s['promoted'] else 'refused'}; judged {s['judged']}, beat both {s['judged_beat_both']}"
              + (f"; modality {s['modality']:.3f}" if s.get("modality") is not None else "")
              + (f"; yes/no acc {s['yes_no_accuracy']:.3f}" if s["yes_no_accuracy"] is not None else "")
              + (f"; AUC {s['yes_no_auc']}" if s["yes_no_auc"] else ""))
    print("(cells: model / blind / image-ablated accuracy, A = yes/no AUC, ✗ = does not beat both)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=["medmd", "pneumonia", "both"], default="both")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--resnet-epochs", type=int, default=4, help="the ResNet-18 anchor's epochs (pneumonia; 0: no anchor)")
    parser.add_argument("--tag", default="", help="a name for this configuration in the JSON")
    parser.add_argument("--json", type=Path, default=RESULTS / "real_data.json")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides on top of data=csv")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    names = ["medmd", "pneumonia"] if args.data == "both" else [args.data]
    record: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine_info(),
                              "command": "python bench/real_data.py " + " ".join(sys.argv[1:]), "tag": args.tag,
                              "overrides": args.overrides, "data": {}}
    for name in names:
        if name == "pneumonia" and not npz_path().is_file():
            print(f"pneumonia: {npz_path()} is missing: skipped")
            continue
        base = RESULTS / "real-data-home" / name
        data = ingest(name, base / "table")
        runs = []
        for seed in seeds:
            run = run_pipeline(data, base / f"{args.tag or 'base'}-seed{seed}", seed, args.overrides)
            run["summary"] = summarise(name, run)
            runs.append(run)
            print_runs(name, runs[-1:])
        entry: dict[str, Any] = {"runs": runs}
        if name == "pneumonia" and args.resnet_epochs > 0:
            import numpy as np

            from bench._resnet import train_resnet18

            arrays = dict(np.load(npz_path()))
            entry["resnet18"] = [train_resnet18(arrays, epochs=args.resnet_epochs, seed=s) for s in seeds]
            print("ResNet-18 (same train split): " + ", ".join(
                f"seed {s}: test AUC {r['test_auc']:.3f} (val {r['val_auc']:.3f}, epoch {r['best_epoch']}, "
                f"{r['seconds']:.0f} s)" for s, r in zip(seeds, entry["resnet18"], strict=True)))
        print_runs(name, runs)
        record["data"][name] = entry
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=2, default=str))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
