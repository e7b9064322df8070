"""Blind baselines (radfm.eval.baselines): majority answers and the best constant text, fitted on train and
scored on test; MedMD-synth's ``baselines.json`` is exactly what :func:`baselines` gives."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from radfm.data.manifest import Sample, read_manifest
from radfm.data.synth import SynthConfig, generate
from radfm.eval.baselines import TEXT_FAMILIES, baselines, best_constant, family, majority, question_key
from radfm.eval.radbench import blind_answers
from radfm.eval.rouge import mean_rouge_l, rouge_l_f1

YESNO_Q, DX_Q = "Is there pneumonia?", "What is the most likely diagnosis?"


def mixed_task(root: Path, named: bool, choices: bool = True) -> list[Sample]:
    """A hand-made manifest whose one task mixes a yes/no question with a "most likely diagnosis" question (as a
    user's table gives it: with ``meta.family`` when ``named``, else with the question alone). Over the whole task
    "no" is the most common training answer; per question it is "no" and "pneumonia"."""
    rows = []

    def add(split: str, question: str, answer: str, n: int, options: list[str], fam: str) -> None:
        for k in range(n):
            rows.append({"id": f"{split}-{fam}-{answer}-{k}", "task": "diagnosis", "split": split,
                         "question": question, "answer": answer, **({"choices": options} if choices else {}),
                         "images": [{"path": f"img/{split}{fam}{answer}{k}.png", "kind": "2d"}],
                         **({"meta": {"family": fam}} if named else {})})

    yn, dx = ["yes", "no"], ["normal", "pneumonia", "effusion"]
    for split, q, counts in (("train", YESNO_Q, {"no": 12, "yes": 8}),
                             ("train", DX_Q, {"pneumonia": 10, "normal": 4, "effusion": 3}),
                             ("test", "is there  pneumonia", {"no": 6, "yes": 4}),  # another phrasing, same family
                             ("test", DX_Q, {"pneumonia": 5, "normal": 2, "effusion": 1})):
        for answer, n in counts.items():
            add(split, q, answer, n, yn if answer in yn else dx, "yesno" if answer in yn else "dx")
    path = root / (("named" if named else "plain") + ("" if choices else "-nochoices")) / "manifest.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return read_manifest(path)


@pytest.mark.parametrize("named", [False, True])
def test_a_mixed_task_gets_a_blind_answer_per_family(tmp_path: Path, named: bool) -> None:
    rows = mixed_task(tmp_path, named)
    train = [s for s in rows if s.split == "train"]
    test = [s for s in rows if s.split == "test"]
    assert majority([s.answer for s in train]) == "no"  # what a per-task baseline would answer to everything
    fams = {family(s) for s in rows}
    assert fams == ({"yesno", "dx"} if named else {"is there pneumonia", "what is the most likely diagnosis"})
    preds = blind_answers(train, test)
    for s, p in zip(test, preds):
        assert p.text == ("pneumonia" if s.question == DX_Q else "no"), (s.question, p.text)
        assert p.probs == {c: float(c == p.text) for c in s.choices}
    b = baselines(rows)
    dx_key = "dx" if named else "what is the most likely diagnosis"
    assert b["families"][dx_key]["majority_answer"] == "pneumonia" and b["families"][dx_key]["value"] == 5 / 8
    assert b["families"][dx_key]["closed"] is True
    assert b["tasks"]["diagnosis"]["value"] == (6 + 5) / 18  # a per-task "no" would score 6/18


def test_blind_falls_back_to_the_task_and_answers_a_choice() -> None:
    def row(split: str, q: str, a: str, choices: list[str] | None = None, task: str = "vqa") -> Sample:
        return Sample(id=f"{split}{q}{a}", task=task, split=split, question=q, answer=a, choices=choices)

    train = [row("train", "How big?", "small"), row("train", "How big?", "small"), row("train", "Where?", "left")]
    test = [row("test", "How large is it?", "small"), row("test", "Which side?", "right", ["left", "right"])]
    # A question never asked in training gets the task's blind answer; a closed one a choice (train's favourite).
    assert [p.text for p in blind_answers(train, test)] == ["small", "left"]


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


def test_family_falls_back_to_the_question() -> None:
    def row(meta: dict | None) -> Sample:
        return Sample(id="x", task="vqa", split="test", question="q?", answer="a", meta=meta)

    assert family(row({"family": "size"})) == "size"
    # No family named: the question itself, normalised (reports and rationales: their task).
    assert family(row({"family": None})) == family(row(None)) == family(row({})) == "q"
    assert question_key(" Is there  a Nodule?? ") == "is there a nodule" == question_key("is there a nodule")
    report = Sample(id="r", task="report", split="test", question="Describe the scan.", answer="ok")
    assert family(report) == "report"
