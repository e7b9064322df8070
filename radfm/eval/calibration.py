"""Yes/no calibration: one offset on log p(yes) − log p(no), fitted on the validation split after training.

Why: a closed yes/no question is answered at likelihood parity (yes when log p(yes) > log p(no)). On a plain
table the model ranked the images right (per-family AUC 0.75–1.00 on MedMD-synth) yet said "yes" to 15–21 of
50 "no" rows and "no" to 1–6 of 40 "yes" rows in every seed (BENCHMARKS.md, "A user's table"): the decision
point, not the reading, was off. One offset, chosen where the validation rows are answered best, moves the
decision point and leaves every ranking (AUC) as it was. It is one number per model, learned from any table's
own validation split, stored with the checkpoint (``radfm.json``) and applied wherever closed questions are
ranked (RadBench, ``predict``, the served model, the app).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from radfm.data.families import normalise_answer, yes_index
from radfm.data.manifest import Sample

log = logging.getLogger(__name__)


def best_offset(ratios: Sequence[float], truths: Sequence[bool]) -> tuple[float, float, float]:
    """The offset ``b`` that answers yes iff ``ratio + b > 0`` best on these rows.

    ``ratios``: log p(yes) − log p(no) per row; ``truths``: whether each row's answer is yes. Candidates are 0
    and the midpoints between consecutive distinct ratios (every distinct decision); the most accurate wins, the
    one nearest 0 among equals (no move without a gain). Returns (offset, accuracy at 0, accuracy at offset).
    """
    if len(ratios) != len(truths) or not ratios:
        raise ValueError("best_offset needs one truth per ratio, and at least one row")

    def accuracy(b: float) -> float:
        return sum((r + b > 0) == t for r, t in zip(ratios, truths)) / len(ratios)

    cuts = sorted(set(ratios))
    candidates = [0.0] + [-(a + b) / 2 for a, b in zip(cuts, cuts[1:])]
    candidates += [-(cuts[0] - 1.0), -(cuts[-1] + 1.0)]  # all yes, all no
    best = max(candidates, key=lambda b: (accuracy(b), -abs(b)))
    return best, accuracy(0.0), accuracy(best)


def fit_yes_no_offset(model: Any, tokenizer: Any, samples: Sequence[Sample], ds: Any, min_rows: int = 20,
                      batch_size: int = 16) -> dict[str, float]:
    """Fit ``model.yes_no_offset`` on ``samples`` (validation rows; those whose choices are yes/no count).

    ``ds``: a :class:`radfm.data.datamodule.RadFMDataset` that loads their images (evaluation transform). With fewer
    than ``min_rows`` yes/no rows, or one answer only, the offset stays 0 (nothing to fit on) and says so.
    Returns the figures the run logs: rows, offset, validation accuracy before and after.
    """
    from radfm.eval.predict import predict

    rows = [s for s in samples if yes_index(s.choices) is not None]
    truths = [normalise_answer(s.answer) == "yes" for s in rows]
    model.yes_no_offset = 0.0
    if len(rows) < min_rows or len(set(truths)) < 2:
        log.info("yes/no calibration: %d validation rows with yes/no choices (at least %d with both answers "
                 "needed): the offset stays 0", len(rows), min_rows)
        return {"calibration/yes_no_rows": float(len(rows)), "calibration/yes_no_offset": 0.0}
    preds = predict(model, tokenizer, rows, ds, batch_size=batch_size)
    ratios = []
    for s, p in zip(rows, preds, strict=True):
        yes = s.choices[yes_index(s.choices)]
        no = next(c for c in s.choices if c != yes)
        ratios.append(p.logprobs[yes] - p.logprobs[no])
    offset, before, after = best_offset(ratios, truths)
    if not math.isfinite(offset):
        offset = 0.0
    model.yes_no_offset = float(offset)
    log.info("yes/no calibration on %d validation rows: offset %+.3f, accuracy %.3f -> %.3f", len(rows), offset,
             before, after)
    return {"calibration/yes_no_rows": float(len(rows)), "calibration/yes_no_offset": float(offset),
            "calibration/yes_no_val_acc_before": before, "calibration/yes_no_val_acc_after": after}



def calibrate_on_validation(model: Any, tokenizer: Any, datamodule: Any, min_rows: int = 20) -> dict[str, float]:
    """:func:`fit_yes_no_offset` on a set-up :class:`radfm.data.datamodule.RadFMDataModule`'s validation split,
    read through the data profile (a plain table's yes/no questions get their choices there), with the
    evaluation transform and the datamodule's image cache."""
    from radfm.data.datamodule import RadFMDataset
    from radfm.data.profile import with_profile

    cfg = datamodule.cfg
    val = with_profile(datamodule.splits.get("val", []), cfg.manifest)
    ds = RadFMDataset(val, cfg.root, tokenizer, cfg.transform, train=False, cache=datamodule.cache,
                      limits=cfg.limits)
    return fit_yes_no_offset(model, tokenizer, val, ds, min_rows=min_rows)


def calibration_options(cfg: Any) -> tuple[bool, int]:
    """``cfg.calibration``'s (yes_no, min_rows); off when the config has no such section."""
    section = cfg.get("calibration") or {}
    return bool(section.get("yes_no", False)), int(section.get("min_rows", 20))


def calibrate_checkpoint(model_dir: str | Path, datamodule: Any, min_rows: int = 20) -> dict[str, float]:
    """Fit the offset of a saved checkpoint (what the Ray path exports) and write it into its ``radfm.json``."""
    from radfm.model.checkpoint import META, load_pretrained

    model, tokenizer = load_pretrained(model_dir)
    figures = calibrate_on_validation(model, tokenizer, datamodule, min_rows=min_rows)
    meta_path = Path(model_dir) / META
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    meta["yes_no_offset"] = float(model.yes_no_offset)
    meta_path.write_text(json.dumps(meta, indent=2))
    return figures
