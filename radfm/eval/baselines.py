"""Blind baselines: the best answers that ignore the image, fitted on train, per question family.

Closed and short answers: the majority answer. Reports and rationales: the constant text with the best mean
ROUGE-L against the training answers. :func:`baselines` scores them on test (MedMD-synth writes it to
``baselines.json``); ``radfm.eval.radbench.blind_answers`` answers RadBench's "blind" system with them.

This module imports only the manifest's ``Sample`` from ``radfm.data``, so the data generator can call it
without an import cycle.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from radfm.data.manifest import Sample
from radfm.eval.rouge import bitmasks, mean_rouge_l, rouge_l_f1, rouge_l_tokens, tokenize

TEXT_FAMILIES = ("report", "rationale")


def family(s: Sample) -> str:
    """A sample's question family: ``meta["family"]``, else its task."""
    return str((s.meta or {}).get("family") or s.task)


def majority(answers: Sequence[str]) -> str:
    """The most frequent answer; ties go to the first in sort order."""
    counts = Counter(answers)
    return min(counts, key=lambda a: (-counts[a], a))


def best_constant(texts: Sequence[str], max_candidates: int = 100, max_refs: int = 300) -> str:
    """The text that maximises mean ROUGE-L against the others: the best answer that ignores the image."""
    uniq = sorted(set(texts))
    pick = random.Random(0)
    cands = uniq if len(uniq) <= max_candidates else sorted(pick.sample(uniq, max_candidates))
    refs = list(texts) if len(texts) <= max_refs else pick.sample(list(texts), max_refs)
    ref_tokens = [tokenize(r) for r in refs]

    def score(c: str) -> float:
        a = tokenize(c)
        masks = bitmasks(a)
        return sum(rouge_l_tokens(a, masks, b) for b in ref_tokens)

    return max(cands, key=score)


def baselines(samples: Sequence[Sample]) -> dict[str, Any]:
    """Blind baselines per question family and per task: fitted on train, scored on test."""
    train = [s for s in samples if s.split == "train"]
    test = [s for s in samples if s.split == "test"]
    keys = sorted({family(s) for s in samples})
    yesno_keys = sorted({f"yesno:{s.meta['finding']}" for s in samples if family(s) == "yesno"})
    out: dict[str, Any] = {}
    predict: dict[str, str] = {}
    for key in keys + yesno_keys:
        fam, _, finding = key.partition(":")

        def sel(rows: Sequence[Sample], fam: str = fam, finding: str = finding) -> list[Sample]:
            return [s for s in rows if family(s) == fam and (not finding or s.meta["finding"] == finding)]

        tr, te = sel(train), sel(test)
        if not tr:
            continue
        if fam in TEXT_FAMILIES:
            const = best_constant([s.answer for s in tr])
            value = mean_rouge_l(const, [s.answer for s in te]) if te else None
            out[key] = {"metric": "rougeL", "constant": const, "value": value, "n_train": len(tr), "n_test": len(te)}
        else:
            maj = majority([s.answer for s in tr])
            value = float(np.mean([s.answer == maj for s in te])) if te else None
            out[key] = {"metric": "accuracy", "majority_answer": maj, "value": value,
                        "closed": bool(tr[0].choices), "n_train": len(tr), "n_test": len(te)}
        if not finding:
            predict[fam] = out[key].get("constant") or out[key]["majority_answer"]
    tasks: dict[str, Any] = {}
    for task in sorted({s.task for s in test}):
        rows = [s for s in test if s.task == task and family(s) in predict]
        metric = "rougeL" if task in TEXT_FAMILIES else "accuracy"
        score = [rouge_l_f1(predict[family(s)], s.answer) if metric == "rougeL"
                 else float(predict[family(s)] == s.answer) for s in rows]
        tasks[task] = {"metric": metric, "value": float(np.mean(score)) if score else None, "n_test": len(rows)}
    return {"families": out, "tasks": tasks, "note": "blind baselines: fitted on train, scored on test"}
