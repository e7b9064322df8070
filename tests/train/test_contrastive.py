"""The image–text contrastive objective: its loss by hand (identical texts are positives, aligned beats
shuffled), what it refuses and when it has nothing to learn, the vision warm-up on real MedMD-synth batches (the
vision side and the objective learn, the LM stays bit-identical), a joint step, and its composition from YAML."""

from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn.functional as F

from radfm.data.config import DataConfig
from radfm.data.datamodule import RadFMDataModule
from radfm.data.manifest import read_manifest
from radfm.data.synth import SynthConfig, generate
from radfm.data.transforms import TransformConfig
from radfm.model import factory, presets
from radfm.model.multimodal import ImageEncoding
from radfm.train.builder import build_module, build_objectives
from radfm.train.callbacks.vision_warmup import vision_objectives, warm_up_vision
from radfm.train.compose import compose
from radfm.train.module import RadFMLitModule
from radfm.train.objectives import AnswerLoss, ImageTextContrastive, ObjectiveContext, StepEncoding
from radfm.train.objectives.contrastive import multi_positive_info_nce


def _bound(tokenizer, **kw) -> ImageTextContrastive:
    objective = ImageTextContrastive(**kw)
    objective.bind(ObjectiveContext(presets.tiny(), tokenizer))
    return objective


def _batch(tokenizer, answers: list[str], n_images: list[int]) -> dict:
    """A hand-made batch: one "Is there a nodule?" row per answer, ``labels`` as the tokenizer pads them."""
    batch = tokenizer.pad([tokenizer.format_prompt("Is there a nodule?", a, ["start"] * n)
                           for a, n in zip(answers, n_images, strict=True)])
    return {**batch, "n_images": n_images}


# ---- the loss -----------------------------------------------------------------------------------------------


def test_info_nce_by_hand_with_identical_texts_as_positives():
    torch.manual_seed(0)
    image, text = F.normalize(torch.randn(4, 8), dim=-1), F.normalize(torch.randn(4, 8), dim=-1)
    groups = torch.tensor([0, 1, 0, 2])  # rows 0 and 2: the same text
    scale = torch.tensor(5.0)
    got = multi_positive_info_nce(image, text, groups, scale)

    logits = scale * image @ text.T
    positives = [[j for j in range(4) if groups[j] == groups[i]] for i in range(4)]
    i2t = -sum(sum(logits[i].log_softmax(0)[j] for j in positives[i]) / len(positives[i]) for i in range(4)) / 4
    t2i = -sum(sum(logits[:, i].log_softmax(0)[j] for j in positives[i]) / len(positives[i]) for i in range(4)) / 4
    assert float(got) == pytest.approx(float((i2t + t2i) / 2), rel=1e-5)
    # All texts distinct: CLIP's loss, cross-entropy against the diagonal both ways.
    distinct = multi_positive_info_nce(image, text, torch.arange(4), scale)
    clip = (F.cross_entropy(logits, torch.arange(4)) + F.cross_entropy(logits.T, torch.arange(4))) / 2
    assert float(distinct) == pytest.approx(float(clip), rel=1e-5)


def test_aligned_pairs_beat_shuffled_ones_and_repeated_texts_are_not_negatives():
    torch.manual_seed(0)
    emb = F.normalize(torch.randn(6, 16), dim=-1)
    scale = torch.tensor(1 / 0.07)
    aligned = multi_positive_info_nce(emb, emb, torch.arange(6), scale)
    shuffled = multi_positive_info_nce(emb, emb[torch.tensor([1, 2, 3, 4, 5, 0])], torch.arange(6), scale)
    assert float(aligned) < 0.1 < float(shuffled)
    # Rows 0 and 1 answer the same ("CT"): one text embedding. As positives of each other, the loss is lowest
    # when both images sit on that text (the floor: log 2 for each of the two rows in both directions)...
    text = emb.clone()
    text[1] = text[0]
    groups = torch.tensor([0, 0, 1, 2, 3, 4])
    together = multi_positive_info_nce(text, text, groups, scale)
    assert float(together) == pytest.approx(2 * math.log(2) / 6, abs=1e-3)
    assert float(together) < float(multi_positive_info_nce(emb, text, groups, scale))  # image 1 elsewhere
    # ... and a text embedded identically each time makes it CLIP's loss with that text's column repeated.
    assert float(multi_positive_info_nce(emb, text, torch.arange(6), scale)) == pytest.approx(
        float(multi_positive_info_nce(emb, text, groups, scale)), rel=1e-5)


