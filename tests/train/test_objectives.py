"""Each training objective on its own (the answer loss per reduction, the label head, the patch head), by hand,
and their composition from ``conf/objective/*.yaml`` (radfm.train.builder.build_objectives)."""

from __future__ import annotations

import pytest
import torch
from omegaconf import open_dict

from radfm.model import presets
from radfm.model.multimodal import ImageEncoding
from radfm.model.tokenizer import IGNORE_INDEX
from radfm.train.builder import build_objectives
from radfm.train.compose import compose
from radfm.train.objectives import (
    AnswerLoss,
    AnswerTokens,
    LabelHead,
    ObjectiveContext,
    PatchHead,
    StepEncoding,
)
from radfm.train.objectives.patch_head import max_patches, patch_label_indices

NAMES = ["cyst", "cyst left", "mass", "modality CT"]


def _bound(objective, tokenizer, names=None):
    objective.bind(ObjectiveContext(presets.tiny(), tokenizer, names))
    return objective


def _bce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(logits)
    return -(y * p.log() + (1 - y) * (1 - p).log()).mean()


# ---- the answer loss ----------------------------------------------------------------------------------------


@pytest.fixture()
def answer_batch(tiny_tokenizer):
    """A packed row (a one-word answer, then a long one that names a clinical term) and a plain row, with
    random per-token losses where answers are scored."""
    tok = tiny_tokenizer
    packed = tok.format_turns([("Is there a nodule?", "no"), ("Describe it.", "A left nodule. " * 4)], 0)
    single = tok.format_prompt("Modality?", "CT", [])
    batch = tok.pad([packed, single])
    mask = (batch["labels"][:, 1:] != IGNORE_INDEX).float()
    torch.manual_seed(0)
    per_token = torch.rand(mask.shape) * mask
    return batch, AnswerTokens(per_token, mask, batch["labels"])


def _by_hand(per_token, weights, segments) -> dict[str, float]:
    """token: weighted mean over all answer tokens; sample: mean of row means; turn: mean of turn means."""
    token = float((per_token * weights).sum() / weights.sum())
    rows = [(per_token[b] * weights[b]).sum() / weights[b].sum() for b in range(per_token.shape[0])]
    turns = []
    for b in range(per_token.shape[0]):
        for k in sorted(set(segments[b].tolist()) - {-1, 0}):
            w = weights[b] * (segments[b] == k)
            if w.sum() > 0:
                turns.append((per_token[b] * w).sum() / w.sum())
    return {"token": token, "sample": float(torch.stack(rows).mean()), "turn": float(torch.stack(turns).mean())}


@pytest.mark.parametrize("reduction", ["token", "sample", "turn"])
def test_answer_loss_by_hand_for_each_reduction(tiny_tokenizer, answer_batch, reduction):
    """Each reduction by hand; term weighting (clinical terms × term_weight) applies in training only."""
    batch, answers = answer_batch
    segments = batch["segment_ids"][:, 1:]
    assert len(set(segments[0].tolist()) - {-1, 0}) == 2  # the packed row holds two answers
    plain = _bound(AnswerLoss(reduction=reduction), tiny_tokenizer)
    assert plain.weighter is None  # term_weight 1: no weighting at all
    for train in (True, False):
        got = plain.loss(batch, StepEncoding(None, answers, train))
        assert float(got) == pytest.approx(_by_hand(answers.per_token, answers.mask, segments)[reduction], rel=1e-5)

    weighted = _bound(AnswerLoss(reduction=reduction, term_weight=3.0), tiny_tokenizer)
    weights = weighted.weighter(batch["labels"])[:, 1:]
    assert weights.max() == 3.0 and bool(((weights > 0) == (answers.mask > 0)).all())  # a term is up-weighted
    trained = weighted.loss(batch, StepEncoding(None, answers, train=True))
    assert float(trained) == pytest.approx(_by_hand(answers.per_token, weights, segments)[reduction], rel=1e-5)
    validated = weighted.loss(batch, StepEncoding(None, answers, train=False))  # validation: the plain loss
    assert float(validated) == pytest.approx(_by_hand(answers.per_token, answers.mask, segments)[reduction],
                                             rel=1e-5)
    assert float(trained) != pytest.approx(float(validated), rel=1e-4)


