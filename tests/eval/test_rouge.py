"""ROUGE-L (radfm.eval.rouge), the one implementation: pinned equal, to the bit, to rouge_score (what RadBench's
``rougeL`` used) and to a textbook LCS table, on MedMD-synth's reports and rationales and on edge cases."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from radfm.data.manifest import read_manifest
from radfm.data.synth import SynthConfig, generate
from radfm.eval import metrics
from radfm.eval.rouge import bitmasks, lcs_length, mean_rouge_l, rouge_l_f1, tokenize

EDGE = ["", " ", "...", "!!!", "A", "a", "a.", "A B C", "c b a", "the the the", "the", "1 2 3 4", "4 3 2 1",
        "Left-sided nodule, 3 cm.", "left sided nodule 3cm", "NO EFFUSION", "no effusion.",
        "Ünïcode café naïve", "unicode caf naive", "İstanbul \u212aelvin", "kelvin istanbul",  # lower() maps to ASCII
        "tab\tsep\nnew line", "don't can't", "dont cant", "émoji 🫁 lung", "lung",
        "FINDINGS: A small nodule. IMPRESSION: Small nodule.", "Diagnosis: normal study. Rationale: none."]


def _textbook_tokens(text: str) -> list[str]:
    """rouge_score's tokenizer written out: lower-case, non-[a-z0-9] runs to a space, split, keep valid tokens."""
    return [t for t in re.split(r"\s+", re.sub(r"[^a-z0-9]+", " ", text.lower())) if re.match(r"^[a-z0-9]+$", t)]


def _textbook_rouge_l(candidate: str, reference: str) -> float:
    """rouge_score's ``_score_lcs``: the full LCS table, then P, R and F in the same order of operations."""
    c, r = _textbook_tokens(candidate), _textbook_tokens(reference)
    if not c or not r:
        return 0.0
    table = [[0] * (len(c) + 1) for _ in range(len(r) + 1)]
    for i in range(1, len(r) + 1):
        for j in range(1, len(c) + 1):
            table[i][j] = table[i - 1][j - 1] + 1 if r[i - 1] == c[j - 1] else max(table[i - 1][j], table[i][j - 1])
    lcs = table[-1][-1]
    p, rec = lcs / len(c), lcs / len(r)
    return 2 * p * rec / (p + rec) if p + rec > 0 else 0.0


@pytest.fixture(scope="module")
def synth_texts(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    root: Path = tmp_path_factory.mktemp("rouge_synth")
    generate(SynthConfig(n_samples=60), root)
    rows = read_manifest(root / "manifest.jsonl")
    texts = [r.answer for r in rows if r.task in ("report", "rationale")]
    assert len(texts) > 60
    return texts


def _pairs(texts: list[str]) -> list[tuple[str, str]]:
    """Every pair of edge cases, each text against six others (reports vs rationales too) and against each
    edge case, both ways round."""
    pairs = [(a, b) for a in EDGE for b in EDGE]
    pairs += [(a, texts[(i * 7 + k) % len(texts)]) for i, a in enumerate(texts) for k in range(1, 7)]
    pairs += [(a, e) for a in texts[::5] for e in EDGE] + [(e, a) for a in texts[::5] for e in EDGE]
    return pairs


def test_rouge_l_f1() -> None:
    assert rouge_l_f1("a b c d", "a b c d") == 1.0
    assert rouge_l_f1("a b", "c d") == 0.0
    assert rouge_l_f1("", "a") == 0.0
    assert abs(rouge_l_f1("the cat sat on the mat", "the cat on the mat") - 2 * 5 / 11) < 1e-9
    # P = LCS / |candidate|: 3/6 here, R = 3/4 → 0.6 (the candidate is the first argument).
    assert rouge_l_f1("The small nodule in left lung.", "Small left lung nodule") == pytest.approx(0.6)
    assert rouge_l_f1("Left-sided NODULE!", "left sided nodule") == 1.0  # case and punctuation are not tokens
    assert tokenize("Left-sided, 3cm; Ünï") == ["left", "sided", "3cm", "n"]


def test_bit_parallel_lcs_is_the_lcs() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        a = [str(x) for x in rng.integers(0, 4, rng.integers(0, 70))]  # > 64 tokens: several machine words
        b = [str(x) for x in rng.integers(0, 4, rng.integers(0, 70))]
        got = lcs_length(bitmasks(a), len(a), b)
        table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
        for i in range(len(a)):
            for j in range(len(b)):
                table[i + 1][j + 1] = table[i][j] + 1 if a[i] == b[j] else max(table[i][j + 1], table[i + 1][j])
        assert got == table[-1][-1]


def test_equals_the_textbook_lcs_to_the_bit(synth_texts: list[str]) -> None:
    for a, b in _pairs(synth_texts):
        assert tokenize(a) == _textbook_tokens(a)
        assert rouge_l_f1(a, b) == _textbook_rouge_l(a, b), (a, b)


def test_equals_rouge_score_to_the_bit(synth_texts: list[str]) -> None:
    """The package RadBench's ``rougeL`` was computed with before: every pair, and the mean as
    ``metrics.rouge_l`` takes it, are the same floats (``==``, not approx)."""
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    rouge_tokenize = pytest.importorskip("rouge_score.tokenize")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    pairs = _pairs(synth_texts)
    theirs = [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in pairs]
    assert [rouge_l_f1(pred, ref) for pred, ref in pairs] == theirs
    assert sum(v > 0 for v in theirs) > len(pairs) // 3 and len(set(theirs)) > 100  # not all zeros or ones
    for text in synth_texts + EDGE:
        assert tokenize(text) == rouge_tokenize.tokenize(text, None)
    preds, refs = [p for p, _ in pairs], [r for _, r in pairs]
    assert metrics.rouge_l(preds, refs) == sum(theirs) / len(theirs)


def test_mean_rouge_l(synth_texts: list[str]) -> None:
    refs = synth_texts[:50]
    for cand in synth_texts[50:60] + EDGE:
        assert mean_rouge_l(cand, refs) == float(np.mean([rouge_l_f1(cand, r) for r in refs]))
    assert mean_rouge_l("anything", []) == 0.0
