"""The vision warm-up: it trains the vision side and the head only, its loss falls, bad setups fail clearly,
a real run records it, and `scene` label targets say what every question asks."""

from __future__ import annotations

import pytest
import torch

from radfm.data.datamodule import Collator, label_names
from radfm.data.manifest import Sample
from radfm.model import presets
from radfm.train.module import RadFMLitModule
from radfm.train.warmup import warm_up_factor, warm_up_vision


def _batches(tokenizer, n: int = 3) -> list[dict]:
    """Batches of two rows: a bright-square image labelled "mass", a dark one labelled nothing."""
    enc = tokenizer.format_prompt("Is there a mass?", "yes", ["start"])
    out = []
    g = torch.Generator().manual_seed(0)
    for _ in range(n):
        bright = torch.randn(3, 64, 64, 4, generator=g) * 0.1
        bright[:, 16:40, 16:40] += 1.0
        dark = torch.randn(3, 64, 64, 4, generator=g) * 0.1
        out.append(Collator(tokenizer)([
            {"id": "a", "task": "diagnosis", "encoded": enc, "images": [bright], "label_names": ["mass"]},
            {"id": "b", "task": "diagnosis", "encoded": enc, "images": [dark], "label_names": []},
        ]))
    return out


def test_warm_up_trains_vision_and_head_only(tiny_tokenizer):
    torch.manual_seed(0)
    module = RadFMLitModule(presets.tiny(), tiny_tokenizer, label_names=["cyst", "mass"], label_head_weight=1.0)
    lm_before = {k: v.clone() for k, v in module.model.lm.state_dict().items()}
    vision_before = {k: v.clone() for k, v in module.model.vision.state_dict().items()}
    batches = _batches(tiny_tokenizer)
    with torch.no_grad():
        before = float(module.label_loss(module.model.encode_images(batches[0]["images"]), batches[0]))
    stats = warm_up_vision(module, batches, steps=20, lr=3e-4, head_lr=3e-3)  # 20 steps over 3 batches: cycled
    assert stats["steps"] == 20 and stats["seconds"] > 0
    assert stats["last_loss"] < stats["first_loss"]
    with torch.no_grad():
        after = float(module.label_loss(module.model.encode_images(batches[0]["images"]), batches[0]))
    assert after < 0.5 * before
    assert all(torch.equal(v, lm_before[k]) for k, v in module.model.lm.state_dict().items())  # LM untouched
    assert any(not torch.equal(v, vision_before[k]) for k, v in module.model.vision.state_dict().items())
    assert all(p.grad is None for p in module.parameters())  # no stale gradient reaches the joint fit


def test_warm_up_under_bf16_autocast(tiny_tokenizer):
    """autocast_dtype=bfloat16 (a bf16-mixed fit): the forward runs in bf16, the weights stay fp32 and learn."""
    from radfm.train.train import autocast_dtype

    assert autocast_dtype("bf16-mixed") is torch.bfloat16 and autocast_dtype("16-mixed") is torch.float16
    assert autocast_dtype("32-true") is None and autocast_dtype("bf16-true") is None
    torch.manual_seed(0)
    module = RadFMLitModule(presets.tiny(), tiny_tokenizer, label_names=["cyst", "mass"], label_head_weight=1.0)
    seen: list[torch.dtype] = []
    hook = module.model.vision.projection.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    stats = warm_up_vision(module, _batches(tiny_tokenizer), steps=20, lr=3e-4, head_lr=3e-3,
                           autocast_dtype=torch.bfloat16)
    hook.remove()
    assert set(seen) == {torch.bfloat16}
    assert stats["last_loss"] < stats["first_loss"]
    assert all(p.dtype == torch.float32 for p in module.parameters())


def test_warm_up_factor_ramps_then_decays():
    """The rate factor: (i+1)/ramp over the ramp, 1 at its end, then linear to 0.1 at the last step."""
    assert [warm_up_factor(i, 10) for i in (0, 9)] == [1.0, pytest.approx(0.1)]
    got = [warm_up_factor(i, 14, ramp=4) for i in range(14)]
    assert got[:4] == [0.25, 0.5, 0.75, 1.0]
    assert got[4] == 1.0 and got[13] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(got[4:], got[5:], strict=False))  # strictly decaying after the ramp


