"""What every training objective shares: the step's encoding, the context it is bound to, the base class.

A step encodes the batch's images once and runs the LM once where answers are supervised
(:class:`StepEncoding`); each objective reads what it needs from that and returns one loss. The module sums
them by weight. Objectives are composed from ``conf/objective/*.yaml`` (radfm.train.builder.build_objectives).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from radfm.model.config import RadFMConfig
from radfm.model.multimodal import ImageEncoding
from radfm.model.tokenizer import RadFMTokenizer


@dataclass
class AnswerTokens:
    """The LM's next-token cross-entropy where answers are supervised.

    ``per_token``: ``B×(T−1)`` float32, position t predicting token t + 1, 0 where nothing is scored;
    ``mask``: ``B×(T−1)`` float, 1 where an answer token is scored; ``labels``: the batch's ``B×T`` targets.
    """

    per_token: torch.Tensor
    mask: torch.Tensor
    labels: torch.Tensor


@dataclass
class StepEncoding:
    """What one step computed once for all objectives: the images' encoding (None without images), the
    answer tokens' loss (None when no objective reads answers) and whether this is a training step."""

    images: ImageEncoding | None
    answers: AnswerTokens | None
    train: bool


@dataclass
class ObjectiveContext:
    """What an objective may need to build its parameters: the model's config, the tokenizer and the sorted
    label vocabulary of the training rows (None when no objective asked for it)."""

    model_cfg: RadFMConfig
    tokenizer: RadFMTokenizer
    label_names: Sequence[str] | None = None


class Objective(nn.Module):
    """One weighted loss term. Subclasses set what they read and implement :meth:`loss`.

    ``reads_answers``: needs the LM's answer tokens (the step runs the LM); ``reads_patches``: needs the ViT's
    patch tokens; ``vision_only``: trains through the images alone, so the vision warm-up can run it;
    ``needs_label_names``: :meth:`bind` needs the training rows' label vocabulary; ``reads_text``: its loss
    reads the batch's token ids and labels without running the LM (the warm-up then feeds it whole batches). ``metric`` is logged as
    ``<stage>/<metric>``. Parameters an objective owns are training-only: never part of the exported model.
    """

    name = "objective"
    metric = "objective_loss"
    reads_answers = False
    reads_patches = False
    vision_only = False
    needs_label_names = False
    reads_text = False

    def __init__(self, weight: float) -> None:
        super().__init__()
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            raise ValueError(f"weight = {weight!r} must be a number >= 0")
        self.weight = float(weight)

    def bind(self, ctx: ObjectiveContext) -> None:
        """Build what depends on the model and the data; called once, right after the model is built (and
        LoRA applied), in composition order, so a seed gives the same initial weights every time."""

    def loss(self, batch: dict[str, Any], encoding: StepEncoding) -> torch.Tensor | None:
        """This objective's loss on ``batch`` (a scalar), or None when the batch holds nothing it can learn."""
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        """The values it was built with (saved with the checkpoint's hyper-parameters)."""
        return {"weight": self.weight}


LabelRow = tuple[int, int, torch.Tensor, torch.Tensor | None]


def label_targets(batch: dict[str, Any], names: Sequence[str], like: torch.Tensor) -> list[LabelRow]:
    """``(first image, n images, target over names, mask)`` of each row that has images and label names.

    ``batch["n_images"]``: how many of the batch's images (in order) are each row's; ``batch["label_names"]``:
    each row's names or None (no target: left out). A list of names is exhaustive: its names are 1, every other
    name 0 (mask None: all observed). A ``{name: 0/1}`` mapping is partial: only its names are observed (mask 1
    there, 0 elsewhere). A name outside ``names`` (a label unseen in training, on a val row) has no output to
    train and is ignored. ``like``: the tensor whose dtype and device targets take.
    """
    index = {name: j for j, name in enumerate(names)}
    rows, start = [], 0
    for n, row_names in zip(batch["n_images"], batch["label_names"], strict=True):
        if n and row_names is not None:
            target = like.new_zeros(len(index))
            mask = like.new_zeros(len(index)) if isinstance(row_names, dict) else None
            values = row_names.items() if isinstance(row_names, dict) else ((name, 1.0) for name in row_names)
            for name, value in values:
                if name in index:
                    target[index[name]] = float(value)
                    if mask is not None:
                        mask[index[name]] = 1.0
            rows.append((start, n, target, mask))
        start += n
    return rows


def masked_bce(logits: torch.Tensor, targets: Sequence[torch.Tensor], masks: Sequence[torch.Tensor | None]
               ) -> torch.Tensor:
    """BCE with logits over the rows' target blocks (``logits``: their concatenation's shape), the mean over
    observed targets; ``masks``: each block's mask (its shape) or None (all observed). With no mask at all it is
    the plain mean BCE, bit for bit."""
    target = torch.cat(list(targets)).float()
    if all(m is None for m in masks):
        return F.binary_cross_entropy_with_logits(logits, target)
    weight = torch.cat([torch.ones_like(t) if m is None else m for t, m in zip(targets, masks, strict=True)])
    per = F.binary_cross_entropy_with_logits(logits, target, reduction="none") * weight.float()
    return per.sum() / weight.sum().clamp_min(1.0)
