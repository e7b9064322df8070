"""ROUGE-L, the one implementation in radfm: RadBench's ``rougeL`` and the blind baselines' best constant text.

The score of one pair is exactly ``rouge_score``'s ``RougeScorer(["rougeL"], use_stemmer=False)
.score(reference, candidate)["rougeL"].fmeasure`` (tests/eval/test_rouge.py pins the two equal, to the bit):

* tokens: the text lower-cased, then its runs of ``[a-z0-9]`` (punctuation and white space split words;
  non-ASCII letters are dropped; no stemming);
* P = LCS / |candidate tokens|, R = LCS / |reference tokens|, F = 2·P·R / (P + R), computed in that order;
* 0 where either side has no token or nothing in common.

The LCS length is bit-parallel (Hyyrö 2004): one big-integer update per reference token instead of an n×m
table, and the candidate's bit masks are built once when it is scored against many references.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

_TOKEN = re.compile(r"[a-z0-9]+")


def tokenize(text: str) -> list[str]:
    """``rouge_score``'s tokens without stemming: the lower-cased text's ``[a-z0-9]+`` runs."""
    return _TOKEN.findall(text.lower())


def bitmasks(tokens: Sequence[str]) -> dict[str, int]:
    """Per distinct token, the bit mask of its positions in ``tokens`` (bit i set: token i)."""
    masks: dict[str, int] = {}
    for i, tok in enumerate(tokens):
        masks[tok] = masks.get(tok, 0) | (1 << i)
    return masks


def lcs_length(masks: dict[str, int], n: int, b: Sequence[str]) -> int:
    """LCS length of a sequence (``n`` tokens, given as :func:`bitmasks`) and ``b``: bit-parallel (Hyyrö
    2004), one big-integer update per token of ``b`` instead of an n×m table."""
    full = (1 << n) - 1
    v = full
    for tok in b:
        u = v & masks.get(tok, 0)
        v = ((v + u) | (v - u)) & full
    return n - bin(v).count("1")


def rouge_l_tokens(a: Sequence[str], masks: dict[str, int], b: Sequence[str]) -> float:
    """ROUGE-L F1 of candidate tokens ``a`` (with ``masks = bitmasks(a)``) against reference tokens ``b``."""
    lcs = lcs_length(masks, len(a), b) if a and b else 0
    if lcs == 0:
        return 0.0
    p, r = lcs / len(a), lcs / len(b)
    return 2 * p * r / (p + r)


def rouge_l_f1(candidate: str, reference: str) -> float:
    """ROUGE-L F1 of one candidate text against one reference text (see the module docstring)."""
    a = tokenize(candidate)
    return rouge_l_tokens(a, bitmasks(a), tokenize(reference))


def mean_rouge_l(candidate: str, references: Sequence[str]) -> float:
    """Mean (``numpy.mean``) ROUGE-L F1 of one candidate against each reference; 0 for no reference."""
    a = tokenize(candidate)
    masks = bitmasks(a)
    return float(np.mean([rouge_l_tokens(a, masks, tokenize(r)) for r in references])) if references else 0.0
