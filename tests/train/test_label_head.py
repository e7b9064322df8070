"""The training-only label head in the module: its weight in the step's loss, its gradient, its absence from the
exported model, a real run. (Its loss by hand: tests/train/test_objectives.py.)"""

from __future__ import annotations

import mlflow
import pytest
import torch
import torch.nn.functional as F

from radfm.data.datamodule import Collator
from radfm.model import presets
from radfm.train.module import RadFMLitModule
from radfm.train.objectives import AnswerLoss, LabelHead, StepEncoding


def _module(tokenizer, **kw) -> RadFMLitModule:
    return RadFMLitModule(presets.tiny(), tokenizer, objectives=[AnswerLoss(), LabelHead(2.0, **kw)],
                          label_names=["cyst", "mass"])


def _capture_logs(module: RadFMLitModule) -> dict[str, float]:
    """What the module logs (no Trainer attached), name → value."""
    logged: dict[str, float] = {}
    module.log = lambda name, value, **kwargs: logged.__setitem__(name, float(value))
    return logged


def test_label_head_adds_to_the_training_loss_and_trains_vision(tiny_tokenizer):
    """The step's loss is answer loss + weight × label loss; its gradient reaches the ViT; export leaves it out."""
    module = _module(tiny_tokenizer)
    head = module.objectives["label_head"]
    plain = RadFMLitModule(presets.tiny(), tiny_tokenizer)
    assert list(plain.objectives) == ["answer"]
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

    def label_loss():
        return head.loss(batch, StepEncoding(module.model.encode(batch["images"]), None, True))

    logged = _capture_logs(module)
    loss = module._step(batch, "train")
    answer = plain._step(batch, "train")
    aux = label_loss()
    assert float(loss) == pytest.approx(float(answer) + 2.0 * float(aux), rel=1e-4)
    assert logged["train/loss"] == pytest.approx(float(answer), rel=1e-4)
    assert logged["train/label_loss"] == pytest.approx(float(aux), rel=1e-4)
    logged.clear()
    module._step(batch, "val")
    assert logged["val/loss"] == pytest.approx(float(answer), rel=1e-4)  # val/loss: the answer loss alone
    assert logged["val/label_loss"] == pytest.approx(float(aux), rel=1e-4)

    module.zero_grad()
    F.mse_loss(label_loss(), torch.zeros(())).backward()
    assert head.head.weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.model.vision.encoder.parameters())
    assert not any("label_head" in k for k in module.model.state_dict())  # the exported model has no head
    grouped = {id(p) for g in module.param_groups() for p in g["params"]}
    assert all(id(p) in grouped for p in head.parameters())


def test_label_head_needs_labels(tiny_tokenizer):
    with pytest.raises(ValueError, match="needs label names"):
        RadFMLitModule(presets.tiny(), tiny_tokenizer, objectives=[AnswerLoss(), LabelHead(1.0)], label_names=[])
    with pytest.raises(ValueError, match="needs label names"):
        RadFMLitModule(presets.tiny(), tiny_tokenizer, objectives=[AnswerLoss(), LabelHead(1.0)])
    with pytest.raises(ValueError, match="must be a number >= 0"):
        LabelHead(-1.0)
    # Without the objective there is no head (weight 0 in the config leaves it out: test_objectives.py).
    module = RadFMLitModule(presets.tiny(), tiny_tokenizer, label_names=["mass"])
    assert "label_head" not in module.objectives
    assert not any(isinstance(m, torch.nn.Linear) for m in module.objectives.modules())


def test_training_with_the_label_head_logs_its_loss(make_cfg):
    """A real short run on MedMD-synth: the vocabulary comes from the manifest; MLflow has train/label_loss."""
    from radfm.train.builder import train_label_names
    from radfm.train.train import train

    cfg = make_cfg("objective=[answer,label_head]", "objective.label_head.weight=1.0")
    metrics = train(cfg)
    names = train_label_names(cfg.data.manifest)
    assert names and names == sorted(names) and set(names) <= {"cyst", "mass", "nodule", "effusion", "fracture"}
    client = mlflow.MlflowClient(tracking_uri=cfg.paths.mlflow_uri)
    history = client.get_metric_history(metrics["run_id"], "train/label_loss")
    assert len(history) >= 3 and all(m.value > 0 for m in history)


def test_label_names_from_labels_or_findings():
    """`labels`: the manifest's list (None stays None); `findings`: each type and, when sided, type + side."""
    from radfm.data.config import DataConfig
    from radfm.data.labels import label_names
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

    module = RadFMLitModule(presets.tiny(), tiny_tokenizer, objectives=[AnswerLoss(term_weight=3.0)])
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
    weights = module.objectives["answer"].weighter(batch["labels"])[:, 1:]
    assert weights.max() > 1  # a clinical term is up-weighted, so the weighting is exercised
    want = (per_token * weights).sum() / weights.sum()
    assert float(got) == pytest.approx(float(want), rel=1e-5)
