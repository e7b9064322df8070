"""A training-only head on the ViT's patch tokens, max-pooled over each row's patches.

Why: a lesion fills one or two of 64–256 patches, and through a mean-pooled label head (or the resampler) its
gradient reaches those patches diluted; a max sends it to the patch that holds the lesion, as a CNN
detector's global max-pool does. On mid slices of MedMD-synth, 600 vision steps with it read test fractures
at 0.95 through the latent head (0.53 without it) (BENCHMARKS.md, "Main job").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from radfm.train.objectives.base import Objective, ObjectiveContext, StepEncoding, label_targets, masked_bce

PATCH_LABELS = ("auto", "types", "findings", "binary")


def patch_label_indices(names: Sequence[str], which: str = "findings") -> list[int]:
    """The indices of ``names`` that the patch head learns.

    ``types``: names without a qualifier (``"cyst"``): presence only. ``findings``: those and every name
    that qualifies one of them (``"cyst left"``, ``"cyst left upper"``, ``"cyst small"``): where and how big a
    lesion is can be read off the patch that holds it (its token carries its position), so a max over
    patches can say it; ``"modality CT"``, ``"plane axial"``, ``"count 2"`` are about the whole image and
    stay with the label head alone. ``binary``: for ``data.label_source=answers`` (names from a table's own
    answers, :mod:`radfm.data.answer_targets`): every presence target — the finding terms of its reports
    (``"finding: nodule"``) and its yes/no questions (``"<family>: <question>"``) — but not the classes of
    closed questions (``"<family> = <choice>"``: modality, plane, counts are about the whole image).
    ``auto``: ``binary`` when the names come from answers (any ``"finding: "`` or ``" = "`` name), else
    ``findings``.
    """
    if which not in PATCH_LABELS:
        raise ValueError(f"labels must be one of {PATCH_LABELS}, got {which!r}")
    if which == "auto":
        answers = any(n.startswith("finding: ") or " = " in n for n in names)
        which = "binary" if answers else "findings"
    if which == "binary":
        return [j for j, n in enumerate(names) if " = " not in n]
    types = {n for n in names if " " not in n}
    if which == "types":
        return [j for j, n in enumerate(names) if n in types]
    return [j for j, n in enumerate(names) if n.split(" ", 1)[0] in types]


def max_patches(groups: tuple[tuple[list[int], torch.Tensor], ...]) -> torch.Tensor:
    """``N×width``: each image's patch tokens max-pooled, from :attr:`ImageEncoding.patches` groups."""
    first = groups[0][1]
    pooled = first.new_empty((sum(len(idx) for idx, _ in groups), first.shape[-1]))
    for idx, patches in groups:
        pooled[idx] = patches.amax(dim=1)
    return pooled


class PatchHead(Objective):
    """Binary cross-entropy of a linear head on each labelled row's max-pooled ViT patch tokens.

    It learns the names of the row's labels that a patch can show (``labels``: ``types`` or ``findings``,
    see :func:`patch_label_indices`), out of the same training vocabulary the label head uses.
    """

    name = "patch_head"
    metric = "patch_loss"
    vision_only = True
    reads_patches = True
    needs_label_names = True

    def __init__(self, weight: float = 1.0, labels: str = "auto") -> None:
        super().__init__(weight)
        if labels not in PATCH_LABELS:
            raise ValueError(f"labels must be one of {PATCH_LABELS}, got {labels!r}")
        self.labels = labels
        self.names: list[str] = []
        self.columns: list[int] = []
        self.head: nn.Linear | None = None

    def bind(self, ctx: ObjectiveContext) -> None:
        self.names = list(ctx.label_names or [])
        self.columns = patch_label_indices(self.names, self.labels)
        if not self.columns:
            raise ValueError(f"the patch head (labels={self.labels}) finds nothing a patch can show among the "
                             f"training rows' label names (a finding type such as 'cyst', or with "
                             f"data.label_source=answers a yes/no question or report term): {self.names[:5]}")
        self.head = nn.Linear(ctx.model_cfg.vision.width, len(self.columns))

    def options(self) -> dict[str, Any]:
        return {**super().options(), "labels": self.labels}

    def loss(self, batch: dict[str, Any], encoding: StepEncoding) -> torch.Tensor | None:
        images = encoding.images
        if images is None or images.patches is None or "label_names" not in batch:
            return None
        assert self.head is not None, "bind() builds the head"
        rows = label_targets(batch, self.names, images.tokens)
        if not rows:
            return None
        pooled = max_patches(images.patches)  # N×width
        patch_rows = torch.cat([pooled[start:start + n].amax(dim=0, keepdim=True) for start, n, _, _ in rows])
        targets = [target[self.columns].unsqueeze(0) for _, _, target, _ in rows]
        masks = [None if mask is None else mask[self.columns].unsqueeze(0) for _, _, _, mask in rows]
        return masked_bce(self.head(patch_rows.float()), targets, masks)
