"""Blind baselines: the best answers that ignore the image, fitted on train, per question family.

Closed and short answers: the majority answer. Reports and rationales: the constant text with the best mean
ROUGE-L against the training answers. :func:`baselines` scores them on test (MedMD-synth writes it to
``baselines.json``); :func:`fit_blind`/:func:`blind_answer` answer RadBench's "blind" system with them.

Fitted per family, never per task: a task that mixes a yes/no question with a "most likely diagnosis" question
would otherwise get one answer for both, a baseline the model beats on question priors alone.

This module imports only the manifest's ``Sample`` and the question normaliser from ``radfm.data``, so the data
generator can call it without an import cycle.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from radfm.data.families import normalise_question
from radfm.data.manifest import Sample
from radfm.eval.rouge import bitmasks, mean_rouge_l, rouge_l_f1, rouge_l_tokens, tokenize

TEXT_FAMILIES = ("report", "rationale")


def question_key(text: str) -> str:
    """A question as a family name, normalised as the question profile does (lower case, punctuation dropped,
    spaces collapsed: :func:`radfm.data.families.normalise_question`)."""
    return normalise_question(text) or "empty question"


def family(s: Sample) -> str:
    """A sample's question family: ``meta["family"]`` when the data names one; otherwise the question itself
    (:func:`question_key`), except for reports and rationales, whose prompts are paraphrases of one request
    (their family is the task)."""
    named = (s.meta or {}).get("family")
    if named:
        return str(named)
    return s.task if s.task in TEXT_FAMILIES else question_key(s.question)


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


@dataclass
class BlindFit:
    """The image-blind answers fitted on train: one per family, and one per task for a family that train
    never asked (a blind model still knows the task's prior)."""

    families: dict[str, str] = field(default_factory=dict)
    tasks: dict[str, str] = field(default_factory=dict)
    counts: Counter = field(default_factory=Counter)


def _constant(answers: Sequence[str], text: bool) -> str:
    return best_constant(answers) if text else majority(answers)


def fit_blind(train: Sequence[Sample]) -> BlindFit:
    """Per family (and per task, as the fallback): the majority answer, or for reports and rationales the
    constant text with the best mean ROUGE-L against the training answers."""
    by_family: dict[str, list[Sample]] = {}
    by_task: dict[str, list[str]] = {}
    for s in train:
        by_family.setdefault(family(s), []).append(s)
        by_task.setdefault(s.task, []).append(s.answer)
    fit = BlindFit(counts=Counter(s.answer for s in train))
    for fam, rows in by_family.items():
        fit.families[fam] = _constant([s.answer for s in rows], any(s.task in TEXT_FAMILIES for s in rows))
    for task, answers in by_task.items():
        fit.tasks[task] = _constant(answers, task in TEXT_FAMILIES)
    return fit


def blind_answer(fit: BlindFit, s: Sample) -> str:
    """The blind answer to ``s``; a closed question always gets one of its choices (the one train answered
    most often, ties in sort order)."""
    text = fit.families.get(family(s)) or fit.tasks.get(s.task, "")
    if s.choices and text not in s.choices:
        text = min(s.choices, key=lambda c: (-fit.counts[c], c))
    return text


def baselines(samples: Sequence[Sample]) -> dict[str, Any]:
    """Blind baselines per question family and per task: fitted on train, scored on test."""
    train = [s for s in samples if s.split == "train"]
    test = [s for s in samples if s.split == "test"]
    keys = sorted({family(s) for s in samples})
    # MedMD-synth's yes/no rows name their finding: a baseline per finding too (other data may not name one).
    yesno_keys = sorted({f"yesno:{s.meta['finding']}" for s in samples
                         if family(s) == "yesno" and (s.meta or {}).get("finding")})
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
