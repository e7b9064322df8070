"""Finding-level scores of generated reports and rationales: did the model name the right findings?

``findings_f1`` scores text against MedMD-synth's structured truth (``meta["findings"]``);
``term_findings_f1`` is its proxy for real reports, where the only truth is the reference text.
Scales and NaN conventions are those of :mod:`radfm.eval.metrics`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

from radfm.data.synth import report_findings
from radfm.eval.metrics import Undefined, _check, _default_terms, _prf, find_terms

Finding = tuple[str, Any]

# Terms of radiology_terms.txt that are not findings: normality, laterality, anatomy, size and appearance.
NON_FINDING_TERMS = frozenset({
    "normal", "unremarkable", "no acute abnormality", "left", "right", "bilateral", "upper lobe", "lower lobe",
    "middle lobe", "apex", "base", "liver", "spleen", "kidney", "lung", "heart", "brain", "bone", "spine", "rib",
    "pancreas", "bladder", "aorta", "mediastinum", "diaphragm", "ventricle", "cortex", "small", "large", "round",
    "irregular", "well defined", "ill defined", "enhancing", "non-enhancing", "hyperdense", "hypodense",
    "hyperintense", "hypointense",
})
_SPELLING = {"haemorrhage": "hemorrhage", "tumour": "tumor", "metastases": "metastasis"}
# Same cues as radfm.data.synth.report_findings, plus a few common in real reports.
_NEGATION = re.compile(r"\b(no|not|without|clear of|negative for|free of|absence of|ruled out)\b", re.IGNORECASE)
_CLAUSE = re.compile(r"[.;:,\n]|\bbut\b", re.IGNORECASE)


def _scores(pairs: Iterable[tuple[set[Any], set[Any]]], what: str) -> tuple[float, float, float, float]:
    """Micro precision, recall, F1 over (pred set, gold set) pairs, and the presence accuracy."""
    tp = n_p = n_g = hits = n = 0
    for p, g in pairs:
        tp, n_p, n_g = tp + len(p & g), n_p + len(p), n_g + len(g)
        hits += bool(p) == bool(g)
        n += 1
    if not n:
        u = Undefined("no samples")
        return u, u, u, u
    return (*_prf(tp, n_p, n_g, what), hits / n)


def _gold_set(findings: Sequence[Mapping[str, Any]] | None) -> set[Finding]:
    return {(f["type"], f.get("side")) for f in findings or ()}


def findings_f1(pred_texts: Sequence[str], gold_findings: Sequence[Sequence[Mapping[str, Any]] | None]
                ) -> dict[str, float]:
    """Finding precision / recall / F1 of generated MedMD-synth reports or rationales against the scene truth.

    Per sample the predicted set of (type, side) pairs is parsed from the text with
    ``radfm.data.synth.report_findings`` (negated clauses skipped; side ``None`` where none is named) and the
    gold set is ``{(f["type"], f["side"])}`` of ``meta["findings"]``. Micro-averaged over samples:
    ``findings_precision`` = Σ|P∩G| / Σ|P|, ``findings_recall`` = Σ|P∩G| / Σ|G|, ``findings_f1`` =
    2Σ|P∩G| / (Σ|P| + Σ|G|) (a finding with the wrong side is one FP and one FN); ``type_f1``: the same F1
    on finding types alone (side ignored); ``presence_accuracy``: fraction of samples where "any finding"
    agrees (a normal report for a scene with no lesion is correct). P/R/F1 are undefined when no sample
    has a finding on either side.
    """
    _check(pred_texts, gold_findings, "pred_texts and gold_findings")
    pairs = [({(f["type"], f["side"]) for f in report_findings(t)}, _gold_set(g))
             for t, g in zip(pred_texts, gold_findings)]
    p, r, f1, presence = _scores(pairs, "findings")
    type_f1 = _scores((({t for t, _ in a}, {t for t, _ in b}) for a, b in pairs), "findings")[2]
    return {"findings_precision": p, "findings_recall": r, "findings_f1": f1, "type_f1": type_f1,
            "presence_accuracy": presence}


def _canonical(term: str, finding_terms: frozenset[str]) -> str:
    """One name per finding: spelling variants merged, and "pleural effusion" → "effusion" (a multi-word
    term whose last word is itself a finding term counts as that finding)."""
    term = _SPELLING.get(term, term)
    head = term.rsplit(" ", 1)[-1]
    return _SPELLING.get(head, head) if " " in term and head in finding_terms else term


@lru_cache(maxsize=8)
def _finding_terms(terms: tuple[str, ...]) -> frozenset[str]:
    return frozenset(t for t in terms if t.lower() not in NON_FINDING_TERMS)


def positive_findings(text: str, terms: Sequence[str] | None = None) -> set[str]:
    """Finding terms mentioned without negation: the text is cut into clauses at ``. ; : ,``, new lines
    and "but"; clauses with a negation cue ("no", "not", "without", …) are skipped; in the rest the terms
    are found as :func:`radfm.eval.metrics.find_terms` does and those in ``NON_FINDING_TERMS`` dropped."""
    all_terms = tuple(terms) if terms is not None else _default_terms()
    finding_terms = _finding_terms(all_terms)
    out = set()
    for clause in _CLAUSE.split(text):
        if clause.strip() and not _NEGATION.search(clause):
            out |= {_canonical(t, finding_terms) for t in find_terms(clause, all_terms) if t in finding_terms}
    return out


def term_findings_f1(pred_texts: Sequence[str], ref_texts: Sequence[str], terms: Sequence[str] | None = None
                     ) -> dict[str, float]:
    """Finding precision / recall / F1 of generated reports against reference reports (no structured truth).

    Per sample the sets of :func:`positive_findings` (term list minus normality, laterality, anatomy and
    descriptors; negated clauses skipped; side ignored) of the prediction and of the reference; micro P/R/F1
    and presence accuracy exactly as :func:`findings_f1`. A proxy: it sees only listed terms and simple
    negation cues.
    """
    _check(pred_texts, ref_texts, "pred_texts and ref_texts")
    terms = tuple(terms) if terms is not None else _default_terms()
    pairs = [(positive_findings(p, terms), positive_findings(r, terms)) for p, r in zip(pred_texts, ref_texts)]
    p, r, f1, presence = _scores(pairs, "findings")
    return {"findings_precision": p, "findings_recall": r, "findings_f1": f1, "presence_accuracy": presence}