def test_warm_up_refuses_what_it_cannot_do(tiny_tokenizer):
    assert warm_up_vision(object(), [], steps=0, lr=1e-3) == {"steps": 0.0, "seconds": 0.0}
    plain = RadFMLitModule(presets.tiny(), tiny_tokenizer)
    with pytest.raises(ValueError, match="needs the label head"):
        warm_up_vision(plain, _batches(tiny_tokenizer, 1), steps=2, lr=1e-3)
    frozen = RadFMLitModule(presets.tiny(), tiny_tokenizer, label_names=["mass"], label_head_weight=1.0)
    frozen.model.vision.requires_grad_(False)
    with pytest.raises(ValueError, match="frozen"):
        warm_up_vision(frozen, _batches(tiny_tokenizer, 1), steps=2, lr=1e-3)
    head = RadFMLitModule(presets.tiny(), tiny_tokenizer, label_names=["mass"], label_head_weight=1.0)
    with pytest.raises(ValueError, match="yielded no batch"):
        warm_up_vision(head, [], steps=2, lr=1e-3)
    unlabelled = _batches(tiny_tokenizer, 1)
    unlabelled[0]["label_names"] = [None, None]
    with pytest.raises(ValueError, match="carries labels"):
        warm_up_vision(head, unlabelled, steps=2, lr=1e-3)
    with pytest.raises(ValueError, match="ramp = -1"):
        warm_up_vision(head, _batches(tiny_tokenizer, 1), steps=2, lr=1e-3, ramp=-1)


def test_scene_label_names():
    """`scene`: the findings' names plus modality, plane, count, type + size and type + side + region."""
    meta = {"findings": [{"type": "nodule", "side": "left", "region": "upper", "size": "large"},
                         {"type": "cyst", "side": None, "region": None, "size": "small"}],
            "modality": "CT", "plane": "axial"}
    s = Sample(id="s", task="report", split="train", question="q", answer="a", meta=meta)
    assert label_names(s, "scene") == ["count 2", "cyst", "cyst small", "modality CT", "nodule", "nodule large",
                                       "nodule left", "nodule left upper", "plane axial"]
    xr = Sample(id="x", task="report", split="train", question="q", answer="a",
                meta={"findings": [], "modality": "X-ray", "plane": None})
    assert label_names(xr, "scene") == ["count 0", "modality X-ray"]
    assert label_names(Sample(id="y", task="report", split="train", question="q", answer="a", meta={}),
                       "scene") is None


def test_training_with_a_warm_up_records_it(make_cfg):
    """A real short run: the warm-up runs before the fit and its figures reach the returned metrics."""
    from radfm.train.train import train

    cfg = make_cfg("label_head_weight=1.0", "data.label_source=scene", "vision_warmup.steps=4",
                   "vision_warmup.lr=1e-4", "vision_warmup.head_lr=1e-3")
    metrics = train(cfg)
    assert metrics["warmup/steps"] == 4.0 and metrics["warmup/seconds"] > 0
    assert metrics["global_step"] == cfg.trainer.max_steps
    smoke = train(make_cfg("label_head_weight=1.0", "vision_warmup.steps=500", "trainer.fast_dev_run=true",
                           "logger=none"))
    assert smoke["warmup/steps"] == 1.0  # a fast_dev_run checks the warm-up with one step, not 500
    import mlflow

    with pytest.raises(ValueError, match="needs the label head"):
        train(make_cfg("vision_warmup.steps=2"))
    assert mlflow.active_run() is None  # refused before any MLflow run started


def test_a_failing_warm_up_ends_the_run_as_failed(make_cfg, monkeypatch):
    """Training that raises (here inside the warm-up) ends its MLflow run as FAILED, not left active."""
    import mlflow

    from radfm.train import warmup
    from radfm.train.train import train

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(warmup, "warm_up_vision", broken)
    cfg = make_cfg("label_head_weight=1.0", "vision_warmup.steps=2")
    with pytest.raises(RuntimeError, match="disk full"):
        train(cfg)
    assert mlflow.active_run() is None
    runs = mlflow.MlflowClient(tracking_uri=cfg.paths.mlflow_uri).search_runs(
        [e.experiment_id for e in mlflow.MlflowClient(tracking_uri=cfg.paths.mlflow_uri).search_experiments()])
    assert [r.info.status for r in runs] == ["FAILED"]
