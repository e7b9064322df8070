"""A training-only multi-label head on the image tokens the LM sees.

Why: the answer loss reaches the vision tower only through the LM, and a lesion changes a few of ~40 answer
tokens, so on its own the ViT never learned lesions in the 10-minute demo (yes/no at chance); a direct loss
on each row's label names gives it that signal (BENCHMARKS.md, "Main job").
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from radfm.train.objectives.base import Objective, ObjectiveContext, StepEncoding, label_targets, masked_bce

POOLS = ("mean", "max", "token")


class LabelHead(Objective):
    """Binary cross-entropy of a linear head on each labelled row's image tokens.

    The target of a row is the multi-hot of its ``label_names`` (``data.label_source``) over the training
    vocabulary (an empty list: no finding, every target 0); rows without images or names are left out.
    ``pool``: the head reads the mean of the row's ``n×K`` image tokens (``mean``), their max (``max``), or
    every token on its own against the row's target (``token``). Why ``token``: the LM reads the image through
    attention, which may weigh any few of the K tokens; a mean-pooled head only asks that the *average* token
    carry the labels, so each finding may live in a direction spread thinly over all K.
    """

    name = "label_head"
    metric = "label_loss"
    vision_only = True
    needs_label_names = True

    def __init__(self, weight: float = 1.0, pool: str = "mean") -> None:
        super().__init__(weight)
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        self.pool = pool
        self.names: list[str] = []
        self.head: nn.Linear | None = None

    def bind(self, ctx: ObjectiveContext) -> None:
        if not ctx.label_names:
            raise ValueError("the label head needs label names: the training split's manifest rows carry none "
                             "under data.label_source (set data.label_source, or leave label_head out of objective)")
        self.names = list(ctx.label_names)
        self.head = nn.Linear(ctx.model_cfg.lm.hidden_size, len(self.names))

    def options(self) -> dict[str, Any]:
        return {**super().options(), "pool": self.pool}

    def loss(self, batch: dict[str, Any], encoding: StepEncoding) -> torch.Tensor | None:
        if encoding.images is None or "label_names" not in batch:
            return None
        assert self.head is not None, "bind() builds the head"
        features = encoding.images.tokens  # N×K×hidden
        pooled, targets, masks = [], [], []
        for start, n, target, mask in label_targets(batch, self.names, features):
            tokens = features[start:start + n].flatten(0, 1)  # n·K×hidden
            rows = tokens.shape[0] if self.pool == "token" else 1
            if self.pool == "token":
                pooled.append(tokens)
            else:
                pooled.append(tokens.max(dim=0, keepdim=True).values if self.pool == "max"
                              else tokens.mean(dim=0, keepdim=True))
            targets.append(target.expand(rows, -1))
            masks.append(None if mask is None else mask.expand(rows, -1))
        if not pooled:
            return None
        return masked_bce(self.head(torch.cat(pooled).float()), targets, masks)
