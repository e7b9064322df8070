"""Pure RadBench metrics: lists in, floats or dicts of floats out.

Conventions, shared by every function here and in ``findings``/``embedding``:

* Scale: every score lies in [0, 1] (BLEU too, not sacrebleu's 0-100); only ``embedding_similarity``, a
  cosine, can in principle go below 0.
* Undefined: where a score has no value (no samples, one class only for AUC, nothing to count) the function
  returns :class:`Undefined`, a float NaN that carries ``.reason``; ``math.isnan`` is true, ``json`` writes
  ``NaN``, and :func:`reason` reads the reason back (``None`` for a defined score).
* A zero denominator when the other side is not empty scores 0, not NaN (a model that outputs nothing gets
  precision 0), so empty output is never rewarded by dropping out of an average.
* ``preds`` and ``refs``/``gold`` must be the same length, else ``ValueError`` naming both lengths.
* Nothing here downloads anything: sacrebleu and :mod:`radfm.eval.rouge` tokenise with regular expressions.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Collection, Hashable, Iterable, Sequence
from functools import lru_cache
from typing import Any

from radfm.eval.rouge import rouge_l_f1
from radfm.terms import load_terms


# ------------------------------------------------------------------------------------- conventions
class Undefined(float):
    """A NaN with a reason: the value a metric returns where it is undefined."""

    reason: str

    def __new__(cls, reason: str) -> Undefined:
        obj = super().__new__(cls, "nan")
        obj.reason = reason
        return obj

    def __repr__(self) -> str:
        return f"nan ({self.reason})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Undefined, (self.reason,))


def reason(value: float) -> str | None:
    """Why ``value`` is undefined (an :class:`Undefined`), or ``None`` for an ordinary score."""
    if isinstance(value, Undefined):
        return value.reason
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return None


def _check(a: Collection[Any], b: Collection[Any], names: str = "preds and refs") -> None:
    if len(a) != len(b):
        raise ValueError(f"{names} differ in length: {len(a)} vs {len(b)}; pass one reference per prediction")


def _ratio(num: float, den: float, other: float, what: str) -> float:
    """``num / den``; 0 where ``den`` is 0 but ``other`` (the opposite side) is not; undefined where both are."""
    if den:
        return num / den
    return 0.0 if other else Undefined(f"no {what}")


def _prf(tp: float, n_pred: float, n_gold: float, what: str) -> tuple[float, float, float]:
    """Precision, recall, F1 from counts, under the module's zero conventions."""
    if not n_pred and not n_gold:
        u = Undefined(f"no {what} in predictions or references")
        return u, u, u
    p = _ratio(tp, n_pred, n_gold, what)
    r = _ratio(tp, n_gold, n_pred, what)
    return p, r, 2 * tp / (n_pred + n_gold)


# ------------------------------------------------------------------------------- closed answers
_TRAIL = re.compile(r"^[\s\"'`]+|[\s\"'`.!?;:,]+$")


def normalize_label(x: Hashable) -> Hashable:
    """A closed answer as compared: strings lower-cased, trimmed of quotes, white space and trailing
    punctuation, inner white space collapsed (``" Left."`` → ``"left"``); other values unchanged."""
    if isinstance(x, str):
        return " ".join(_TRAIL.sub("", x.lower()).split())
    return x


def accuracy(pred: Sequence[Hashable], gold: Sequence[Hashable], normalize: bool = True) -> float:
    """Fraction of samples whose prediction equals the gold label (after :func:`normalize_label` when
    ``normalize``). Undefined for no samples."""
    _check(pred, gold, "pred and gold")
    if not gold:
        return Undefined("no samples")
    f = normalize_label if normalize else (lambda x: x)
    return sum(f(p) == f(g) for p, g in zip(pred, gold)) / len(gold)


def _per_label_counts(pred: Sequence[Hashable], gold: Sequence[Hashable], labels: Iterable[Hashable] | None,
                      normalize: bool) -> dict[Hashable, list[int]]:
    """label -> [tp, fp, fn] for single-label predictions; ``labels=None``: sorted union of gold and pred."""
    f = normalize_label if normalize else (lambda x: x)
    p = [f(x) for x in pred]
    g = [f(x) for x in gold]
    keys = [f(x) for x in labels] if labels is not None else sorted(set(g) | set(p), key=repr)
    counts = {k: [0, 0, 0] for k in keys}
    for a, b in zip(p, g):
        if a == b:
            if a in counts:
                counts[a][0] += 1
            continue
        if a in counts:
            counts[a][1] += 1
        if b in counts:
            counts[b][2] += 1
    return counts