def test_the_reductions_differ_and_bad_ones_are_refused(tiny_tokenizer, answer_batch):
    batch, answers = answer_batch
    got = {r: float(_bound(AnswerLoss(reduction=r), tiny_tokenizer).loss(batch, StepEncoding(None, answers, True)))
           for r in ("token", "sample", "turn")}
    assert len({round(v, 6) for v in got.values()}) == 3
    with pytest.raises(ValueError, match="reduction must be one of"):
        AnswerLoss(reduction="mean")
    with pytest.raises(ValueError, match="must be a number >= 0"):
        AnswerLoss(weight=-1.0)
    assert AnswerLoss().options() == {"weight": 1.0, "reduction": "token", "term_weight": 1.0, "term_extra": []}


# ---- the label head -----------------------------------------------------------------------------------------


def test_label_loss_by_hand(tiny_tokenizer):
    """Rows pool their own images; None-labelled and image-less rows carry no target; unseen labels no output."""
    head = _bound(LabelHead(2.0), tiny_tokenizer, ["cyst", "mass"])
    hidden = presets.tiny().lm.hidden_size
    torch.manual_seed(0)
    features = torch.randn(4, 3, hidden)  # images of rows A (1), C (1), D (2); row B has none
    batch = {"n_images": [1, 0, 1, 2], "label_names": [["mass", "haemorrhage"], ["cyst"], None, []]}
    got = head.loss(batch, StepEncoding(ImageEncoding(features), None, True))

    w, b = head.head.weight.detach(), head.head.bias.detach()
    y = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    pooled = torch.stack([features[0].mean(0), features[2:4].mean(dim=(0, 1))])
    assert got is not None and float(got) == pytest.approx(float(_bce(pooled @ w.T + b, y)), rel=1e-5)

    one = ImageEncoding(features[:1])
    assert head.loss({"n_images": [1, 0], "label_names": [None, ["cyst"]]}, StepEncoding(one, None, True)) is None
    assert head.loss({"n_images": [1]}, StepEncoding(one, None, True)) is None  # a batch without label names
    assert head.loss(batch, StepEncoding(None, None, True)) is None  # no images

    maxed = _bound(LabelHead(2.0, pool="max"), tiny_tokenizer, ["cyst", "mass"])
    maxed.head.load_state_dict(head.head.state_dict())
    pooled = torch.stack([features[0].amax(0), features[2:4].flatten(0, 1).amax(0)])
    got = maxed.loss(batch, StepEncoding(ImageEncoding(features), None, True))
    assert float(got) == pytest.approx(float(_bce(pooled @ w.T + b, y)), rel=1e-5)


def test_label_loss_per_token_by_hand(tiny_tokenizer):
    """pool="token": every image token of a row is scored on its own against the row's target."""
    head = _bound(LabelHead(2.0, pool="token"), tiny_tokenizer, ["cyst", "mass"])
    hidden = presets.tiny().lm.hidden_size
    torch.manual_seed(0)
    features = torch.randn(3, 4, hidden)  # row A one image, row B none, row C two images
    batch = {"n_images": [1, 0, 2], "label_names": [["mass"], ["cyst"], ["cyst", "mass"]]}
    got = head.loss(batch, StepEncoding(ImageEncoding(features), None, True))

    w, b = head.head.weight.detach(), head.head.bias.detach()
    tokens = features.reshape(12, hidden)  # 4 tokens of A, then 8 of C
    y = torch.tensor([[0.0, 1.0]] * 4 + [[1.0, 1.0]] * 8)
    assert got is not None and float(got) == pytest.approx(float(_bce(tokens @ w.T + b, y)), rel=1e-5)
    # The mean-pooled loss of the same rows differs: the two modes are not the same computation.
    mean = _bound(LabelHead(2.0), tiny_tokenizer, ["cyst", "mass"])
    mean.head.load_state_dict(head.head.state_dict())
    assert float(mean.loss(batch, StepEncoding(ImageEncoding(features), None, True))) != pytest.approx(
        float(got), rel=1e-3)
    with pytest.raises(ValueError, match="pool must be one of"):
        LabelHead(pool="median")


