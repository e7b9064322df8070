"""Prompt templates per task family (RadFM ships 5–21 per family); random in training, fixed in evaluation.

A manifest row whose ``meta["template"]`` names a family (and ``meta["slots"]`` fills its fields) may have
its question re-drawn from that family during training; evaluation always uses the row's own question.
"""

from __future__ import annotations

import random
from typing import Any

TEMPLATES: dict[str, list[str]] = {
    "modality": [
        "What modality is used to take this image?",
        "Which imaging modality was used for this scan?",
        "What kind of scan is this?",
        "Identify the imaging modality of this image.",
        "What type of imaging technique produced this image?",
        "Which modality is shown here?",
        "Name the imaging modality.",
        "What is the modality of this medical image?",
        "How was this image acquired: which modality?",
        "Tell me the modality of this scan.",
        "Determine the imaging modality used.",
    ],
    "plane": [
        "In which plane is this image acquired?",
        "What is the imaging plane of this scan?",
        "Which plane is shown: axial, coronal or sagittal?",
        "Identify the plane of this image.",
        "What plane was this slice taken in?",
        "Name the acquisition plane.",
        "Which anatomical plane does this image show?",
        "What is the orientation of this image?",
        "Tell me the imaging plane.",
        "Determine the plane of section.",
    ],
    "yesno": [
        "Is there {finding} in this image?",
        "Does this scan show {finding}?",
        "Can {finding} be seen here?",
        "Is {finding} present?",
        "Do you see {finding} in this image?",
        "Does the patient have {finding}?",
        "Is there evidence of {finding}?",
        "Is {finding} visible on this scan?",
        "Answer yes or no: is there {finding}?",
        "Would you report {finding} in this image?",
        "Is this image positive for {finding}?",
    ],
    "diagnosis": [
        "What abnormalities are shown in this image?",
        "Which findings does this scan show?",
        "List the abnormal findings in this image.",
        "What is the diagnosis for this image?",
        "What diseases can be seen in this scan?",
        "Which conditions are present in this image?",
        "Name the findings visible here.",
        "What pathology does this image show?",
        "Give the diagnosis based on this scan.",
        "Which abnormalities would you report?",
    ],
    "report": [
        "Please write the radiology report for this scan.",
        "Write a report describing the findings and impression.",
        "Describe the findings of this image as a radiologist would.",
        "Generate the radiology report.",
        "What are the findings and impression of this study?",
        "Write the findings and impression for this exam.",
        "Report this scan.",
        "Provide a radiology report for this image.",
        "Summarise this study in a radiology report.",
        "Give a full report of this examination.",
        "Describe this scan in a structured report.",
    ],
    "rationale": [
        "What is the most likely diagnosis? Explain the findings that support it.",
        "Give the diagnosis and the evidence for it.",
        "What is your diagnosis, and why?",
        "Diagnose this scan and justify your answer.",
        "Which disease does this image suggest? Give the supporting findings.",
        "State the diagnosis and the rationale.",
        "What is the diagnosis? Support it with the imaging findings.",
        "Explain which findings lead to your diagnosis.",
        "Provide a diagnosis with its rationale.",
        "What does this scan show and what is the diagnosis?",
    ],
    "location": [
        "Where is the {finding} located?",
        "On which side is the {finding}?",
        "Which side of the body shows the {finding}?",
        "Locate the {finding}.",
        "In which region is the {finding}?",
        "Where can the {finding} be found?",
        "What is the location of the {finding}?",
        "Which side is affected by the {finding}?",
        "Point out where the {finding} is.",
        "Tell me where the {finding} lies.",
    ],
    # The open location question asks for side and zone ("left upper"); the closed one (above) for the side
    # alone. With one template family for both, the same question had two answers and the model learned to
    # give the side only, so every open answer was wrong (BENCHMARKS.md, "Main job").
    "location_open": [
        "Where is the {finding}: which side and which zone?",
        "Give the side and zone of the {finding}.",
        "In which side and zone is the {finding}?",
        "Describe the location of the {finding} by side and zone.",
        "Which side and which zone show the {finding}?",
        "Locate the {finding} by side and zone.",
        "State the side and zone of the {finding}.",
        "Name the side and zone where the {finding} lies.",
        "Side and zone of the {finding}?",
        "Tell me the side and zone of the {finding}.",
    ],
    "size": [
        "How large is the {finding}?",
        "What is the size of the {finding}: small, medium or large?",
        "Estimate the size of the {finding}.",
        "Is the {finding} small, medium or large?",
        "How big is the {finding}?",
        "Describe the size of the {finding}.",
        "What size is the {finding}?",
        "Grade the size of the {finding}.",
        "How would you size the {finding}?",
        "Classify the {finding} by size.",
    ],
    "count": [
        "How many lesions are visible?",
        "How many abnormalities can be seen?",
        "Count the lesions in this image.",
        "What is the number of lesions?",
        "How many focal findings are there?",
        "Give the number of visible lesions.",
        "How many lesions does this scan show?",
        "Count the abnormal findings.",
        "How many lesions would you report?",
        "Number of lesions present?",
    ],
}


def families() -> list[str]:
    return sorted(TEMPLATES)


def render(family: str, rng: random.Random | None = None, index: int | None = None, **slots: Any) -> str:
    """A question from ``family``: random with ``rng`` (training), template ``index`` or the first (evaluation)."""
    try:
        options = TEMPLATES[family]
    except KeyError:
        raise ValueError(f"unknown prompt family {family!r}; known: {families()}") from None
    if rng is not None:
        template = rng.choice(options)
    else:
        template = options[(index or 0) % len(options)]
    try:
        return template.format(**slots)
    except KeyError as exc:
        raise ValueError(f"prompt family {family!r} needs slot {exc.args[0]!r}") from None


def training_question(question: str, meta: dict[str, Any] | None, rng: random.Random) -> str:
    """Re-draw a templated question in training; a free-text question is kept as it is."""
    if not meta or "template" not in meta:
        return question
    return render(meta["template"], rng, **(meta.get("slots") or {}))


def image_position(rng: random.Random | None, given: Any = None) -> Any:
    """Where the image goes: the row's own position, else start or end of the question at random (RadFM)."""
    if given is not None and given != "random":
        return given
    if rng is None:
        return "start"
    return "start" if rng.random() < 0.5 else "end"
