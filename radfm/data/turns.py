"""Training-time turn augmentation: the generic loader's hook for what one data set knows about its questions.

A data set may re-draw a row's question or add turns about the same image in its packs (MedMD-synth does:
:class:`radfm.data.synth_turns.YesNoTurns`). The loader calls the hook with the row's per-item RNG, in a fixed
order, so items stay reproducible; it knows nothing else about any data set. Set it as ``data.turns`` (a
``_target_`` in the data config), or leave it null.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, Protocol

from radfm.data.manifest import Sample

Turn = tuple[str, str]


class TurnAugment(Protocol):
    """What a data set's turn augmentation answers, for training items only."""

    #: Whether :meth:`extra_turns` may add turns (they are turns of a pack: needs ``data.pack_questions``).
    adds_turns: bool

    def training_turn(self, sample: Sample, rng: random.Random) -> Turn | None:
        """A re-drawn ``(question, answer)`` for ``sample`` this time it is trained, or None to keep the row's."""

    def extra_turns(self, sample: Sample, turn: Turn, rng: random.Random) -> list[Turn]:
        """Turns to put right after ``turn`` (``sample``'s, as trained) in its pack."""

    def extra_count(self, sample: Sample) -> int:
        """How many turns :meth:`extra_turns` adds for ``sample`` (packs keep room for them)."""


def interleave(turns: Sequence[Turn], positions: Sequence[Any] | None,
               extra: Sequence[tuple[int, Turn]]) -> tuple[list[Turn], list[Any] | None]:
    """``turns`` with each ``(k, turn)`` of ``extra`` placed right after turn k (in ``extra``'s order); an
    extra turn takes its turn k's image positions."""
    after: dict[int, list[Turn]] = {}
    for k, turn in extra:
        after.setdefault(k, []).append(turn)
    out: list[Turn] = []
    out_pos: list[Any] = []
    for k, turn in enumerate(turns):
        for t in (turn, *after.get(k, ())):
            out.append(t)
            if positions is not None:
                out_pos.append(positions[k])
    return out, (out_pos if positions is not None else None)