def test_the_objective_pairs_each_rows_pooled_images_with_its_answer_tokens(tiny_tokenizer):
    """By hand: rows pool their own n×K tokens; the text is the answer tokens without EOS; a row without images
    is left out; rows with the same answer share a group."""
    obj = _bound(tiny_tokenizer)
    batch = _batch(tiny_tokenizer, ["Yes.", "No.", "Yes.", "No."], [1, 0, 2, 1])
    hidden = presets.tiny().lm.hidden_size
    torch.manual_seed(0)
    features = torch.randn(4, 3, hidden)  # rows 0 (image 0), 2 (images 1, 2), 3 (image 3); row 1 has none
    got = obj.loss(batch, StepEncoding(ImageEncoding(features), None, True))

    pooled = torch.stack([features[0].mean(0), features[1:3].flatten(0, 1).mean(0), features[3].mean(0)])
    image = F.normalize(obj.image_proj(pooled), dim=-1)
    table = obj.token_embed.weight
    words = {a: tiny_tokenizer.format_prompt("q", a).labels[-len(tiny_tokenizer.encode_text(" " + a)) - 1:-1]
             for a in ("Yes.", "No.")}
    assert tiny_tokenizer.eos_id not in words["Yes."]
    text = torch.stack([table[torch.tensor(words[a])].mean(0) for a in ("Yes.", "Yes.", "No.")])
    text = F.normalize(obj.text_proj(text), dim=-1)
    want = multi_positive_info_nce(image, text, torch.tensor([0, 0, 1]), torch.tensor(1 / 0.07))
    assert got is not None and float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-5)
    got.backward()  # it trains its own layers, the logit scale included
    assert all(p.grad is not None for p in obj.parameters())
    # Under bf16 autocast (a bf16-mixed fit or warm-up) the projections run in bf16, the loss in fp32.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = obj.loss(batch, StepEncoding(ImageEncoding(features.bfloat16()), None, True))
    assert mixed.dtype == torch.float32 and float(mixed.detach()) == pytest.approx(float(want.detach()), rel=0.05)


def test_nothing_to_contrast_gives_none(tiny_tokenizer, caplog):
    obj = _bound(tiny_tokenizer)
    hidden = presets.tiny().lm.hidden_size
    features = ImageEncoding(torch.randn(2, 3, hidden))
    one_row = _batch(tiny_tokenizer, ["Yes."], [2])
    assert obj.loss(one_row, StepEncoding(features, None, True)) is None  # < 2 rows
    one_with_images = _batch(tiny_tokenizer, ["Yes.", "No."], [2, 0])
    assert obj.loss(one_with_images, StepEncoding(features, None, True)) is None
    same_text = _batch(tiny_tokenizer, ["Yes.", "Yes."], [1, 1])
    assert obj.loss(same_text, StepEncoding(features, None, True)) is None  # one distinct text: no negative
    two = _batch(tiny_tokenizer, ["Yes.", "No."], [1, 1])
    assert obj.loss(two, StepEncoding(None, None, True)) is None  # no images
    assert obj.loss(two, StepEncoding(features, None, True)) is not None
    # The warm-up loader's images-only batches carry no text: None, and a warning says so (once).
    bare = {"n_images": [1, 1], "label_names": [None, None]}
    with caplog.at_level(logging.WARNING):
        assert obj.loss(bare, StepEncoding(features, None, True)) is None
        assert obj.loss(bare, StepEncoding(features, None, True)) is None
    assert sum("carries no answer text" in r.message for r in caplog.records) == 1


def test_options_flags_and_refusals(tiny_tokenizer):
    obj = ImageTextContrastive()
    assert obj.options() == {"weight": 1.0, "dim": 128, "temperature": 0.07, "text": "answers"}
    assert (obj.vision_only, obj.reads_answers, obj.reads_patches, obj.needs_label_names) == (True, False, False, False)
    bound = _bound(tiny_tokenizer, dim=16, temperature=0.5)
    assert bound.image_proj.out_features == bound.text_proj.out_features == 16
    assert bound.token_embed.num_embeddings == len(tiny_tokenizer)
    assert float(bound.logit_scale.detach().exp()) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="dim = 0 must be an integer >= 1"):
        ImageTextContrastive(dim=0)
    with pytest.raises(ValueError, match="temperature = 0 must lie in"):
        ImageTextContrastive(temperature=0)
    with pytest.raises(ValueError, match="text must be one of"):
        ImageTextContrastive(text="reports")


