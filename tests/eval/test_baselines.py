"""Blind baselines (radfm.eval.baselines): majority answers and the best constant text, fitted on train and
scored on test; MedMD-synth's ``baselines.json`` is exactly what :func:`baselines` gives."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from radfm.data.manifest import Sample, read_manifest
from radfm.data.synth import SynthConfig, generate
from radfm.eval.baselines import TEXT_FAMILIES, baselines, best_constant, family, majority
from radfm.eval.rouge import mean_rouge_l, rouge_l_f1


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("baselines_synth")
    generate(SynthConfig(n_samples=60, seed=0), root)
    return root


def test_generate_writes_these_baselines(synth: Path) -> None:
    written = json.loads((synth / "baselines.json").read_text())
    got = json.loads(json.dumps(baselines(read_manifest(synth / "manifest.jsonl"))))
    assert {k: v for k, v in written.items() if k != "config"} == got
    assert written["config"]["n_samples"] == 60 and written["config"]["variant"] == "easy"


def test_fitted_on_train_scored_on_test(synth: Path) -> None:
    rows = read_manifest(synth / "manifest.jsonl")
    b = baselines(rows)
    assert set(TEXT_FAMILIES) <= set(b["families"])
    for key, entry in b["families"].items():
        fam, _, finding = key.partition(":")
        pick = [s for s in rows if family(s) == fam and (not finding or s.meta["finding"] == finding)]
        tr = [s.answer for s in pick if s.split == "train"]
        te = [s.answer for s in pick if s.split == "test"]
        assert (entry["n_train"], entry["n_test"]) == (len(tr), len(te))
        if fam in TEXT_FAMILIES:
            assert entry["metric"] == "rougeL" and entry["constant"] == best_constant(tr)
            assert entry["value"] == mean_rouge_l(entry["constant"], te)
        else:
            assert entry["metric"] == "accuracy" and entry["majority_answer"] == majority(tr)
            assert entry["value"] == (float(np.mean([a == majority(tr) for a in te])) if te else None)
    test = [s for s in rows if s.split == "test"]
    reports = [s for s in test if s.task == "report"]
    const = b["families"]["report"]["constant"]
    assert b["tasks"]["report"]["value"] == float(np.mean([rouge_l_f1(const, s.answer) for s in reports]))


def test_majority_breaks_ties_by_sort_order() -> None:
    assert majority(["b", "a", "b", "a", "c"]) == "a"
    assert majority(["no", "yes", "yes"]) == "yes"


def test_best_constant_maximises_summed_rouge_l() -> None:
    texts = ["small left nodule", "large right mass", "small right nodule", "no abnormality",
             "small left nodule and effusion", "small left nodule"]
    best = best_constant(texts)
    score = {c: sum(rouge_l_f1(c, r) for r in texts) for c in set(texts)}
    assert best in texts and score[best] == max(score.values())
    many = [f"nodule {i} lung {i % 7}" for i in range(400)]  # over max_candidates/max_refs: sampled, seeded
    assert best_constant(many) == best_constant(list(many))


def test_family_falls_back_to_the_task() -> None:
    def row(meta: dict | None) -> Sample:
        return Sample(id="x", task="vqa", split="test", question="q?", answer="a", meta=meta)

    assert family(row({"family": "size"})) == "size"
    assert family(row({"family": None})) == family(row(None)) == family(row({})) == "vqa"
