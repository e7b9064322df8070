"""What the training-only heads learn of a row: its label names, by ``data.label_source``."""

from __future__ import annotations

from typing import Any

from radfm.data.answer_targets import image_key
from radfm.data.manifest import Sample

LABEL_SOURCES = ("labels", "findings", "scene", "answers")


def label_names(sample: Sample, source: str = "labels", targets: dict[Any, dict[str, float]] | None = None
                ) -> list[str] | dict[str, float] | None:
    """What the training-only label head learns of a row; None: nothing known (the row gets no target).

    ``labels``: the manifest's ``labels`` list. ``findings``: from structured findings (``meta["findings"]``,
    MedMD-synth's form: dicts with ``type`` and an optional ``side``), each finding's type and, when sided,
    ``"<type> <side>"`` — so the head also learns where a lesion is, which reports and rationales must name.
    ``scene``: the findings' names plus ``"modality <m>"``, ``"plane <p>"``, ``"count <n>"``, ``"<type> <size>"``
    and ``"<type> <side> <region>"`` (MedMD-synth's meta). These three are exhaustive lists: a name the row
    lacks is a negative. ``answers``: the row's image's targets from every question asked about it
    (``targets``, :func:`radfm.data.answer_targets.answer_targets`), a ``{name: 0/1}`` mapping: names the image
    was never asked about are left out (masked), not negatives.
    """
    if source == "answers":
        return None if targets is None else targets.get(image_key(sample))
    if source == "labels":
        return None if sample.labels is None else list(sample.labels)
    meta = sample.meta or {}
    findings = meta.get("findings")
    if findings is None:
        return None
    names = {str(f["type"]) for f in findings}
    names |= {f"{f['type']} {f['side']}" for f in findings if f.get("side")}
    if source == "scene":
        # Everything a question about the image asks: the study (modality, plane), the lesion count, and
        # per finding its size and full location ("nodule right upper"), so that the warm-up and the head
        # teach the image tokens every answer, not only which lesions are present.
        names |= {f"{k} {meta[k]}" for k in ("modality", "plane") if meta.get(k)}
        names.add(f"count {len(findings)}")
        names |= {f"{f['type']} {f['size']}" for f in findings if f.get("size")}
        names |= {" ".join(str(f[k]) for k in ("type", "side", "region") if f.get(k)) for f in findings
                  if f.get("region")}
    return sorted(names)
