"""How far the vision side alone gets on PneumoniaMNIST (not a test): train the radfm vision side (ViT → resampler →
projection) and the training-only label head with the vision warm-up alone (``radfm.train.warmup``; the LM never
runs), then score the label head on the val and test splits, print a table and write JSON.

    python bench/vision_warmup.py [--steps 2000] [--lr 5e-4] [--seed 0] [--cnn C] [OVERRIDE ...]

Why: a vision step costs a fraction of a joint step, and in the PneumoniaMNIST experiment the LM's yes/no score
follows the label head (their per-image scores correlate 0.98 on the test split, BENCHMARKS.md). So this measures
cheaply what the image tokens can carry, before paying for the joint fit. ``--cnn C`` swaps the vision side for a
plain CNN reference (3×3 conv blocks with C, 2C, 4C channels, two max-pools, 7×7 tokens → the LM width): not the
radfm model, a yardstick in the same data pipeline, batches and head.

The config is ``experiment=pneumoniamnist`` + its label head + the overrides (e.g.
``model.vision.stem_channels=16``); the score is the head's logit on the mean image token, single view and averaged
over the 8 fixed views of ``radfm.eval.binary.TTA_VIEWS``; ACC at logit 0. Runs under ``RADFM_HOME``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import reference_cnn, training_parts, write_json  # noqa: E402


def head_scores(module: Any, images: list[Any], views: int, patch: bool = False) -> Any:
    """The label head's logit for each image (``patch``: the patch head's, on the max-pooled ViT patch tokens),
    averaged over the first ``views`` of TTA_VIEWS."""
    import numpy as np
    import torch

    from radfm.eval.binary import TTA_VIEWS, view_image
    from radfm.train.objectives.patch_head import max_patches

    heads = module.objectives
    total = np.zeros(len(images))
    with torch.no_grad():
        for view in TTA_VIEWS[:views]:
            for i in range(0, len(images), 128):
                batch = torch.stack([view_image(x, view) for x in images[i:i + 128]])
                if patch:
                    enc = module.model.encode(batch, with_patches=True)
                    total[i:i + len(batch)] += heads["patch_head"].head(max_patches(enc.patches))[:, 0].numpy()
                else:
                    tokens = module.model.vision(batch)  # N×K×hidden
                    total[i:i + len(batch)] += heads["label_head"].head(tokens.mean(dim=1))[:, 0].numpy()
    return total / views


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--lr", type=float, default=5e-4, help="the vision side's rate (the head learns at 1e-3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--encoder-lr", type=float, default=None, help="the ViT's own rate (default: --lr)")
    parser.add_argument("--cnn", type=int, default=0, help="C > 0: the plain reference CNN instead of the vision side")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, help="default: bench/results/vision_warmup-<name>.json")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)

    import lightning as L
    import numpy as np
    import torch

    import bench.pneumoniamnist as P
    from radfm.data.datamodule import RadFMDataset
    from radfm.data.manifest import read_manifest
    from radfm.eval.binary import binary_samples
    from radfm.eval.metrics import auc
    from radfm.train.callbacks.vision_warmup import warm_up_vision

    torch.set_num_threads(args.threads)
    cfg = P.compose_cfg(args.seed, list(args.overrides))
    L.seed_everything(args.seed)
    tokenizer, data_cfg, dm, module = training_parts(cfg, Path(str(cfg.paths.runs_dir)) / "vision-warmup")
    if args.cnn:
        module.model.vision = reference_cnn(1, args.cnn, int(cfg.model.lm.hidden_size))
    n_params = sum(p.numel() for p in module.model.vision.parameters())
    t0 = time.perf_counter()
    stats = warm_up_vision(module, dm.train_dataloader(), args.steps, args.lr,
                           weight_decay=float(cfg.optim.weight_decay), head_lr=1e-3,
                           encoder_lr=args.encoder_lr)
    train_s = time.perf_counter() - t0
    module.eval()
    rows = binary_samples(read_manifest(data_cfg.manifest))
    result: dict[str, Any] = {}
    for split in ("val", "test"):
        samples = [s for s in rows if s.split == split]
        ds = RadFMDataset(samples, data_cfg.root, tokenizer, data_cfg.transform, train=False, cache=dm.cache)
        y = np.array([int(s.answer == "yes") for s in samples])
        images = [ds.load_images(s)[0] for s in samples]
        for views in (1, 8):
            h = head_scores(module, images, views)
            result[f"{split}_auc_tta{views}"] = auc(h.tolist(), y.tolist())
            result[f"{split}_acc_tta{views}"] = float(np.mean((h >= 0) == y))
            if "patch_head" in module.objectives:
                h = head_scores(module, images, views, patch=True)
                result[f"{split}_patch_auc_tta{views}"] = auc(h.tolist(), y.tolist())
                result[f"{split}_patch_acc_tta{views}"] = float(np.mean((h >= 0) == y))
    name = f"cnn{args.cnn}" if args.cnn else "vit"
    out = {"benchmark": "vision_warmup", "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "command": " ".join(["python bench/vision_warmup.py", f"--steps {args.steps}", f"--lr {args.lr}",
                                f"--seed {args.seed}", f"--cnn {args.cnn}",
                                *([f"--encoder-lr {args.encoder_lr}"] if args.encoder_lr else []), *args.overrides]),
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": args.threads},
           "vision": name, "vision_params": n_params, "steps": args.steps, "train_s": train_s,
           "first_loss": stats["first_loss"], "last_loss": stats["last_loss"], **result}
    print(f"{'vision':>8} {'params':>8} {'steps':>6} {'train s':>8} | {'val AUC':>8} {'test AUC':>8} {'test ACC':>8}"
          f" | {'TTA val':>8} {'TTA test':>8} {'TTA ACC':>8}")
    print(f"{name:>8} {n_params:>8} {args.steps:>6} {train_s:>8.0f} | {result['val_auc_tta1']:>8.4f} "
          f"{result['test_auc_tta1']:>8.4f} {result['test_acc_tta1']:>8.3f} | {result['val_auc_tta8']:>8.4f} "
          f"{result['test_auc_tta8']:>8.4f} {result['test_acc_tta8']:>8.3f}")
    if "val_patch_auc_tta1" in result:
        print(f"{'patch':>8} {'head':>8} {args.steps:>6} {train_s:>8.0f} | {result['val_patch_auc_tta1']:>8.4f} "
              f"{result['test_patch_auc_tta1']:>8.4f} {result['test_patch_acc_tta1']:>8.3f} | "
              f"{result['val_patch_auc_tta8']:>8.4f} {result['test_patch_auc_tta8']:>8.4f} "
              f"{result['test_patch_acc_tta8']:>8.3f}")
    write_json(args.json or ROOT / "bench" / "results" / f"vision_warmup-{name}.json", out)
    return out


if __name__ == "__main__":
    main()
