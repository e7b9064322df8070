"""Targets for the vision side from what any table holds: its questions and answers (``data.label_source=answers``).

No labels column is needed. Every row about an image adds to that image's targets:
- a closed question (its row has ``choices``, other than yes/no): one class out of the family's choices, as
  ``"<family> = <choice>"`` names, 1 for the answer and 0 for the other choices;
- a yes/no question: a per-question binary target, ``"<family>: <question>"``, 1 for yes and 0 for no (the
  phrasings the profile grouped into one family are one question: ``"<family>: <family>"``);
- an open (report-like) answer: the clinical terms it names without negation (``radfm.eval.findings``), as
  ``"finding: <term>"``, over every term the training reports name: 0 where the image's reports do not name it.
- a hand-written ``labels`` list, when a row has one (added, never required): ``"label: <name>"``, 1 for each
  name listed and 0 for every other name the training rows list (a labels list is exhaustive).
A name an image was never asked about is left out of its targets (masked, not a negative). The family is
``meta["family"]`` (the data profile sets it, radfm.data.profile), else the row's task.
"""

from __future__ import annotations

from collections.abc import Sequence

from radfm.data.families import normalise_answer, normalise_question, yes_index
from radfm.data.manifest import Sample

ImageKey = tuple[tuple[str, str], ...]


def image_key(sample: Sample) -> ImageKey:
    """The images a row asks about (paths and kinds, in order): rows with the same key share their targets."""
    return tuple((ref.path, ref.kind) for ref in sample.images)


def family_of(sample: Sample) -> str:
    return str((sample.meta or {}).get("family") or sample.task)


def _is_yes_no(sample: Sample) -> bool:
    return yes_index(sample.choices) is not None


def _closed_targets(sample: Sample) -> dict[str, float]:
    answer, family = normalise_answer(sample.answer), family_of(sample)
    if _is_yes_no(sample):
        # One target per question: the profile's family when it grouped the phrasings of one question ("is
        # there a cyst" / "would you report a cyst"), else the question (a family column may hold many).
        asks = family if (sample.meta or {}).get("family_by") == "question" else normalise_question(sample.question)
        return {f"{family}: {asks}": float(answer == "yes")}
    return {f"{family} = {normalise_answer(c)}": float(normalise_answer(c) == answer) for c in sample.choices or ()}


def _terms(text: str) -> set[str]:
    from radfm.eval.findings import positive_findings  # the clinical term list and its negation rules

    return positive_findings(text)


def answer_targets(samples: Sequence[Sample], terms: Sequence[str] | None = None,
                   labels: Sequence[str] | None = None) -> dict[ImageKey, dict[str, float]]:
    """``{image key: {name: 0/1}}`` from ``samples`` (one split's rows); rows without images add nothing.

    ``terms``: the finding terms open answers are scored over (default: every term the given rows' open answers
    name); ``labels``: the hand-label vocabulary (default: every name the given rows' ``labels`` list); pass
    the training split's to score other splits over the same names.
    """
    found: dict[ImageKey, set[str]] = {}
    listed: dict[ImageKey, set[str]] = {}
    out: dict[ImageKey, dict[str, float]] = {}
    for s in samples:
        if not s.images:
            continue
        key = image_key(s)
        targets = out.setdefault(key, {})
        if s.labels is not None:
            listed.setdefault(key, set()).update(str(n) for n in s.labels)
        if s.choices:
            targets.update(_closed_targets(s))
        else:
            found.setdefault(key, set()).update(_terms(s.answer))
    vocabulary = sorted(set().union(*found.values()) if terms is None and found else terms or ())
    for key, named in found.items():
        out[key].update({f"finding: {t}": float(t in named) for t in vocabulary})
    hand = sorted(set().union(*listed.values()) if labels is None and listed else labels or ())
    for key, names in listed.items():
        out[key].update({f"label: {n}": float(n in names) for n in hand})
    return out


def split_targets(splits: dict[str, Sequence[Sample]]) -> dict[str, dict[ImageKey, dict[str, float]]]:
    """:func:`answer_targets` per split, every split's open answers and hand labels scored over the training
    split's terms and label names."""
    train = answer_targets(splits.get("train", ()))
    names = target_names(train)
    terms = sorted({name.split(": ", 1)[1] for name in names if name.startswith("finding: ")})
    labels = sorted({name.split(": ", 1)[1] for name in names if name.startswith("label: ")})
    return {split: train if split == "train" else answer_targets(rows, terms, labels)
            for split, rows in splits.items()}


def target_names(targets: dict[ImageKey, dict[str, float]]) -> list[str]:
    """The sorted vocabulary of ``answer_targets``' names."""
    return sorted({name for row in targets.values() for name in row})


def _closed_unit(name: str) -> str | None:
    """The closed question a target name answers (``"fam"`` of ``"fam = choice"``, ``"fam: q"`` of a yes/no
    target), None for report terms and hand labels (presence targets, not answers to one question)."""
    if name.startswith(("finding: ", "label: ")):
        return None
    return name.split(" = ", 1)[0] if " = " in name else name


def _outcome(row: dict[str, float], unit: str) -> str | None:
    """An image's answer to the closed question ``unit``, None where it was not asked."""
    for name, value in row.items():
        if _closed_unit(name) != unit:
            continue
        if " = " in name and name.split(" = ", 1)[0] == unit:
            if value == 1.0:
                return name.split(" = ", 1)[1]
        else:
            return "yes" if value == 1.0 else "no"
    return None


def primary_classes(targets: dict[ImageKey, dict[str, float]], keys: Sequence[ImageKey]) -> list[str]:
    """Each item's class for a balanced sampler (``data.balance=family``): its image's answer to the closed
    question asked about the most training images (``""`` where that question was not asked about it).

    ``targets``: the training split's :func:`answer_targets`; ``keys``: each item's :func:`image_key`. Why the
    most-asked question and not every one: balancing on a rare answer of a rarely asked question would repeat
    a handful of images hundreds of times per pass; the question asked of nearly every image (modality, "is
    there pneumonia") is the one whose skewed answers teach the heads a prior instead of the pixels.
    """
    asked: dict[str, int] = {}
    for row in targets.values():
        for unit in {u for u in map(_closed_unit, row) if u is not None}:
            asked[unit] = asked.get(unit, 0) + 1
    if not asked:
        return [""] * len(keys)
    unit = min(asked, key=lambda u: (-asked[u], u))
    return [(_outcome(targets.get(key, {}), unit) or "") for key in keys]
