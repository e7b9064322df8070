"""RadBench end to end on a small MedMD-synth with a tiny model: outputs, baselines, verdicts."""

from __future__ import annotations

import csv
import json
from collections import Counter

import pytest

from radfm.data.manifest import read_manifest
from radfm.data.profile import with_profile
from radfm.data.synth import SynthConfig, generate
from radfm.data.transforms import TransformConfig
from radfm.eval.baselines import family
from radfm.eval.predict import Prediction
from radfm.eval.radbench import EvalConfig, blind_answers, evaluate, flat_metrics, summarise
from radfm.model import factory
from tests.eval.test_baselines import DX_Q, mixed_task


@pytest.fixture(scope="module")
def bench_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("radbench")
    generate(SynthConfig(n_samples=30, seed=5), root)
    return root


def test_blind_baseline_is_the_train_majority(bench_data):
    samples = read_manifest(bench_data / "manifest.jsonl")
    train = [s for s in samples if s.split == "train"]
    test = [s for s in samples if s.split == "test"]
    preds = blind_answers(train, test)
    for s, p in zip(test, preds):
        if family(s) == "modality":
            counts = Counter(t.answer for t in train if family(t) == "modality")
            assert p.text == max(sorted(counts), key=lambda a: counts[a])


def test_evaluate_writes_every_output(bench_data, tmp_path, tiny_cfg):
    samples = read_manifest(bench_data / "manifest.jsonl")
    tok = factory.build_tokenizer(tiny_cfg, [t for s in samples for t in (s.question, s.answer)])
    model = factory.build_model(tiny_cfg, tok).eval()
    cfg = EvalConfig(manifest=str(bench_data / "manifest.jsonl"), data_root=str(bench_data), batch_size=8,
                     max_new_tokens=24, embedding=False, transform=TransformConfig(image_size=64, augment=False))
    summary = evaluate(model, tok, cfg, tmp_path / "out")
    test = [s for s in samples if s.split == "test"]
    assert set(summary["tasks"]) == {s.task for s in test}
    for entry in summary["tasks"].values():
        assert {"model", "blind", "ablated", "beats_both"} <= set(entry)
        assert 0.0 <= entry["model"]["headline"] <= 1.0
    closed = summary["families"]["diagnosis/yesno"]["model"]
    assert {"accuracy", "macro_f1", "auc"} <= set(closed)
    for key, entry in summary["families"].items():  # n test rows and closed: what the promotion gate reads
        rows = [s for s in test if f"{s.task}/{family(s)}" == key]
        assert entry["n"] == len(rows) and entry["closed"] is all(s.choices for s in rows), key
    assert summary["families"]["diagnosis/yesno"]["closed"] is True
    assert summary["families"]["report/report"]["closed"] is False
    report = summary["families"]["report/report"]["model"]
    assert {"bleu1", "bleu4", "rougeL", "term_precision", "findings_f1"} <= set(report)
    with (tmp_path / "out" / "predictions.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(test)
    assert {"Question", "Ground Truth", "Pred", "belong_to", "Pred_blind", "Pred_ablated"} <= set(rows[0])
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == json.loads(json.dumps(summary))
    html = (tmp_path / "out" / "report.html").read_text()
    assert html.count("data:image/png;base64") >= 3 and "RadBench" in html
    assert "| task |" in (tmp_path / "out" / "summary.md").read_text()


def test_empty_split_is_a_clear_error(bench_data, tmp_path, tiny_model, tiny_tokenizer):
    cfg = EvalConfig(manifest=str(bench_data / "manifest.jsonl"), data_root=str(bench_data), split="nope")
    with pytest.raises(ValueError, match="split .* is empty"):
        evaluate(tiny_model, tiny_tokenizer, cfg, tmp_path)


def test_summary_markdown_headings_split_tasks_from_families():
    from radfm.eval.report import summary_markdown

    entry = {"model": {"n": 1, "headline": 1.0}, "blind": {"headline": 0.0}, "ablated": {"headline": 0.0},
             "beats_both": True}
    text = summary_markdown({"tasks": {"modality": entry}, "families": {"modality/modality": entry}})
    assert "## per task" in text and "## per family" in text and "familie" not in text
    assert "modality/modality" not in text.split("## per family")[0]  # what `radfm eval` prints


def test_families_of_a_mixed_task_are_scored_against_their_own_blind_answer(tmp_path):
    rows = mixed_task(tmp_path, named=False)
    train = [s for s in rows if s.split == "train"]
    test = [s for s in rows if s.split == "test"]
    blind = blind_answers(train, test)
    perfect = [Prediction(s.answer, {c: float(c == s.answer) for c in s.choices}) for s in test]
    summary = summarise(test, {"model": perfect, "blind": blind, "ablated": blind}, embedding=False)
    yn, dx = summary["families"]["diagnosis/is there pneumonia"], summary["families"][
        "diagnosis/what is the most likely diagnosis"]
    assert (yn["n"], dx["n"], yn["closed"], dx["closed"]) == (10, 8, True, True)
    assert yn["blind"]["headline"] == 0.6 and dx["blind"]["headline"] == 5 / 8
    assert yn["beats_both"] and dx["beats_both"]
    # A model that answers only the question's prior beats neither family, though it "beats" a per-task blind.
    priors = summarise(test, {"model": blind, "blind": blind, "ablated": blind}, embedding=False)
    assert not any(e["beats_both"] for e in priors["families"].values())
    assert sum(p.text == s.answer for p, s in zip(blind, test)) / len(test) > 6 / 18
    assert all(p.text == "pneumonia" for p, s in zip(blind, test) if s.question == DX_Q)


def test_a_users_closed_questions_get_their_choices_from_the_profile(tmp_path):
    """A table without choices (as `radfm ingest table` writes one): RadBench puts the question profile on the
    rows, so both families are closed (ranked by likelihood, AUC for yes/no) and the gate holds them to the
    baselines; the phrasing variant in test joins its family."""
    rows = mixed_task(tmp_path, named=False, choices=False)
    assert not any(s.choices for s in rows)
    rows = with_profile(rows, tmp_path / "plain-nochoices" / "manifest.jsonl")
    train = [s for s in rows if s.split == "train"]
    test = [s for s in rows if s.split == "test"]
    assert {(s.meta["family"], tuple(s.choices)) for s in test} == {
        ("is there pneumonia", ("no", "yes")), ("what is the most likely diagnosis", ("effusion", "normal", "pneumonia"))}
    blind = blind_answers(train, test)
    perfect = [Prediction(s.answer, {c: float(c == s.answer) for c in s.choices}) for s in test]
    summary = summarise(test, {"model": perfect, "blind": blind, "ablated": blind}, embedding=False)
    yn = summary["families"]["diagnosis/is there pneumonia"]
    assert yn["closed"] and yn["n"] == 10 and yn["model"]["auc"] == 1.0 and yn["beats_both"]
    assert summary["families"]["diagnosis/what is the most likely diagnosis"]["closed"]


def test_flat_metrics_names_are_mlflow_legal():
    import posixpath
    import re

    entry = {"model": {"n": 3.0, "headline": 0.5}, "blind": {"headline": 0.2}, "ablated": {"headline": 0.4},
             "beats_both": True}
    summary = {"tasks": {"vqa": entry},
               "families": {"vqa/size (mm)?": {**entry, "n": 3, "closed": True}, "vqa/a.b/../c": {**entry, "n": 3}}}
    flat = flat_metrics(summary)
    assert flat["radbench/families/vqa/size__mm__/n"] == 3.0
    assert flat["radbench/families/vqa/size__mm__/closed"] == 1.0
    assert flat["radbench/families/vqa/size__mm__/beats_both"] == 1.0
    for name in flat:
        assert re.fullmatch(r"[/\w.\- :]*", name) and posixpath.normpath(name) == name, name
