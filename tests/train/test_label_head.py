"""The training-only label head: its loss by hand, its gradient, its absence from the exported model, a real run."""

from __future__ import annotations

import mlflow
import pytest
import torch
import torch.nn.functional as F

from radfm.data.datamodule import Collator
from radfm.model import presets
from radfm.train.module import RadFMLitModule


def _module(tokenizer, **kw) -> RadFMLitModule:
    return RadFMLitModule(presets.tiny(), tokenizer, label_names=["cyst", "mass"], label_head_weight=2.0, **kw)


def test_label_loss_by_hand(tiny_tokenizer):
    """Rows pool their own images; None-labelled and image-less rows carry no target; unseen labels no output."""
    module = _module(tiny_tokenizer)
    hidden = presets.tiny().lm.hidden_size
    torch.manual_seed(0)
    features = torch.randn(4, 3, hidden)  # images of rows A (1), C (1), D (2); row B has none
    batch = {"n_images": [1, 0, 1, 2], "label_names": [["mass", "haemorrhage"], ["cyst"], None, []]}
    got = module.label_loss(features, batch)

    w, b = module.label_head.weight.detach(), module.label_head.bias.detach()
    pooled = torch.stack([features[0].mean(0), features[2:4].mean(dim=(0, 1))])
    p = torch.sigmoid(pooled @ w.T + b)
    y = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    want = -(y * p.log() + (1 - y) * (1 - p).log()).mean()
    assert got is not None and float(got) == pytest.approx(float(want), rel=1e-5)

    assert module.label_loss(features[:1], {"n_images": [1, 0], "label_names": [None, ["cyst"]]}) is None


def test_label_loss_per_token_by_hand(tiny_tokenizer):
    """label_pool="token": every image token of a row is scored on its own against the row's target."""
    module = _module(tiny_tokenizer, label_pool="token")
    hidden = presets.tiny().lm.hidden_size
    torch.manual_seed(0)
    features = torch.randn(3, 4, hidden)  # row A one image, row B none, row C two images
    batch = {"n_images": [1, 0, 2], "label_names": [["mass"], ["cyst"], ["cyst", "mass"]]}
    got = module.label_loss(features, batch)

    w, b = module.label_head.weight.detach(), module.label_head.bias.detach()
    tokens = features.reshape(12, hidden)  # 4 tokens of A, then 8 of C
    p = torch.sigmoid(tokens @ w.T + b)
    y = torch.tensor([[0.0, 1.0]] * 4 + [[1.0, 1.0]] * 8)
    want = -(y * p.log() + (1 - y) * (1 - p).log()).mean()
    assert got is not None and float(got) == pytest.approx(float(want), rel=1e-5)
    # The mean-pooled loss of the same rows differs: the two modes are not the same computation.
    mean = _module(tiny_tokenizer)
    mean.label_head.load_state_dict(module.label_head.state_dict())
    assert float(mean.label_loss(features, batch)) != pytest.approx(float(got), rel=1e-3)
    with pytest.raises(ValueError, match="label_pool"):
        _module(tiny_tokenizer, label_pool="median")


def test_label_head_adds_to_the_training_loss_and_trains_vision(tiny_tokenizer):
    """The step's loss is answer loss + weight × label loss; its gradient reaches the ViT; export leaves it out."""
    module = _module(tiny_tokenizer)
    plain = RadFMLitModule(presets.tiny(), tiny_tokenizer)
    plain.model.load_state_dict(module.model.state_dict())
    enc = [tiny_tokenizer.format_prompt("Is there a nodule?", "yes", ["start"]),
           tiny_tokenizer.format_prompt("Is there a nodule?", "no", ["end"])]
    torch.manual_seed(1)
    images = [torch.randn(3, 64, 64, 4), torch.randn(3, 64, 64, 4)]
    batch = Collator(tiny_tokenizer)([
        {"id": "a", "task": "diagnosis", "encoded": enc[0], "images": [images[0]], "label_names": ["mass"]},
        {"id": "b", "task": "diagnosis", "encoded": enc[1], "images": [images[1]], "label_names": []},
    ])
    assert batch["n_images"] == [1, 1] and batch["label_names"] == [["mass"], []]

    loss = module._step(batch, "train")
    answer = plain._step(batch, "train")
    aux = module.label_loss(module.model.encode_images(batch["images"]), batch)
    assert float(loss) == pytest.approx(float(answer) + 2.0 * float(aux), rel=1e-4)
    assert float(module._step(batch, "val")) == pytest.approx(float(answer), rel=1e-4)  # val: answer loss only

    module.zero_grad()
    F.mse_loss(module.label_loss(module.model.encode_images(batch["images"]), batch), torch.zeros(())).backward()
    assert module.label_head.weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.model.vision.encoder.parameters())
    assert not any("label_head" in k for k in module.model.state_dict())  # the exported model has no head
    grouped = {id(p) for g in module.param_groups() for p in g["params"]}
    assert all(id(p) in grouped for p in module.label_head.parameters())