def macro_f1(pred: Sequence[Hashable], gold: Sequence[Hashable], labels: Iterable[Hashable] | None = None,
             normalize: bool = True) -> float:
    """Unweighted mean over labels of the per-label F1 = 2·TP / (2·TP + FP + FN), single-label case.

    ``labels=None`` uses the sorted union of gold and predicted labels (as sklearn). A label in ``labels``
    that occurs in neither gold nor pred is left out of the mean (sklearn's ``zero_division=np.nan``), so a
    choice absent from a small test split does not drag the score down. A prediction outside ``labels``
    counts as a false negative of its gold label. Undefined for no samples or no label with support.
    """
    _check(pred, gold, "pred and gold")
    if not gold:
        return Undefined("no samples")
    f1s = [2 * tp / (2 * tp + fp + fn) for tp, fp, fn in _per_label_counts(pred, gold, labels, normalize).values()
           if tp + fp + fn]
    return sum(f1s) / len(f1s) if f1s else Undefined("no label of `labels` occurs in gold or pred")


def micro_f1(pred: Sequence[Hashable], gold: Sequence[Hashable], labels: Iterable[Hashable] | None = None,
             normalize: bool = True) -> float:
    """F1 of the TP, FP and FN summed over labels, single-label case. With ``labels=None`` this equals
    :func:`accuracy`; with ``labels`` only those labels are counted (sklearn ``f1_score(average="micro")``)."""
    _check(pred, gold, "pred and gold")
    if not gold:
        return Undefined("no samples")
    tp = fp = fn = 0
    for a, b, c in _per_label_counts(pred, gold, labels, normalize).values():
        tp, fp, fn = tp + a, fp + b, fn + c
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else Undefined("no label of `labels` occurs in gold or pred")


def auc(scores: Sequence[float], gold_binary: Sequence[int | bool]) -> float:
    """ROC AUC of ``scores`` (higher = more likely positive) against 0/1 gold labels: the probability that
    a random positive outscores a random negative, ties counting one half (sklearn ``roc_auc_score``).
    Undefined when gold holds one class only (or no samples)."""
    _check(scores, gold_binary, "scores and gold_binary")
    y = [int(v) for v in gold_binary]
    if set(y) - {0, 1}:
        raise ValueError(f"gold_binary must hold 0/1 (or booleans), got {sorted(set(y) - {0, 1})[:5]}")
    if not y:
        return Undefined("no samples")
    if len(set(y)) < 2:
        return Undefined(f"only one class in gold_binary (all {y[0]}): AUC needs positives and negatives")
    s = [float(v) for v in scores]
    if any(math.isnan(v) for v in s):
        raise ValueError("scores hold NaN: give every sample a finite score")
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s))


# ------------------------------------------------------------------------------ multi-label answers
NORMAL_ANSWERS = frozenset({
    "no abnormality", "no abnormalities", "normal", "normal study", "no acute abnormality",
    "no significant abnormality", "no finding", "no findings", "no acute findings", "unremarkable", "none",
    "nothing", "negative", "no lesion", "no lesions",
})
_SPLIT = re.compile(r",|;|/|\n|\band\b|\bplus\b|&|\+")
_ARTICLES = re.compile(r"^(a|an|the)\s+")
_NEGATED = re.compile(r"^(no|without|not)\b")


def parse_label_list(text: str) -> frozenset[str]:
    """The label set of a multi-label answer: ``"Nodule, effusion"`` → ``{"nodule", "effusion"}``.

    Splits on ``, ; / & +``, new lines, "and", "plus"; lower-cases; trims punctuation and a leading article.
    A normal answer (``"no abnormality"``, ``"normal"``, ``"none"``, … see ``NORMAL_ANSWERS``) and negated
    parts (``"no nodule"``) give no label, so ``"no abnormality"`` → ``frozenset()``.
    """
    out = set()
    for part in _SPLIT.split(text.lower()):
        label = _ARTICLES.sub("", normalize_label(part.strip(string.punctuation + " ")))  # type: ignore[arg-type]
        if label and label not in NORMAL_ANSWERS and not _NEGATED.match(label):
            out.add(label)
    return frozenset(out)


