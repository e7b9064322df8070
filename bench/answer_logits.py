"""The LM head at answer positions only (not a test): a training step on real demo batches, with the LM head run
only where an answer token is predicted (``RadFMModel.forward(logits_at=…)``, what ``RadFMLitModule._step`` does)
against the full ``B×T×V`` logits (the model's ``labels`` path), back to back on the same batches.

    python bench/answer_logits.py [--batches 6] [--repeats 3] [--threads 1] [--json PATH]

The batches are the demo's (``experiment=demo_tiny``: MedMD-synth, packed inline turns, the ``tiny`` preset,
label head and clinical-term weights on): forward + backward, no optimizer step. The two variants alternate
``--repeats`` times; each figure is the best pass (mean seconds per step over the batches), the median beside
it, and the speed-up is the ratio of the two variants' best passes. The two losses are printed as well: they are
the same loss computed two ways (the step's also adds the label head; the reference's is recomputed with it).
Runs under ``RADFM_HOME`` (default: a temporary folder).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import write_json  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "answer_logits.json"))
    args = parser.parse_args(argv)
    home = Path(os.environ.get("RADFM_HOME") or tempfile.mkdtemp(prefix="radfm-answer-logits-"))
    os.environ["RADFM_HOME"] = str(home)
    os.environ.setdefault("RADFM_DATA_DIR", str(home / "data"))

    import itertools

    import torch
    import torch.nn.functional as F

    from bench._common import machine_info, training_parts
    from radfm.model.tokenizer import IGNORE_INDEX
    from radfm.train.compose import compose

    torch.set_num_threads(args.threads)
    cfg = compose(["experiment=demo_tiny", "logger=none", "run_name=answer-logits"])
    _, _, dm, module = training_parts(cfg, home / "answer-logits")
    module.train()
    batches = list(itertools.islice(iter(dm.train_dataloader()), args.batches))

    def answer_only(batch: dict[str, Any]) -> torch.Tensor:
        return module._step(batch, "train")

    def full_logits(batch: dict[str, Any]) -> torch.Tensor:
        """The same loss from the full B×T×V logits (the step's computation before logits_at)."""
        from radfm.model.multimodal import ImageEncoding
        from radfm.train.module import per_block
        from radfm.train.objectives import StepEncoding

        images = module.encode(batch)
        blocks = per_block(images.tokens, batch["image_blocks"]) if "image_blocks" in batch else images.tokens
        logits = module.model(batch["input_ids"], batch["attention_mask"], image_features=blocks,
                              segment_ids=batch.get("segment_ids"))["logits"]
        target = batch["labels"][:, 1:]
        per_token = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), target, ignore_index=IGNORE_INDEX,
                                    reduction="none")
        weights = module.objectives["answer"].weighter(batch["labels"])[:, 1:]
        loss = (per_token * weights).sum() / weights.sum().clamp_min(1.0)
        encoding = StepEncoding(images if isinstance(images, ImageEncoding) else None, None, train=True)
        for name in ("label_head", "patch_head"):
            aux = module.objectives[name].loss(batch, encoding)
            loss = loss if aux is None else loss + module.objectives[name].weight * aux
        return loss

    variants = {"answer positions (logits_at)": answer_only, "full B×T×V logits": full_logits}
    passes: dict[str, list[float]] = {k: [] for k in variants}
    losses: dict[str, float] = {}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            total, loss_sum = 0.0, 0.0
            for batch in batches:
                t0 = time.perf_counter()
                loss = fn(batch)
                loss.backward()
                total += time.perf_counter() - t0
                module.zero_grad(set_to_none=True)
                loss_sum += float(loss)
            passes[name].append(total / len(batches))
            losses[name] = loss_sum / len(batches)
    shape = batches[0]["input_ids"].shape
    answer_frac = statistics.fmean(float((b["labels"][:, 1:] != IGNORE_INDEX).float().mean()) for b in batches)
    best = {k: min(v) for k, v in passes.items()}
    names = list(variants)
    speedup = best[names[1]] / best[names[0]]
    print(f"demo batches: {len(batches)} of {tuple(shape)} tokens (first), answer positions {answer_frac:.1%}, "
          f"{args.threads} thread(s)")
    print(f"{'variant':<30} {'best s/step':>12} {'median':>8} {'mean loss':>10}")
    for k in names:
        print(f"{k:<30} {best[k]:>12.3f} {statistics.median(passes[k]):>8.3f} {losses[k]:>10.4f}")
    print(f"speed-up (full / answer positions): {speedup:.2f}×")
    out = {"benchmark": "answer_logits", "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "command": f"python bench/answer_logits.py --batches {args.batches} --repeats {args.repeats} "
                      f"--threads {args.threads}",
           "machine": machine_info(), "batch_shape": list(shape), "answer_fraction": answer_frac,
           "passes_s_per_step": passes, "best_s_per_step": best, "mean_loss": losses, "speedup": speedup}
    write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