def test_label_head_needs_labels(tiny_tokenizer):
    with pytest.raises(ValueError, match="needs label_names"):
        RadFMLitModule(presets.tiny(), tiny_tokenizer, label_names=[], label_head_weight=1.0)
    with pytest.raises(ValueError, match="must be >= 0"):
        RadFMLitModule(presets.tiny(), tiny_tokenizer, label_names=["mass"], label_head_weight=-1.0)
    assert RadFMLitModule(presets.tiny(), tiny_tokenizer, label_names=["mass"]).label_head is None  # weight 0


def test_training_with_the_label_head_logs_its_loss(make_cfg):
    """A real short run on MedMD-synth: the vocabulary comes from the manifest; MLflow has train/label_loss."""
    from radfm.train.train import train, train_label_names

    cfg = make_cfg("label_head_weight=1.0")
    metrics = train(cfg)
    names = train_label_names(cfg.data.manifest)
    assert names and names == sorted(names) and set(names) <= {"cyst", "mass", "nodule", "effusion", "fracture"}
    client = mlflow.MlflowClient(tracking_uri=cfg.paths.mlflow_uri)
    history = client.get_metric_history(metrics["run_id"], "train/label_loss")
    assert len(history) >= 3 and all(m.value > 0 for m in history)


def test_label_names_from_labels_or_findings():
    """`labels`: the manifest's list (None stays None); `findings`: each type and, when sided, type + side."""
    from radfm.data.datamodule import DataConfig, label_names
    from radfm.data.manifest import Sample

    def row(labels, meta):
        return Sample(id="s", task="report", split="train", question="q", answer="a", labels=labels, meta=meta)

    findings = [{"type": "effusion", "side": "left"}, {"type": "mass", "side": None}, {"type": "effusion",
                                                                                        "side": "right"}]
    sample = row(["effusion", "mass"], {"findings": findings})
    assert label_names(sample) == ["effusion", "mass"]
    assert label_names(sample, "findings") == ["effusion", "effusion left", "effusion right", "mass"]
    assert label_names(row(None, {"findings": []}), "labels") is None
    assert label_names(row(None, {"findings": []}), "findings") == []  # a normal scene: every target 0
    assert label_names(row(["mass"], {}), "findings") is None  # no structured findings: no target
    with pytest.raises(ValueError, match="label_source"):
        DataConfig(label_source="reports")


def test_step_loss_equals_the_full_logits_loss(tiny_tokenizer):
    """The training step computes logits only at answer positions; its loss (term weights on) equals the
    weighted token-mean cross-entropy over the model's full B×T×V logits."""
    from radfm.model.tokenizer import IGNORE_INDEX

    module = RadFMLitModule(presets.tiny(), tiny_tokenizer, term_weight=3.0)
    enc = [tiny_tokenizer.format_prompt("Is there a nodule?", "Yes, a small left nodule.", ["start"]),
           tiny_tokenizer.format_prompt("Which side?", "left", ["end"])]
    torch.manual_seed(3)
    batch = Collator(tiny_tokenizer)([
        {"id": "a", "task": "vqa", "encoded": enc[0], "images": [torch.randn(3, 64, 64, 4)], "label_names": None},
        {"id": "b", "task": "vqa", "encoded": enc[1], "images": [torch.randn(3, 64, 64, 4)], "label_names": None},
    ])
    got = module._step(batch, "train")
    logits = module.model(batch["input_ids"], batch["attention_mask"], batch["images"])["logits"]
    target = batch["labels"][:, 1:]
    per_token = F.cross_entropy(logits[:, :-1].transpose(1, 2), target, ignore_index=IGNORE_INDEX, reduction="none")
    weights = module.weighter(batch["labels"])[:, 1:]
    assert weights.max() > 1  # a clinical term is up-weighted, so the weighting is exercised
    want = (per_token * weights).sum() / weights.sum()
    assert float(got) == pytest.approx(float(want), rel=1e-5)
