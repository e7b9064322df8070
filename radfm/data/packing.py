"""Packing: every question about the same images in one training sequence (turns masked from each other)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from radfm.data.manifest import Sample
from radfm.model.tokenizer import RadFMTokenizer

PACK_LAYOUTS = ("inline", "shared")  # see RadFMTokenizer.format_turns
PACKED_TASK = "packed"  # the task logged for a packed training row (its turns may belong to several tasks)
TEMPLATE_SLACK = 8  # tokens kept per extra turn beyond its row's own: another template may be a little longer


def pack_samples(samples: Sequence[Sample], tokenizer: RadFMTokenizer, max_length: int | None,
                 layout: str, extra_turns: Callable[[Sample], int] | None = None) -> list[list[int]]:
    """Group the indices of samples that ask about the same images, each group within ``max_length`` tokens.

    Samples with the same image list (paths and kinds, in order) and at least one image are packed in manifest
    order; a group that would exceed ``max_length`` (measured with the manifest's questions) is cut into
    several packs. Text-only samples stay alone. Every sample lands in exactly one pack. ``extra_turns``: how
    many extra turns of about its own size a sample will bring at training time (``data.turns``); their room
    is kept (with a few tokens to spare for a longer template), so that the extras fit.
    """
    groups: dict[tuple[tuple[str, str], ...], list[int]] = {}
    packs: list[list[int]] = []
    for i, s in enumerate(samples):
        if s.images:
            groups.setdefault(tuple((ref.path, ref.kind) for ref in s.images), []).append(i)
        else:
            packs.append([i])
    for idx in groups.values():
        n_images = len(samples[idx[0]].images)
        # The shared prefix: BOS + the image blocks (shared layout) or BOS alone (inline: blocks in every turn).
        prefix = tokenizer.format_turns([("q", "a")], n_images, positions=None if layout == "shared" else
                                        [["start"] * n_images]).segments.count(0)
        current: list[int] = []
        used = prefix
        for i in idx:
            cost = len(tokenizer.format_prompt(samples[i].question, samples[i].answer,
                                               ["start"] * n_images).input_ids) - prefix
            if extra_turns is not None:
                cost += extra_turns(samples[i]) * (cost + TEMPLATE_SLACK)
            if current and max_length is not None and used + cost > max_length:
                packs.append(current)
                current, used = [], prefix
            current.append(i)
            used += cost
        packs.append(current)
    return packs