# ---- the patch head -----------------------------------------------------------------------------------------


def test_patch_labels():
    """findings: the types and the names that qualify one; types: presence only; whole-image names never."""
    names = ["count 1", "cyst", "cyst left", "cyst left upper", "cyst small", "mass", "modality CT", "plane axial"]
    assert patch_label_indices(names) == [1, 2, 3, 4, 5]
    assert patch_label_indices(names, "types") == [1, 5]
    answers = ["finding: nodule", "lesion: is there a cyst", "modality = ct", "modality = x-ray"]
    assert patch_label_indices(answers, "binary") == [0, 1]  # presence targets, not whole-image classes
    assert patch_label_indices(answers, "auto") == [0, 1] and patch_label_indices(names, "auto") == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="labels must be one of"):
        patch_label_indices(names, "all")
    with pytest.raises(ValueError, match="labels must be one of"):
        PatchHead(labels="all")


def test_max_patches_pools_each_image_over_its_group():
    """Groups of same-shaped images (P differs between groups) → one max-pooled row per image, in input order."""
    torch.manual_seed(0)
    a, b = torch.randn(2, 5, 6), torch.randn(1, 9, 6)
    pooled = max_patches((([0, 2], a), ([1], b)))
    torch.testing.assert_close(pooled, torch.stack([a[0].amax(0), b[0].amax(0), a[1].amax(0)]))


def test_patch_loss_by_hand(tiny_tokenizer):
    """The patch head's BCE on the unqualified names, each row's patches max-pooled over its images (2D and 3D
    images of a row in different shape groups)."""
    head = _bound(PatchHead(1.0, labels="types"), tiny_tokenizer, NAMES)
    assert head.columns == [0, 2]  # "cyst", "mass": presence, not where or which modality
    assert _bound(PatchHead(1.0), tiny_tokenizer, NAMES).columns == [0, 1, 2]  # the default adds "cyst left"
    hidden, width = presets.tiny().lm.hidden_size, presets.tiny().vision.width
    torch.manual_seed(0)
    tokens = torch.randn(3, 4, hidden)  # row A one image, B none, C two
    flat, deep = torch.randn(2, 5, width), torch.randn(1, 7, width)  # images 0, 2 2D; image 1 3D
    images = ImageEncoding(tokens, (([0, 2], flat), ([1], deep)))
    batch = {"n_images": [1, 0, 2], "label_names": [["mass", "modality CT"], ["cyst"], ["cyst", "cyst left"]]}
    got = head.loss(batch, StepEncoding(images, None, True))

    per_image = max_patches(images.patches)
    torch.testing.assert_close(per_image[1], deep[0].amax(0))
    w, b = head.head.weight.detach(), head.head.bias.detach()
    rows = torch.stack([flat[0].amax(0), torch.maximum(deep[0].amax(0), flat[1].amax(0))])
    y = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    assert got is not None and float(got) == pytest.approx(float(_bce(rows @ w.T + b, y)), rel=1e-5)
    assert head.loss(batch, StepEncoding(ImageEncoding(tokens), None, True)) is None  # no patch tokens asked for
    assert head.loss({"n_images": [1, 0, 2], "label_names": [None] * 3}, StepEncoding(images, None, True)) is None


def test_objectives_say_what_they_read(tiny_tokenizer):
    assert (AnswerLoss.reads_answers, AnswerLoss.vision_only) == (True, False)
    assert (LabelHead.reads_answers, LabelHead.vision_only, LabelHead.reads_patches) == (False, True, False)
    assert (PatchHead.reads_answers, PatchHead.vision_only, PatchHead.reads_patches) == (False, True, True)
    assert LabelHead.needs_label_names and PatchHead.needs_label_names and not AnswerLoss.needs_label_names


