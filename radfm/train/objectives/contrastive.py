"""A training-only image–text contrastive objective on the user's own image/answer pairs (M3D's CLIP stage).

Why: the answer loss reaches the vision tower only through the LM, and the label head needs label names that a
user's table may not have. Every row with images has answer text, though, so pairing each row's image tokens with
its answer text (InfoNCE over the batch, as CLIP does) gives the vision side a direct signal from any table, and
runs without the LM: the vision warm-up can run it (``vision_only``).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from radfm.model.tokenizer import IGNORE_INDEX
from radfm.train.objectives.base import Objective, ObjectiveContext, StepEncoding

log = logging.getLogger(__name__)

TEXTS = ("answers",)
MAX_LOGIT_SCALE = 100.0  # CLIP's clamp: beyond it the softmax saturates and training becomes unstable


def multi_positive_info_nce(image: torch.Tensor, text: torch.Tensor, groups: torch.Tensor,
                            scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE where rows of the same text group are positives of each other.

    ``image``, ``text``: ``R×D``, L2-normalised, row r of each from the same batch row; ``groups``: ``R`` long,
    equal where two rows' texts are identical; ``scale``: the logit scale (a scalar). Row i's target is uniform
    over the rows of its group (CLIP's one-hot target when every text is distinct): a small table repeats its
    answers ("CT", "yes"), and the images that share an answer are pulled to it together. Where identical texts
    embed identically (this module's bag of words does), the value equals CLIP's one-hot loss with that text's
    column repeated (in effect a log-frequency prior on each text); the soft targets keep it right for a text
    side that would not (dropout, paraphrases). The mean of the image→text and text→image cross-entropies.
    """
    # In fp32 even under autocast: bf16 similarities (3 significant digits) times a scale of up to 100 would
    # blur the logits the softmax compares.
    with torch.autocast(image.device.type, enabled=False):
        logits = scale.float() * image.float() @ text.float().T  # R×R, image i against text j
        same = (groups.unsqueeze(0) == groups.unsqueeze(1)).float()  # R×R, symmetric
        targets = same / same.sum(dim=1, keepdim=True)  # each row uniform over its group
        # ``same`` is symmetric and a group's rows have one size, so the text→image targets are the same matrix.
        image_to_text = -(targets * logits.log_softmax(dim=1)).sum(dim=1).mean()
        text_to_image = -(targets * logits.T.log_softmax(dim=1)).sum(dim=1).mean()
        return (image_to_text + text_to_image) / 2


