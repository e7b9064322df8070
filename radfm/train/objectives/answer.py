"""The answer loss: next-token cross-entropy on answer tokens, reduced per token, per row or per turn,
optionally with clinical terms (and extra words) up-weighted."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from radfm.train.objectives.base import Objective, ObjectiveContext, StepEncoding
from radfm.train.terms import TermWeighter, load_terms

REDUCTIONS = ("token", "sample", "turn")


def term_words(words: Any) -> list[str]:
    """``term_extra`` as strings; YAML reads a bare ``yes``/``no`` as a boolean, which would silently weigh
    the words "True"/"False" instead, so anything but a string is refused with how to write it."""
    out = []
    for w in words or ():
        if not isinstance(w, str):
            raise ValueError(f"term_extra holds {w!r} ({type(w).__name__}), not a word: quote it in YAML "
                             f'(term_extra: ["yes", "no"]); on the command line term_extra=[yes,no] is fine')
        out.append(w)
    return out


def turn_mean(per_token: torch.Tensor, weights: torch.Tensor, segment_ids: torch.Tensor | None) -> torch.Tensor:
    """Mean over answers of each answer's weighted mean loss; a packed row holds one answer per turn.

    ``per_token``, ``weights``: B×(T−1), aligned with the targets (position t predicts token t + 1);
    ``segment_ids``: B×T (0 prefix, k turn k, −1 padding) or None (one answer per row: the ``sample`` mean).
    With packed questions the ``sample`` mean is a pack's token mean, where a one-token yes/no answer weighs
    ~1/100 of the pack beside a 60-token report; here each turn counts once.
    """
    if segment_ids is None:
        segments = (weights > 0).long()
    else:
        segments = segment_ids[:, 1:].clamp_min(0)  # the turn each predicted token belongs to
    n_seg = int(segments.max()) + 1
    key = (torch.arange(per_token.shape[0], device=per_token.device).unsqueeze(1) * n_seg + segments).flatten()
    size = per_token.shape[0] * n_seg
    num = per_token.new_zeros(size).index_add_(0, key, (per_token * weights).flatten())
    den = per_token.new_zeros(size).index_add_(0, key, weights.flatten().to(per_token.dtype))
    has = den > 0
    if not bool(has.any()):
        return per_token.sum() * 0.0
    return (num[has] / den[has]).mean()


class AnswerLoss(Objective):
    """Cross-entropy on the answer tokens (question, padding and image tokens are never scored).

    ``reduction``: ``token`` (RadFM's mean over answer tokens), ``sample`` (each row counts once: with the
    token mean a 60-token templated report outweighs thirty one-word closed answers, and the model can lower
    most of the loss by modelling report text without looking at the image) or ``turn`` (each packed answer
    counts once). ``term_weight`` > 1 up-weights answer tokens that spell a clinical term (RadFM's intent: 3);
    ``term_extra``: more answer words weighted like the terms (e.g. ``["yes", "no"]``: a closed answer is one
    token beside ~60-token reports in a packed row, so by the token mean it hardly trains). The weighting
    applies in training only; validation reports the plain loss.
    """

    name = "answer"
    metric = "loss"  # what val/loss (the best checkpoint, sweeps) reads
    reads_answers = True

    def __init__(self, weight: float = 1.0, reduction: str = "token", term_weight: float = 1.0,
                 term_extra: Sequence[str] = ()) -> None:
        super().__init__(weight)
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction
        self.term_weight = float(term_weight)
        self.term_extra = term_words(term_extra)
        self.weighter: TermWeighter | None = None

    def bind(self, ctx: ObjectiveContext) -> None:
        if self.term_weight != 1.0:
            self.weighter = TermWeighter(ctx.tokenizer, [*load_terms(), *self.term_extra], self.term_weight)

    def options(self) -> dict[str, Any]:
        return {**super().options(), "reduction": self.reduction, "term_weight": self.term_weight,
                "term_extra": list(self.term_extra)}

    def loss(self, batch: dict[str, Any], encoding: StepEncoding) -> torch.Tensor:
        answers = encoding.answers
        assert answers is not None, "the step runs the LM for an objective that reads answers"
        weights = (answers.mask if self.weighter is None or not encoding.train
                   else self.weighter(answers.labels)[:, 1:])
        if self.reduction == "sample":
            return turn_mean(answers.per_token, weights, None)
        if self.reduction == "turn":
            return turn_mean(answers.per_token, weights, batch.get("segment_ids"))
        return (answers.per_token * weights).sum() / weights.sum().clamp_min(1.0)
