"""label_source=answers: targets for the vision side from a table's own questions and answers, no labels column."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from radfm.data.answer_targets import answer_targets, image_key, split_targets, target_names
from radfm.data.labels import label_names
from radfm.data.manifest import ImageRef, Sample
from radfm.train.objectives.base import label_targets, masked_bce


def _row(i: str, image: str, question: str, answer: str, choices=None, family=None, split="train") -> Sample:
    return Sample(id=i, task="vqa", split=split, question=question, answer=answer, choices=choices,
                  images=[ImageRef(path=image, kind="2d")], meta={"family": family} if family else {})


ROWS = [
    _row("a1", "a.png", "What is the modality?", "CT", ["CT", "MRI", "X-ray"], "modality"),
    _row("a2", "a.png", "Is there a nodule?", "Yes", ["Yes", "No"], "lesion"),
    _row("a3", "a.png", "Describe the findings.", "A nodule in the right lung. No effusion."),
    _row("b1", "b.png", "What is the modality?", "X-ray", ["CT", "MRI", "X-ray"], "modality"),
    _row("b2", "b.png", "Is there a nodule?", "no", ["yes", "no"], "lesion"),
    _row("c1", "c.png", "Describe the findings.", "Pleural effusion on the left."),
]


def test_every_question_about_an_image_adds_to_its_targets():
    targets = answer_targets(ROWS)
    a, b, c = (targets[image_key(r)] for r in (ROWS[0], ROWS[3], ROWS[5]))
    # a closed family: one of its choices; yes/no: a per-question binary ("Yes" is yes)
    assert {k: v for k, v in a.items() if k.startswith("modality")} == {
        "modality = ct": 1.0, "modality = mri": 0.0, "modality = x-ray": 0.0}
    assert a["lesion: is there a nodule"] == 1.0 and b["lesion: is there a nodule"] == 0.0
    # open answers: the finding terms they name without negation, over every term the reports name
    assert a["finding: nodule"] == 1.0 and a["finding: effusion"] == 0.0  # "No effusion." is negated
    assert c["finding: effusion"] == 1.0 and c["finding: nodule"] == 0.0
    # what an image was never asked about is left out (masked), not a negative
    assert not any(k.startswith("finding:") for k in b) and not any(k.startswith(("modality", "lesion")) for k in c)
    assert target_names(targets) == sorted({k for t in targets.values() for k in t})


def test_other_splits_are_scored_over_the_training_terms():
    val = [_row("v1", "v.png", "Describe the findings.", "A mass and a nodule.", split="val")]
    targets = split_targets({"train": ROWS, "val": val})
    v = targets["val"][image_key(val[0])]
    assert v == {"finding: effusion": 0.0, "finding: nodule": 1.0}  # "mass" is not a training term: no output
    assert label_names(val[0], "answers", targets["val"]) == v
    assert label_names(val[0], "answers", None) is None


def test_partial_targets_are_masked_in_the_loss():
    names = ["finding: nodule", "lesion: is there a nodule", "modality = ct"]
    batch = {"n_images": [1, 1, 0], "label_names": [{"modality = ct": 1.0, "lesion: is there a nodule": 0.0},
                                                    ["finding: nodule"], {"modality = ct": 1.0}]}
    rows = label_targets(batch, names, torch.zeros(1))
    assert [(s, n) for s, n, _, _ in rows] == [(0, 1), (1, 1)]  # the row without images has no target
    (_, _, t0, m0), (_, _, t1, m1) = rows
    assert t0.tolist() == [0.0, 0.0, 1.0] and m0.tolist() == [0.0, 1.0, 1.0]
    assert t1.tolist() == [1.0, 0.0, 0.0] and m1 is None  # a list is exhaustive: every name observed
    logits = torch.tensor([[0.3, -1.0, 2.0], [0.5, 0.1, -0.2]])
    got = masked_bce(logits, [t0.unsqueeze(0), t1.unsqueeze(0)], [m0.unsqueeze(0), None])
    per = F.binary_cross_entropy_with_logits(logits, torch.stack([t0, t1]), reduction="none")
    assert float(got) == pytest.approx(float((per[0, 1] + per[0, 2] + per[1].sum()) / 5))
    # without partial rows it is the plain mean BCE, bit for bit
    plain = masked_bce(logits, [t1.unsqueeze(0), t1.unsqueeze(0)], [None, None])
    assert torch.equal(plain, F.binary_cross_entropy_with_logits(logits, torch.stack([t1, t1])))



def test_a_plain_tables_closed_questions_give_class_targets_through_its_profile():
    """Rows without choices (a user's table) are read through the data profile: a question family with a small
    answer vocabulary gives each image a class target, not nothing."""
    from radfm.data.profile import apply_profile, build_profile

    answers = ["CT", "MRI", "X-ray"]
    rows = [_row(f"r{i}", f"{i}.png", "What is the modality?", answers[i % 3]) for i in range(12)]
    assert not any(k.startswith("vqa = ") for t in answer_targets(rows).values() for k in t)  # no choices: none
    profiled = apply_profile(rows, build_profile(rows))
    targets = answer_targets(profiled)[image_key(rows[1])]
    family = profiled[1].meta["family"]
    assert targets == {f"{family} = ct": 0.0, f"{family} = mri": 1.0, f"{family} = x-ray": 0.0}


def test_phrasings_of_one_yes_no_question_share_one_target_but_a_family_column_keeps_its_questions():
    from radfm.data.profile import apply_profile, build_profile

    yn = ["yes", "no", "yes"]
    rows = ([_row(f"p{i}", f"p{i}.png", "Would you report a cyst in this image?", a) for i, a in enumerate(yn)]
            + [_row(f"q{i}", f"q{i}.png", "Is this image positive for a cyst?", a) for i, a in enumerate(yn)]
            + [_row(f"r{i}", f"r{i}.png", "Would you report a mass in this image?", a) for i, a in enumerate(yn)])
    profiled = apply_profile(rows, build_profile(rows))
    names = target_names(answer_targets(profiled))
    assert len(names) == 2 and all(n.split(": ", 1)[0] == n.split(": ", 1)[1] for n in names)
    explicit = [_row(f"e{i}", f"e{i}.png", q, "yes", family="lesion")
                for i, q in enumerate(["Is there a cyst?", "Is there a mass?", "Is there a cyst?", "Is there a mass?",
                                       "Is there a cyst?", "Is there a mass?"])]
    explicit += [_row("e9", "e9.png", "Is there a mass?", "no", family="lesion")] * 3
    assert target_names(answer_targets(apply_profile(explicit, build_profile(explicit)))) == [
        "lesion: is there a cyst", "lesion: is there a mass"]


def test_hand_labels_are_added_to_the_answer_targets_never_required():
    labelled = [r.model_copy(update={"labels": ["nodule"] if r.id.startswith("a") else []}) for r in ROWS[:5]]
    targets = split_targets({"train": labelled + ROWS[5:],
                             "val": [_row("v1", "v.png", "What is the modality?", "CT", ["CT", "MRI"], "modality")
                                     .model_copy(update={"labels": ["nodule", "mass"]})]})
    a, b = targets["train"][image_key(ROWS[0])], targets["train"][image_key(ROWS[3])]
    assert a["label: nodule"] == 1.0 and b["label: nodule"] == 0.0  # a labels list is exhaustive
    assert a["modality = ct"] == 1.0  # the answers' targets are still there
    assert "label: nodule" not in targets["train"][image_key(ROWS[5])]  # a row without labels: masked
    assert targets["val"][image_key(_row("v1", "v.png", "q", "a"))]["label: nodule"] == 1.0
    assert "label: mass" not in targets["val"][image_key(_row("v1", "v.png", "q", "a"))]  # not a training name