# ---- the warm-up and the joint step on real MedMD-synth batches ---------------------------------------------


@pytest.fixture(scope="module")
def synth(tmp_path_factory, tiny_cfg):
    """A small MedMD-synth, its tokenizer, and three of its 2D training batches (with their text)."""
    root = tmp_path_factory.mktemp("synth_contrastive")
    generate(SynthConfig(n_samples=12, seed=3), root)
    samples = read_manifest(root / "manifest.jsonl")
    tokenizer = factory.build_tokenizer(tiny_cfg, [t for s in samples for t in (s.question, s.answer)])
    dm = RadFMDataModule(DataConfig(manifest=str(root / "manifest.jsonl"), root=str(root), batch_size_2d=4,
                                    batch_size_3d=2, transform=TransformConfig(image_size=64)), tokenizer)
    dm.setup()
    batches = [b for b in dm.train_dataloader() if b["images"][0].shape[-1] == 1][:3]
    assert len(batches) == 3 and all("labels" in b for b in batches)
    return tokenizer, batches


def _contrast(module: RadFMLitModule, batch: dict) -> float:
    with torch.no_grad():
        encoding = StepEncoding(module.model.encode(batch["images"]), None, True)
        return float(module.objectives["contrastive"].loss(batch, encoding))


def test_warm_up_trains_vision_and_the_objective_and_leaves_the_lm_unchanged(synth):
    tokenizer, batches = synth
    torch.manual_seed(0)
    module = RadFMLitModule(presets.tiny(), tokenizer, objectives=[AnswerLoss(), ImageTextContrastive()])
    assert [o.name for o in vision_objectives(module)] == ["contrastive"]
    lm = {k: v.clone() for k, v in module.model.lm.state_dict().items()}
    vision = {k: v.clone() for k, v in module.model.vision.state_dict().items()}
    own = {k: v.clone() for k, v in module.objectives["contrastive"].state_dict().items()}
    before = _contrast(module, batches[0])
    stats = warm_up_vision(module, batches, steps=6, lr=1e-3, head_lr=3e-3)
    assert stats["steps"] == 6 and math.isfinite(stats["last_loss"])
    assert _contrast(module, batches[0]) < before
    assert all(torch.equal(v, lm[k]) for k, v in module.model.lm.state_dict().items())  # the LM bit-identical
    assert any(not torch.equal(v, vision[k]) for k, v in module.model.vision.state_dict().items())
    assert all(not torch.equal(v, own[k]) for k, v in module.objectives["contrastive"].state_dict().items())
    assert all(p.grad is None for p in module.parameters())


def test_a_joint_step_adds_the_weighted_contrast_to_the_answer_loss(synth):
    tokenizer, batches = synth
    torch.manual_seed(0)
    module = RadFMLitModule(presets.tiny(), tokenizer, objectives=[AnswerLoss(), ImageTextContrastive(0.5)])
    logged: dict[str, float] = {}
    module.log = lambda name, value, **kwargs: logged.__setitem__(name, float(value.detach()))
    loss = module._step(batches[0], "train")
    assert float(loss.detach()) == pytest.approx(logged["train/loss"] + 0.5 * logged["train/contrastive_loss"], rel=1e-5)
    loss.backward()
    contrast = module.objectives["contrastive"]
    assert all(p.grad is not None for p in contrast.parameters())
    assert module.model.vision.projection.weight.grad is not None


def test_answer_and_contrastive_compose_from_yaml_and_build(synth):
    tokenizer, _ = synth
    cfg = compose(["objective=[answer,contrastive]", "objective.contrastive.weight=0.5",
                   "objective.contrastive.dim=32"])
    objectives = build_objectives(cfg)
    assert [type(o) for o in objectives] == [AnswerLoss, ImageTextContrastive]
    assert (objectives[1].name, objectives[1].weight, objectives[1].dim) == ("contrastive", 0.5, 32)
    module = build_module(cfg, presets.tiny(), tokenizer, objectives)
    assert module.objectives["contrastive"].image_proj.out_features == 32
    assert module.hparams["objectives"]["contrastive"] == {"weight": 0.5, "dim": 32, "temperature": 0.07,
                                                          "text": "answers"}