def multilabel_f1(pred_sets: Sequence[Collection[str] | str], gold_sets: Sequence[Collection[str] | str],
                  empty_label: str | None = "no abnormality") -> dict[str, float]:
    """Multi-label diagnosis scores over per-sample label sets (strings are parsed by :func:`parse_label_list`).

    An empty set becomes ``{empty_label}`` (``None``: stays empty), so a correct "no abnormality" earns a
    true positive. ``micro_f1``: 2·ΣTP / (2·ΣTP + ΣFP + ΣFN) over all (sample, label) pairs. ``macro_f1``:
    mean over the labels seen in gold or pred of each label's F1. ``subset_accuracy``: fraction of samples
    whose set matches exactly. Undefined for no samples.
    """
    _check(pred_sets, gold_sets, "pred_sets and gold_sets")
    if not gold_sets:
        u = Undefined("no samples")
        return {"micro_f1": u, "macro_f1": u, "subset_accuracy": u}

    def as_set(x: Collection[str] | str) -> frozenset[str]:
        s = parse_label_list(x) if isinstance(x, str) else frozenset(normalize_label(v) for v in x)
        return frozenset({empty_label}) if not s and empty_label is not None else s  # type: ignore[return-value]

    per: dict[str, list[int]] = {}
    exact = 0
    for p_raw, g_raw in zip(pred_sets, gold_sets):
        p, g = as_set(p_raw), as_set(g_raw)
        exact += p == g
        for lab in p | g:
            c = per.setdefault(lab, [0, 0, 0])
            c[0 if lab in p and lab in g else 1 if lab in p else 2] += 1
    tp = sum(c[0] for c in per.values())
    fp = sum(c[1] for c in per.values())
    fn = sum(c[2] for c in per.values())
    if not per:
        u = Undefined("no labels in predictions or references")
        return {"micro_f1": u, "macro_f1": u, "subset_accuracy": exact / len(gold_sets)}
    macro = sum(2 * a / (2 * a + b + c) for a, b, c in per.values()) / len(per)
    return {"micro_f1": 2 * tp / (2 * tp + fp + fn), "macro_f1": macro, "subset_accuracy": exact / len(gold_sets)}


# ---------------------------------------------------------------------------------------- free text
def bleu(preds: Sequence[str], refs: Sequence[str], lowercase: bool = True, smooth_method: str = "exp",
         tokenize: str = "13a") -> dict[str, float]:
    """Corpus BLEU-1…4 in [0, 1], one reference per prediction, with sacrebleu.

    ``bleuN`` is the *cumulative* BLEU-N reported by RadFM-style papers: brevity penalty × geometric mean of
    the modified 1…N-gram precisions, i.e. sacrebleu ``BLEU(max_ngram_order=N)`` / 100. The n-gram counts are
    taken once (``13a`` tokenisation, lower-cased by default) and each order is scored from them with
    ``BLEU.compute_bleu``. ``smooth_method`` is sacrebleu's (default ``"exp"``: only acts when an order has
    no match at all). A corpus with no N-gram at all (every text shorter than N tokens) has BLEU-N = 0, even
    for perfect answers: score closed answers with :func:`accuracy`. Undefined for no samples.
    """
    _check(preds, refs)
    keys = ("bleu1", "bleu2", "bleu3", "bleu4")
    if not refs:
        return dict.fromkeys(keys, Undefined("no samples"))
    from sacrebleu.metrics import BLEU

    stats = BLEU(max_ngram_order=4, lowercase=lowercase, tokenize=tokenize).corpus_score(list(preds), [list(refs)])
    out = {}
    for n, key in enumerate(keys, start=1):
        s = BLEU.compute_bleu(list(stats.counts[:n]), list(stats.totals[:n]), stats.sys_len, stats.ref_len,
                              smooth_method=smooth_method, max_ngram_order=n)
        out[key] = min(1.0, s.score / 100.0)  # float rounding can give 1 + 4e-16
    return out


def rouge_l(preds: Sequence[str], refs: Sequence[str]) -> float:
    """Mean over samples of the ROUGE-L F-measure (LCS-based, β = 1), :func:`radfm.eval.rouge.rouge_l_f1`:
    equal, to the bit, to ``rouge_score`` without stemming.

    Tokens are the lower-cased ``[a-z0-9]+`` runs (non-ASCII letters are dropped); a sample where either
    side has no token scores 0. Undefined for no samples.
    """
    _check(preds, refs)
    if not refs:
        return Undefined("no samples")
    return sum(rouge_l_f1(p, r) for p, r in zip(preds, refs)) / len(refs)


