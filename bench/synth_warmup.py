"""What the vision side alone learns of MedMD-synth's lesions (not a test): the demo's vision warm-up, then the
training-only label head read as a lesion detector, per lesion type, on the train and test splits.

    .venv/bin/python bench/synth_warmup.py NAME [--steps 600] [--lr 1e-4] [--head-lr 1e-3] [--ramp 0] [--cnn C]
                                          [OVERRIDE ...]          # e.g. model.vision.stem_norm=group

Why: a warm-up step costs a fraction of a joint step, and the model's yes/no answers follow what the image
tokens carry (BENCHMARKS.md, "Main job"). So this measures cheaply where the lesions are lost, before paying for
a joint fit. The config is ``experiment=demo_tiny`` plus the overrides; the warm-up is
``radfm.train.callbacks.vision_warmup.warm_up_vision`` as ``radfm train`` runs it. Two scores, each at logit 0 and as AUC:

- ``yesno``: the head's logit for the asked finding on each yes/no row (the rows RadBench scores);
- ``pairs``: every finding type the scene's protocol can show, on every image of the split (present or not):
  about twice the rows, so less noise.

``--cnn C`` swaps the vision side for a plain CNN yardstick (six 3×3 conv blocks with C, 2C, 4C channels and
three max-pools to the 8×8 grid, each slice on its own, max over slices): not the radfm model, a reference in
the same data pipeline, batches and head. Runs under ``RADFM_HOME`` (default bench/results/train-eval-home, the
data ``bench/train_eval.py`` uses); writes bench/results/synth_warmup-NAME.json.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import cpu_model, reference_cnn, training_parts, write_json  # noqa: E402


def score(z: list[float], y: list[int], types: list[str]) -> dict[str, Any]:
    """Accuracy at logit 0, AUC, and accuracy per lesion type."""
    import numpy as np

    from radfm.eval.metrics import auc

    za, ya, ta = np.array(z), np.array(y), np.array(types)
    ok = (za > 0) == ya
    return {"n": len(z), "acc": float(ok.mean()), "auc": auc(z, y),
            "by_type": {t: round(float(ok[ta == t].mean()), 3) for t in sorted(set(types))}}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--lr", type=float, default=1e-4, help="the vision side's rate")
    parser.add_argument("--head-lr", type=float, default=1e-3)
    parser.add_argument("--ramp", type=int, default=0)
    parser.add_argument("--encoder-lr", type=float, default=None, help="the ViT's rate (default: --lr)")
    parser.add_argument("--cnn", type=int, default=0, help="C > 0: the plain reference CNN instead of the vision side")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args(argv)
    os.environ.setdefault("RADFM_HOME", str(ROOT / "bench" / "results" / "train-eval-home"))
    os.environ.setdefault("RADFM_DATA_DIR", str(Path(os.environ["RADFM_HOME"]) / "data"))

    import lightning as L
    import torch

    from radfm.data.datamodule import RadFMDataset
    from radfm.data.manifest import read_manifest
    from radfm.data.synth_scene import PROTOCOLS
    from radfm.train.callbacks.vision_warmup import warm_up_vision
    from radfm.train.compose import compose

    cfg = compose(["experiment=demo_tiny", "logger=none", *args.overrides])
    L.seed_everything(int(cfg.seed))
    tokenizer, data_cfg, dm, module = training_parts(cfg, Path(str(cfg.paths.runs_dir)) / "synth-warmup")
    if args.cnn:
        module.model.vision = reference_cnn(3, args.cnn, int(cfg.model.lm.hidden_size), pools=3)
    stats = warm_up_vision(module, dm.train_dataloader(), args.steps, args.lr, head_lr=args.head_lr, ramp=args.ramp,
                          encoder_lr=args.encoder_lr)
    module.eval()
    label_head = module.objectives["label_head"]
    index = {name: j for j, name in enumerate(label_head.names)}
    samples = read_manifest(data_cfg.manifest)
    scenes = {}
    with open(Path(data_cfg.manifest).parent / "scenes.jsonl") as fh:
        for line in fh:
            scene = json.loads(line)
            scenes[scene["scene_id"]] = scene
    one_per_image = {s.meta["scene_id"]: s for s in samples if s.meta.get("family") == "modality"}
    result: dict[str, Any] = {}
    with torch.no_grad():
        for split in ("train", "test"):
            rows = [s for s in samples if s.split == split and s.meta.get("family") == "yesno"]
            images = [s for k, s in one_per_image.items() if scenes[k]["split"] == split]
            ds = RadFMDataset(rows + images, data_cfg.root, tokenizer, data_cfg.transform, train=False,
                              cache=dm.cache)

            def logits(sample: Any, ds: Any = ds) -> torch.Tensor:
                tokens = module.model.vision(ds.load_images(sample)[0].unsqueeze(0))  # 1×K×hidden
                pooled = (tokens[0].max(dim=0, keepdim=True).values if label_head.pool == "max"
                          else tokens[0].mean(dim=0, keepdim=True))
                return label_head.head(pooled)[0]

            z, y, types = [], [], []
            for s in rows:
                z.append(float(logits(s)[index[s.meta["finding"]]]))
                y.append(int(s.answer == "yes"))
                types.append(s.meta["finding"])
            result[f"{split}_yesno"] = score(z, y, types)
            z, y, types = [], [], []
            for s in images:
                scene = scenes[s.meta["scene_id"]]
                present = {f["type"] for f in scene["findings"]}
                out = logits(s)
                for t in PROTOCOLS[scene["protocol"]].findings:
                    z.append(float(out[index[t]]))
                    y.append(int(t in present))
                    types.append(t)
            result[f"{split}_pairs"] = score(z, y, types)
    report = {"benchmark": "synth_warmup", "name": args.name,
              "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(["python bench/synth_warmup.py", args.name, f"--steps {args.steps}",
                                   f"--lr {args.lr}", f"--head-lr {args.head_lr}", f"--ramp {args.ramp}",
                                   *([f"--encoder-lr {args.encoder_lr}"] if args.encoder_lr else []),
                                   f"--cnn {args.cnn}", *args.overrides]),
              "machine": {"cpu": cpu_model(), "cpus": os.cpu_count()},
              "steps": args.steps, "warmup": stats, "labels": len(index), **result}
    print(f"{args.name}: {args.steps} warm-up steps in {stats['seconds']:.0f} s, {len(index)} head labels")
    print(f"{'split':>6} {'rows':>8} {'n':>5} {'acc':>6} {'AUC':>6}  by type")
    for key, r in result.items():
        split, rows_kind = key.split("_")
        by = " ".join(f"{t} {v:.2f}" for t, v in r["by_type"].items())
        print(f"{split:>6} {rows_kind:>8} {r['n']:>5} {r['acc']:>6.3f} {r['auc']:>6.3f}  {by}")
    write_json(ROOT / "bench" / "results" / f"synth_warmup-{args.name}.json", report)
    return report


if __name__ == "__main__":
    main()
