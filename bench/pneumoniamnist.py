"""PneumoniaMNIST public benchmark (not a test): train the radfm model on the 28 px chest X-rays for several
seeds, score the official test split, print a table and write JSON.

    python bench/pneumoniamnist.py [--seeds 0,1,2] [--tta 8] [--json PATH] [OVERRIDE ...]

Each seed is ``radfm.train.train.train(cfg)`` with the Hydra config ``train.yaml`` + ``experiment=pneumoniamnist
seed=N`` (+ any extra overrides, e.g. ``trainer.max_steps=600``), composed with Hydra's compose API, in this
process — the same run as ``radfm train experiment=pneumoniamnist seed=N``. Then the saved model scores the
val and test splits: score = log p(yes) − log p(no) of the answer, averaged over ``--tta`` fixed views of each
image (default 8: the image, ±1 px shifts, ±5° rotations, 8% zoom; ``radfm.eval.binary.TTA_VIEWS``); AUC,
ACC at p(yes)/(p(yes)+p(no)) ≥ 0.5 and ACC at the threshold of maximum validation accuracy. With ``--tta`` > 1
the single-view figures of the same model are kept beside them (``plain`` in the JSON). Wall time per run: training (data check, model build,
training, export) and scoring separately. The machine may be shared: the load average is recorded beside
each run.

Needs ``../shared/data/pneumoniamnist.npz`` (or ``RADFM_MEDMNIST_NPZ``); the manifest is imported once into
``$RADFM_DATA_DIR`` (default: the repository's data/).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import write_json  # noqa: E402

METRICS = ("auc", "acc@0.5", "acc@val_threshold")
TTA = 8  # default views per image at scoring (--tta): all of TTA_VIEWS; val AUC 0.977 → 0.986 (seed 0)
REFERENCES = [  # MedMNIST v2 (Yang et al., Scientific Data 2023), PneumoniaMNIST, official test split
    ("ResNet-18 (28)", 0.854, 0.944), ("ResNet-18 (224)", 0.864, 0.956), ("ResNet-50 (28)", 0.854, 0.948),
    ("auto-sklearn", 0.855, 0.942), ("AutoKeras", 0.878, 0.947), ("Google AutoML Vision", 0.946, 0.991),
]


def compose_cfg(seed: int, overrides: list[str]) -> Any:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=["experiment=pneumoniamnist", f"seed={seed}", *overrides])


def run_seed(seed: int, overrides: list[str], tta: int = 1) -> dict[str, Any]:
    from radfm.data.cache import TensorCache
    from radfm.eval.binary import evaluate_model_dir
    from radfm.model.checkpoint import load_pretrained
    from radfm.model.factory import count_parameters
    from radfm.train.builder import build_data_config
    from radfm.train.train import run_dir_of, train

    # train.yaml lists _self_ after experiment, so its own task_name/run_name win over an experiment's: name
    # the run here (before the user's overrides, which may rename it).
    cfg = compose_cfg(seed, ["task_name=pneumoniamnist", f"run_name=pneumoniamnist-seed{seed}", *overrides])
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    train_metrics = train(cfg)
    t_train = time.perf_counter() - t0
    run_dir = run_dir_of(cfg)
    data_cfg = build_data_config(cfg)
    t1 = time.perf_counter()
    cache = TensorCache(Path(str(cfg.paths.cache_dir)) / "tensors")
    metrics, _ = evaluate_model_dir(run_dir / "model", data_cfg.manifest, data_cfg.root, data_cfg.transform,
                                    cache=cache, tta=tta)
    t_eval = time.perf_counter() - t1
    plain = {}
    if tta > 1:  # the single-view figures of the same model, beside the headline test-time-augmented ones
        plain, _ = evaluate_model_dir(run_dir / "model", data_cfg.manifest, data_cfg.root,
                                      data_cfg.transform, cache=cache, tta=1)
    model, _ = load_pretrained(run_dir / "model")
    return {
        "seed": seed, **metrics, "tta": tta, "plain": plain,
        "train_s": t_train, "eval_s": t_eval, "steps": int(train_metrics.get("global_step", 0)),
        "val_loss": train_metrics.get("val/loss"), "params": count_parameters(model)["total"],
        "load_avg_start": load0, "load_avg_end": os.getloadavg()[0], "run_dir": str(run_dir),
    }


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def table(runs: list[dict[str, Any]]) -> str:
    head = f"{'seed':>6} {'AUC':>7} {'ACC@0.5':>8} {'ACC@thr':>8} {'thr p':>6} {'train s':>8} {'eval s':>7} {'load':>5}"
    lines = [head, "-" * len(head)]
    for r in runs:
        lines.append(f"{r['seed']:>6} {r['auc']:7.3f} {r['acc@0.5']:8.3f} {r['acc@val_threshold']:8.3f} "
                     f"{r['threshold_prob']:6.3f} {r['train_s']:8.0f} {r['eval_s']:7.0f} {r['load_avg_end']:5.1f}")
    if len(runs) > 1:
        stats = {m: mean_sd([r[m] for r in runs]) for m in METRICS}
        lines.append(f"{'mean':>6} " + " ".join(f"{stats[m][0]:{w}.3f}" for m, w in zip(METRICS, (7, 8, 8))))
        lines.append(f"{'± sd':>6} " + " ".join(f"{stats[m][1]:{w}.3f}" for m, w in zip(METRICS, (7, 8, 8))))
    lines.append("")
    lines.append(f"{'MedMNIST v2 reference':<24} {'ACC':>6} {'AUC':>6}")
    lines += [f"{name:<24} {acc:6.3f} {auc:6.3f}" for name, acc, auc in REFERENCES]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (1: on a shared CPU, more threads spin and run slower)")
    parser.add_argument("--tta", type=int, default=TTA,
                        help="score each image as the mean over this many fixed augmented views "
                             "(radfm.eval.binary.TTA_VIEWS; 1 = the image alone)")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "pneumoniamnist.json"))
    parser.add_argument("overrides", nargs="*", help="Hydra overrides added to experiment=pneumoniamnist")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    import torch

    # Measured on the shared 2-core machine (load ~8): a batch-32 step of mnist28 took 3-4 s wall with 2 threads
    # and 1 s with 1, for a fifth of the CPU time — threads waiting on a descheduled sibling burn the difference.
    torch.set_num_threads(args.threads)
    runs = []
    for seed in seeds:
        runs.append(run_seed(seed, args.overrides, args.tta))
        print(table(runs[-1:]).split("\n\n")[0], flush=True)
    summary = {m: dict(zip(("mean", "sd"), mean_sd([r[m] for r in runs]))) for m in METRICS}
    result = {
        "benchmark": "pneumoniamnist", "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python bench/pneumoniamnist.py", f"--seeds {args.seeds}", f"--threads {args.threads}",
                             f"--tta {args.tta}",
                             *args.overrides]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch_threads": args.threads},
        "overrides": args.overrides, "runs": runs, "summary": summary,
        "references": [{"name": n, "acc": a, "auc": u} for n, a, u in REFERENCES],
    }
    print()
    print(table(runs))
    print()
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