# ---- composition from YAML ----------------------------------------------------------------------------------


def test_objectives_compose_from_yaml_in_order_with_their_weights():
    cfg = compose(["objective=[answer,label_head,patch_head]", "objective.label_head.weight=2.0",
                   "objective.patch_head.weight=0.5", "++objective.patch_head.labels=types",
                   "++objective.answer.term_extra=[yes,no]"])
    got = build_objectives(cfg)
    assert [type(o) for o in got] == [AnswerLoss, LabelHead, PatchHead]
    assert [o.name for o in got] == ["answer", "label_head", "patch_head"]
    assert [o.weight for o in got] == [1.0, 2.0, 0.5]
    assert got[2].labels == "types" and got[0].term_extra == ["yes", "no"]
    # The order is the list's.
    assert [o.name for o in build_objectives(compose(["objective=[patch_head,answer]"]))] == ["patch_head", "answer"]
    # The default: the answer loss alone.
    assert [o.name for o in build_objectives(compose())] == ["answer"]


def test_weight_zero_leaves_the_objective_out():
    cfg = compose(["objective=[answer,label_head,patch_head]", "objective.label_head.weight=0"])
    assert [o.name for o in build_objectives(cfg)] == ["answer", "patch_head"]
    with pytest.raises(ValueError, match="no objective with a weight > 0"):
        build_objectives(compose(["objective=[answer]", "objective.answer.weight=0"]))


def test_a_wrong_group_option_fails_at_compose_naming_it():
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="objective/label_hed"):
        compose(["objective=[answer,label_hed]"])


def test_a_missing_weight_names_its_key():
    cfg = compose(["objective=[answer,label_head]", "~objective.label_head.weight"])
    with pytest.raises(ValueError, match=r"objective\.label_head\.weight is missing"):
        build_objectives(cfg)
    cfg = compose(["objective=[answer,label_head]"])
    cfg.objective.label_head.weight = None
    with pytest.raises(ValueError, match=r"objective\.label_head\.weight is missing"):
        build_objectives(cfg)
    cfg = compose(["objective=[answer,label_head]"])
    with open_dict(cfg):
        del cfg.objective.label_head["weight"]
    with pytest.raises(ValueError, match=r"objective\.label_head\.weight is missing"):
        build_objectives(cfg)


def test_a_bad_option_or_class_names_its_objective():
    cfg = compose(["objective=[answer,label_head]", "++objective.label_head.pool=median"])
    with pytest.raises(ValueError, match=r"^objective\.label_head: pool must be one of"):
        build_objectives(cfg)
    # Without ++ the option is refused at compose when the YAML does not list it, else by the class: either
    # way the message names the objective.
    with pytest.raises(Exception, match=r"objective\.label_head"):
        build_objectives(compose(["objective=[answer,label_head]", "objective.label_head.pool=median"]))
    with pytest.raises(ValueError, match=r"^objective\.label_head: weight = -1 must be a number >= 0"):
        build_objectives(compose(["objective=[answer,label_head]", "objective.label_head.weight=-1"]))
    with pytest.raises(ValueError, match=r"^objective\.answer: .*unexpected keyword argument 'pool'"):
        build_objectives(compose(["objective=[answer]", "++objective.answer.pool=max"]))
    cfg = compose(["objective=[answer,label_head]"])
    with open_dict(cfg):
        del cfg.objective.label_head["_target_"]
    with pytest.raises(ValueError, match=r"^objective\.label_head has no _target_"):
        build_objectives(cfg)
    cfg = compose(["objective=[answer,label_head]"])
    cfg.objective.label_head._target_ = "builtins.dict"
    with pytest.raises(ValueError, match=r"^objective\.label_head: builtins\.dict is not a .*Objective"):
        build_objectives(cfg)
