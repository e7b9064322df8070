"""MedMD-synth's training-time turn augmentation: yes/no questions re-drawn or added about the same image.

It lives with MedMD-synth because it reads the generator's scene metadata (``meta`` with ``findings``,
``modality``, ``body_part``) and protocols; the generic loader sees it only through
:class:`radfm.data.turns.TurnAugment` (``data.turns`` in the Hydra config).
"""

from __future__ import annotations

import random
from typing import Any

from radfm.data.prompts import render
from radfm.data.synth import ARTICLE
from radfm.data.synth_scene import PROTOCOLS


def redraw_yesno(meta: dict[str, Any] | None, rng: random.Random) -> tuple[str, str] | None:
    """A fresh yes/no question about the same image, for training: ``(question, answer)``, or None.

    The manifest asks each image about one finding; re-drawing the asked finding every time the row is
    trained (a present one or, half the time when the protocol allows, an absent one) shows the LM every
    pairing of finding word and image instead of the same one each epoch — the binding of the question's word
    to the image tokens is what yes/no needs and what ~400 fixed rows taught too slowly. Only rows of this
    generator's ``yesno`` family (``meta`` with ``findings``, ``modality`` and ``body_part``) qualify.
    """
    spec = _protocol_of(meta)
    if spec is None:
        return None
    present, absent = _present_absent(meta, spec)
    say_yes = bool(present) and (not absent or rng.random() < 0.5)
    finding = rng.choice(present if say_yes else absent)
    return render("yesno", rng, finding=ARTICLE[finding]), "yes" if say_yes else "no"


def _protocol_of(meta: dict[str, Any] | None) -> Any:
    """The protocol a generator ``yesno`` row was drawn under, or None for any other row."""
    if not meta or meta.get("family") != "yesno" or "findings" not in meta:
        return None
    return next((p for p in PROTOCOLS.values()
                 if p.modality == meta.get("modality") and p.body_part == meta.get("body_part")), None)


def _present_absent(meta: dict[str, Any], spec: Any) -> tuple[list[str], list[str]]:
    """The finding types an image holds and those its protocol allows that it lacks, both sorted."""
    present = sorted({str(f["type"]) for f in meta["findings"]})
    return present, [t for t in spec.findings if t not in present]


def _twin_pool(meta: dict[str, Any] | None, answer: str) -> list[str]:
    """The findings a twin of a yes/no row may ask about: absent ones for a "yes" row, present ones for "no"."""
    spec = _protocol_of(meta)
    if spec is None or answer not in ("yes", "no"):
        return []
    present, absent = _present_absent(meta or {}, spec)
    return absent if answer == "yes" else present


def _other_findings(meta: dict[str, Any] | None) -> list[str]:
    """The findings of a yes/no row's protocol other than the one it asks about (``meta["finding"]``)."""
    spec = _protocol_of(meta)
    return [] if spec is None else [t for t in spec.findings if t != (meta or {}).get("finding")]


def contrast_yesno(meta: dict[str, Any] | None, answer: str, rng: random.Random) -> tuple[str, str] | None:
    """The twin of a yes/no row, for training: the same image asked about a finding with the other answer.

    A "yes" row (its finding is present) gets a "no" question about a finding the protocol allows and the
    image lacks; a "no" row gets a "yes" question about a finding the image holds. None when there is no
    such finding (no lesion at all, or every finding present) or the row is not this generator's yes/no.
    Why: packed beside the row, on the same image tokens and template, only the finding word decides the
    answer; the model that says "yes" whenever *some* lesion is there pays for it in every such pair.
    """
    pool = _twin_pool(meta, answer)
    if not pool:
        return None
    return render("yesno", rng, finding=ARTICLE[rng.choice(pool)]), "no" if answer == "yes" else "yes"


def every_yesno(meta: dict[str, Any] | None, rng: random.Random) -> list[tuple[str, str]]:
    """Yes/no turns about every other finding of a yes/no row's protocol, each with its true answer, shuffled.

    With the row's own question (the manifest's ``finding``), the image is asked about each finding its
    protocol allows, present or absent. Empty for rows that are not this generator's yes/no.
    """
    others = _other_findings(meta)
    if not others:
        return []
    present = {str(f["type"]) for f in (meta or {})["findings"]}
    rng.shuffle(others)
    return [(render("yesno", rng, finding=ARTICLE[t]), "yes" if t in present else "no") for t in others]


def extra_yesno_count(meta: dict[str, Any] | None, answer: str, mode: str) -> int:
    """How many turns :func:`contrast_yesno` (``mode="twin"``) or :func:`every_yesno` (``"all"``) add for a row."""
    if mode == "twin":
        return int(bool(_twin_pool(meta, answer)))
    return len(_other_findings(meta)) if mode == "all" else 0


YESNO_EXTRA = ("none", "twin", "all")


class YesNoTurns:
    """MedMD-synth's yes/no turns as a :class:`radfm.data.turns.TurnAugment` (``data.turns``).

    ``redraw``: every time a yes/no row is trained it asks about a re-drawn finding (:func:`redraw_yesno`).
    ``extra``: after each yes/no turn of a pack, ``twin`` adds one about the same image with the other answer
    (:func:`contrast_yesno`), ``all`` one about each other finding of the protocol (:func:`every_yesno`),
    ``none`` nothing. Rows that are not this generator's yes/no are untouched.
    """

    def __init__(self, redraw: bool = False, extra: str = "none") -> None:
        if extra not in YESNO_EXTRA:
            raise ValueError(f"data.turns.extra {extra!r} is not one of {YESNO_EXTRA}")
        self.redraw = bool(redraw)
        self.extra = extra
        self.adds_turns = extra != "none"

    def training_turn(self, sample: Any, rng: random.Random) -> tuple[str, str] | None:
        return redraw_yesno(sample.meta, rng) if self.redraw else None

    def extra_turns(self, sample: Any, turn: tuple[str, str], rng: random.Random) -> list[tuple[str, str]]:
        if self.extra == "twin":
            twin = contrast_yesno(sample.meta, turn[1], rng)
            return [twin] if twin is not None else []
        if self.extra == "all":
            return every_yesno(sample.meta, rng)
        return []

    def extra_count(self, sample: Any) -> int:
        return extra_yesno_count(sample.meta, sample.answer, self.extra)