_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")
_ARTICLE_WORDS = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> list[str]:
    """SQuAD-style answer tokens: lower-case, punctuation → space, articles (a, an, the) removed, split on
    white space. (SQuAD deletes punctuation; a space keeps ``"nodule,effusion"`` two tokens.)"""
    return _ARTICLE_WORDS.sub(" ", _PUNCT.sub(" ", text.lower())).split()


def _overlap(pred: str, gold: str) -> tuple[int, int, int]:
    p, g = normalize_answer(pred), normalize_answer(gold)
    return sum((Counter(p) & Counter(g)).values()), len(p), len(g)


def token_f1(preds: Sequence[str], golds: Sequence[str]) -> float:
    """Mean over samples of SQuAD token F1 (bag-of-tokens overlap after :func:`normalize_answer`).

    Per sample: P = common/|pred|, R = common/|gold|, F1 = 2PR/(P+R); if either side has no token the
    sample scores 1 when both are empty, else 0. Undefined for no samples.
    """
    _check(preds, golds, "preds and golds")
    if not golds:
        return Undefined("no samples")
    total = 0.0
    for p, g in zip(preds, golds):
        common, n_p, n_g = _overlap(p, g)
        if not n_p or not n_g:
            total += float(n_p == n_g)
        elif common:
            total += 2 * common / (n_p + n_g)
    return total / len(golds)


def token_recall(preds: Sequence[str], golds: Sequence[str]) -> float:
    """Mean over samples of token recall, common/|gold| after :func:`normalize_answer` (open-VQA recall);
    a sample with an empty gold scores 1 when the prediction is empty too, else 0. Undefined for no samples."""
    _check(preds, golds, "preds and golds")
    if not golds:
        return Undefined("no samples")
    total = 0.0
    for p, g in zip(preds, golds):
        common, n_p, n_g = _overlap(p, g)
        total += common / n_g if n_g else float(n_p == 0)
    return total / len(golds)


# ----------------------------------------------------------------------------------- clinical terms
_GAP = re.compile(r"[\s-]+")


def _term_key(text: str) -> str:
    return _GAP.sub(" ", text.lower().strip())


@lru_cache(maxsize=8)
def _term_matcher(terms: tuple[str, ...]) -> tuple[re.Pattern[str], dict[str, str]]:
    canon = {_term_key(t): t for t in terms}
    # Longest first: at one position the alternation takes the first that fits, so "pleural effusion" wins
    # over "effusion" and the match consumes it. A space or hyphen inside a term matches any run of either.
    alts = "|".join(r"[\s-]+".join(map(re.escape, k.split(" "))) for k in sorted(canon, key=lambda k: (-len(k), k)))
    return re.compile(rf"\b(?:{alts})\b", re.IGNORECASE), canon


def find_terms(text: str, terms: Sequence[str] | None = None) -> set[str]:
    """The set of terms (as spelt in the list) found in ``text``: case-insensitive, at word boundaries,
    the longest term first at each position, so ``"pleural effusion"`` is one match and its ``"effusion"``
    is not counted again; inside a multi-word term a space matches any run of spaces or hyphens."""
    pat, canon = _term_matcher(tuple(terms) if terms is not None else _default_terms())
    return {canon[_term_key(m.group(0))] for m in pat.finditer(text)}


@lru_cache(maxsize=1)
def _default_terms() -> tuple[str, ...]:
    return tuple(load_terms())


def clinical_terms(preds: Sequence[str], refs: Sequence[str], terms: Sequence[str] | None = None) -> dict[str, float]:
    """Clinical-term precision / recall / F1: a UMLS-free proxy of RadBench's UMLS precision and recall.

    Per sample the *set* of terms from the list (default: the shipped radiology_terms.txt) found in the
    prediction and in the reference (:func:`find_terms`: word boundaries, case-insensitive, longest match
    first). Micro-averaged: ``term_precision`` = Σ|P∩R| / Σ|P|, ``term_recall`` = Σ|P∩R| / Σ|R|,
    ``term_f1`` = 2Σ|P∩R| / (Σ|P| + Σ|R|). Negation is not handled ("no effusion" mentions effusion), as
    with UMLS concept matching. Undefined when neither side holds any term (or no samples).
    """
    _check(preds, refs)
    tp = n_p = n_r = 0
    for p, r in zip(preds, refs):
        ps, rs = find_terms(p, terms), find_terms(r, terms)
        tp, n_p, n_r = tp + len(ps & rs), n_p + len(ps), n_r + len(rs)
    prec, rec, f1 = _prf(tp, n_p, n_r, "clinical terms")
    return {"term_precision": prec, "term_recall": rec, "term_f1": f1}