class ImageTextContrastive(Objective):
    """Contrast each row's pooled image tokens with the text it is paired with (``text``: its answer tokens).

    Image side: the mean of the row's ``n×K`` image tokens (as :class:`LabelHead` pools them) → linear to
    ``dim`` → L2 norm. Text side: the mean of the row's answer token embeddings in a table this objective owns
    (a bag of words; the LM's embeddings are neither read nor trained, so no LM runs and the LM never changes)
    → linear to ``dim`` → L2 norm. Answer tokens are the batch's supervised positions (``labels`` ≠ −100)
    minus special tokens (EOS, which every answer ends with). Loss: :func:`multi_positive_info_nce` over the
    rows that hold images and answer tokens; rows with the token-identical text are positives of each other.
    A batch with fewer than two such rows, or only one distinct text (nothing to contrast), gives None; so
    does a batch without text (``labels``), such as the warm-up loader's images-only batches (warned once).

    ``dim``: the shared embedding size. ``temperature``: the initial softmax temperature; the logit scale
    (1 / temperature) is learned and clamped to [1, 100], as in CLIP. Why learned: how sharp the similarities
    can be depends on the table (how many distinct answers, how often they repeat), which a fixed value cannot
    know; the clamp keeps a small batch from driving it to a saturated softmax. ``text``: what an image is
    paired with; ``answers`` (the only one now): its row's answer tokens (with packed questions, every answer
    of the pack, which then reads like a short report of the image).

    Limits: a batch is contrasted within itself (no gather across DDP ranks); two unpacked rows that ask about
    the same image with different answers are negatives of each other (the batch does not say which images are
    the same); a row's text does not include its question, so "yes" to two different questions is one text.
    """

    name = "contrastive"
    metric = "contrastive_loss"
    vision_only = True
    reads_text = True  # the warm-up feeds it batches with their answers

    def __init__(self, weight: float = 1.0, dim: int = 128, temperature: float = 0.07,
                 text: str = "answers") -> None:
        super().__init__(weight)
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim = {dim!r} must be an integer >= 1")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
                1.0 / MAX_LOGIT_SCALE <= temperature <= 1.0):
            raise ValueError(f"temperature = {temperature!r} must lie in [{1.0 / MAX_LOGIT_SCALE}, 1] "
                             "(the logit scale 1/temperature is clamped to [1, 100])")
        if text not in TEXTS:
            raise ValueError(f"text must be one of {TEXTS}, got {text!r}")
        self.dim, self.temperature, self.text = int(dim), float(temperature), text
        self.special_ids: tuple[int, ...] = ()
        self.image_proj: nn.Linear | None = None
        self.token_embed: nn.Embedding | None = None
        self.text_proj: nn.Linear | None = None
        self.logit_scale: nn.Parameter | None = None
        self._warned = False

    def bind(self, ctx: ObjectiveContext) -> None:
        tok = ctx.tokenizer
        self.special_ids = tuple(sorted({*tok.hf.all_special_ids, *tok.image_token_ids, tok.eos_id, tok.pad_id}))
        self.image_proj = nn.Linear(ctx.model_cfg.lm.hidden_size, self.dim)
        # The tokenizer's ids index the table; the LM's own vocabulary may have more (unused) rows.
        self.token_embed = nn.Embedding(len(tok), self.dim)
        self.text_proj = nn.Linear(self.dim, self.dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / self.temperature)))  # log, as CLIP keeps it

    def options(self) -> dict[str, Any]:
        return {**super().options(), "dim": self.dim, "temperature": self.temperature, "text": self.text}

    def text_tokens(self, labels: torch.Tensor) -> torch.Tensor:
        """``B×T`` bool: the answer tokens of each row (supervised, not special)."""
        special = torch.tensor(self.special_ids, dtype=labels.dtype, device=labels.device)
        return (labels != IGNORE_INDEX) & ~torch.isin(labels, special)

    def embed_text(self, labels: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """``R×dim``: the mean token embedding of each row's ``keep`` tokens (``labels``, ``keep``: ``R×T``).

        A counts matrix times the table rather than an embedding lookup: its backward is a matmul, with no
        index-add whose summation order may vary between CPU runs (see ``radfm.train.module.per_block``).
        """
        assert self.token_embed is not None, "bind() builds the table"
        table = self.token_embed.weight  # V×dim
        rows = keep.nonzero()[:, 0]
        counts = table.new_zeros((labels.shape[0], table.shape[0]))  # R×V
        counts.index_put_((rows, labels[keep]), torch.ones_like(rows, dtype=table.dtype), accumulate=True)
        bag = counts / counts.sum(dim=1, keepdim=True)  # integer counts: exact whatever the order
        return bag @ table

    def loss(self, batch: dict[str, Any], encoding: StepEncoding) -> torch.Tensor | None:
        if encoding.images is None:
            return None
        if batch.get("labels") is None:
            if not self._warned:
                log.warning("%s: a batch with images carries no answer text (labels); nothing to contrast. The "
                            "vision warm-up's loader serves images only (RadFMDataModule.warmup_dataloader).",
                            self.name)
                self._warned = True
            return None
        assert self.image_proj is not None and self.text_proj is not None and self.logit_scale is not None, \
            "bind() builds the layers"
        features = encoding.images.tokens  # N×K×hidden, the batch's images row by row
        labels = batch["labels"]  # B×T
        keep = self.text_tokens(labels)
        pooled, picked, start = [], [], 0
        for b, n in enumerate(batch["n_images"]):
            if n and bool(keep[b].any()):
                pooled.append(features[start:start + n].flatten(0, 1).mean(dim=0))  # n·K×hidden → hidden
                picked.append(b)
            start += n
        if len(picked) < 2:
            return None
        # Identical texts (as token sequences) share a group: positives of each other.
        texts = [tuple(labels[b][keep[b]].tolist()) for b in picked]
        index: dict[tuple[int, ...], int] = {}
        groups = torch.tensor([index.setdefault(t, len(index)) for t in texts], device=labels.device)
        if len(index) < 2:
            return None
        rows = torch.tensor(picked, device=labels.device)
        # The projections may run in bf16 under autocast; the norms and the loss are fp32.
        image = F.normalize(self.image_proj(torch.stack(pooled).float()).float(), dim=-1)  # R×dim
        text = F.normalize(self.text_proj(self.embed_text(labels[rows], keep[rows])).float(), dim=-1)  # R×dim
        scale = self.logit_scale.clamp(0.0, math.log(MAX_LOGIT_SCALE)).exp()
        return multi_positive_info_nce(image, text, groups, scale)
