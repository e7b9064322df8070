"""The vision warm-up: it trains the vision side and the image-only objectives only, its loss falls, bad setups
fail clearly, a real run records it, the callback's state travels in the checkpoint (a resumed fit skips it),
and `scene` label targets say what every question asks."""

from __future__ import annotations

import pytest
import torch

from radfm.data.datamodule import Collator
from radfm.data.labels import label_names
from radfm.data.manifest import Sample
from radfm.model import presets
from radfm.train.callbacks import VisionWarmup
from radfm.train.callbacks.vision_warmup import warm_up_factor, warm_up_vision
from radfm.train.module import RadFMLitModule
from radfm.train.objectives import AnswerLoss, LabelHead, PatchHead, StepEncoding

WARMUP = ["callbacks=[default,vision_warmup]"]


def _module(tokenizer, names=("cyst", "mass"), objectives=None) -> RadFMLitModule:
    return RadFMLitModule(presets.tiny(), tokenizer, objectives=objectives or [AnswerLoss(), LabelHead(1.0)],
                          label_names=list(names))


def _label_loss(module: RadFMLitModule, batch: dict) -> float:
    encoding = StepEncoding(module.model.encode(batch["images"]), None, True)
    return float(module.objectives["label_head"].loss(batch, encoding))


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
    module = _module(tiny_tokenizer)
    lm_before = {k: v.clone() for k, v in module.model.lm.state_dict().items()}
    vision_before = {k: v.clone() for k, v in module.model.vision.state_dict().items()}
    batches = _batches(tiny_tokenizer)
    with torch.no_grad():
        before = _label_loss(module, batches[0])
    stats = warm_up_vision(module, batches, steps=20, lr=3e-4, head_lr=3e-3)  # 20 steps over 3 batches: cycled
    assert stats["steps"] == 20 and stats["seconds"] > 0
    assert stats["last_loss"] < stats["first_loss"]
    with torch.no_grad():
        after = _label_loss(module, batches[0])
    assert after < 0.5 * before
    assert all(torch.equal(v, lm_before[k]) for k, v in module.model.lm.state_dict().items())  # LM untouched
    assert any(not torch.equal(v, vision_before[k]) for k, v in module.model.vision.state_dict().items())
    assert all(p.grad is None for p in module.parameters())  # no stale gradient reaches the joint fit


def test_warm_up_under_bf16_autocast(tiny_tokenizer):
    """autocast_dtype=bfloat16 (a bf16-mixed fit): the forward runs in bf16, the weights stay fp32 and learn."""
    from radfm.train.callbacks.vision_warmup import autocast_dtype

    assert autocast_dtype("bf16-mixed") is torch.bfloat16 and autocast_dtype("16-mixed") is torch.float16
    assert autocast_dtype("32-true") is None and autocast_dtype("bf16-true") is None
    torch.manual_seed(0)
    module = _module(tiny_tokenizer)
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
    with pytest.raises(ValueError, match="needs an objective that trains through the images alone"):
        warm_up_vision(plain, _batches(tiny_tokenizer, 1), steps=2, lr=1e-3)
    frozen = _module(tiny_tokenizer, ["mass"])
    frozen.model.vision.requires_grad_(False)
    with pytest.raises(ValueError, match="frozen"):
        warm_up_vision(frozen, _batches(tiny_tokenizer, 1), steps=2, lr=1e-3)
    head = _module(tiny_tokenizer, ["mass"])
    with pytest.raises(ValueError, match="yielded no batch"):
        warm_up_vision(head, [], steps=2, lr=1e-3)
    unlabelled = _batches(tiny_tokenizer, 1)
    unlabelled[0]["label_names"] = [None, None]
    with pytest.raises(ValueError, match="no row carries label_names"):
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

    # head_lr is not in conf/callbacks/vision_warmup.yaml: ++ adds it (plain key=value is refused at compose).
    cfg = make_cfg("objective=[answer,label_head]", "objective.label_head.weight=1.0", "data.label_source=scene",
                   *WARMUP, "callbacks.vision_warmup.steps=4", "callbacks.vision_warmup.lr=1e-4",
                   "++callbacks.vision_warmup.head_lr=1e-3")
    metrics = train(cfg)
    assert metrics["warmup/steps"] == 4.0 and metrics["warmup/seconds"] > 0
    assert metrics["global_step"] == cfg.trainer.max_steps
    smoke = train(make_cfg("objective=[answer,label_head]", "objective.label_head.weight=1.0", *WARMUP,
                           "callbacks.vision_warmup.steps=500", "trainer.fast_dev_run=true", "logger=none"))
    assert smoke["warmup/steps"] == 1.0  # a fast_dev_run checks the warm-up with one step, not 500
    import mlflow

    with pytest.raises(ValueError, match="trains through the images alone"):
        train(make_cfg(*WARMUP, "callbacks.vision_warmup.steps=2"))
    assert mlflow.active_run() is None  # refused before any MLflow run started


def test_a_failing_warm_up_ends_the_run_as_failed(make_cfg, monkeypatch):
    """Training that raises (here inside the warm-up) ends its MLflow run as FAILED, not left active."""
    import mlflow

    from radfm.train.callbacks import vision_warmup
    from radfm.train.train import train

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(vision_warmup, "warm_up_vision", broken)
    cfg = make_cfg("objective=[answer,label_head]", "objective.label_head.weight=1.0", *WARMUP,
                   "callbacks.vision_warmup.steps=2")
    with pytest.raises(RuntimeError, match="disk full"):
        train(cfg)
    assert mlflow.active_run() is None
    runs = mlflow.MlflowClient(tracking_uri=cfg.paths.mlflow_uri).search_runs(
        [e.experiment_id for e in mlflow.MlflowClient(tracking_uri=cfg.paths.mlflow_uri).search_experiments()])
    assert [r.info.status for r in runs] == ["FAILED"]


def test_warm_up_weighs_each_image_only_objective_by_its_weight_over_the_largest(tiny_tokenizer):
    """label head 2, patch head 1: the warm-up's loss is label + 0.5 × patch (the answer loss is not run)."""
    torch.manual_seed(0)
    module = _module(tiny_tokenizer, objectives=[AnswerLoss(), LabelHead(2.0), PatchHead(1.0)])
    batch = _batches(tiny_tokenizer, 1)[0]
    module.train()
    with torch.no_grad():
        encoding = StepEncoding(module.model.encode(batch["images"], with_patches=True), None, True)
        want = (float(module.objectives["label_head"].loss(batch, encoding))
                + 0.5 * float(module.objectives["patch_head"].loss(batch, encoding)))
    stats = warm_up_vision(module, [batch], steps=1, lr=1e-3)
    assert stats["first_loss"] == pytest.approx(want, rel=1e-5)


def test_the_callback_checks_warms_up_once_and_keeps_its_state(tiny_tokenizer, monkeypatch):
    """VisionWarmup: refuses a module with nothing to warm up; warms up in setup of a fresh fit, once; its
    state (done, figures) round-trips through state_dict; a fit from a checkpoint, or after it ran, skips it."""
    from types import SimpleNamespace

    from radfm.train.callbacks import vision_warmup

    with pytest.raises(ValueError, match="must be >= 0"):
        VisionWarmup(steps=-1)
    plain = RadFMLitModule(presets.tiny(), tiny_tokenizer)
    with pytest.raises(ValueError, match=r"callbacks\.vision_warmup\.steps > 0 needs an objective"):
        VisionWarmup(steps=2).check(plain)
    VisionWarmup(steps=0).check(plain)  # no steps: nothing to refuse
    module = _module(tiny_tokenizer)
    VisionWarmup(steps=2).check(module)

    batches = _batches(tiny_tokenizer, 2)
    trainer = SimpleNamespace(ckpt_path=None, fast_dev_run=False, precision="32-true",
                              datamodule=SimpleNamespace(warmup_dataloader=lambda: batches))
    callback = VisionWarmup(steps=3, lr=3e-4, head_lr=3e-3)
    callback.setup(trainer, module, "validate")  # only a fit warms up
    assert not callback.done and callback.stats == {}
    callback.setup(trainer, module, "fit")
    assert callback.done and callback.stats["warmup/steps"] == 3.0 and callback.stats["warmup/seconds"] > 0
    state = callback.state_dict()
    assert state == {"done": True, "stats": callback.stats}

    def again(*args, **kwargs):
        raise AssertionError("the warm-up ran again")

    monkeypatch.setattr(vision_warmup, "warm_up_vision", again)
    callback.setup(trainer, module, "fit")  # done: not again
    restored = VisionWarmup(steps=3)
    restored.load_state_dict(state)
    assert restored.done and restored.stats == callback.stats
    restored.setup(trainer, module, "fit")
    fresh = VisionWarmup(steps=3)
    fresh.setup(SimpleNamespace(**{**vars(trainer), "ckpt_path": "last.ckpt"}), module, "fit")  # resuming
    assert not fresh.done and fresh.stats == {}
    assert VisionWarmup(steps=3).state_dict() == {"done": False, "stats": {}}
    empty = VisionWarmup()
    empty.load_state_dict({})  # a checkpoint saved without the callback's state
    assert not empty.done and empty.stats == {}


def _warm_then_resume(make_cfg, monkeypatch) -> tuple[dict, dict, dict, int]:
    """A 4-step run with a 2-step warm-up, then a run resumed from its step-2 checkpoint: (the first run's
    warm-up figures, the callback state in the checkpoint, the resumed run's metrics, the warm-ups the resumed
    run ran)."""
    from pathlib import Path

    from omegaconf import open_dict

    from radfm.train.callbacks import vision_warmup
    from radfm.train.train import train

    common = ["objective=[answer,label_head]", "objective.label_head.weight=1.0", *WARMUP,
              "callbacks.vision_warmup.steps=2", "trainer.max_steps=4", "logger=none"]
    metrics = train(make_cfg(*common, "run_name=warm"))
    warm = {k: v for k, v in metrics.items() if k.startswith("warmup/")}
    assert warm["warmup/steps"] == 2.0 and metrics["global_step"] == 4
    ckpt = Path(make_cfg().paths.runs_dir) / "warm" / "checkpoints" / "step-step=2.ckpt"
    state = torch.load(ckpt, weights_only=False)
    saved = [v for k, v in state["callbacks"].items() if "VisionWarmup" in k]
    assert len(saved) == 1

    calls = []
    original = vision_warmup.warm_up_vision

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(vision_warmup, "warm_up_vision", counted)
    cfg = make_cfg(*common, "run_name=warm-resumed")
    with open_dict(cfg):
        cfg.ckpt_path = str(ckpt)  # its name holds "=", which an override cannot
    resumed = train(cfg)
    return warm, saved[0], resumed, len(calls)


def test_the_warm_up_state_travels_in_the_checkpoint(make_cfg, monkeypatch):
    """A real run: the checkpoint holds the callback's state (done, its figures); a fit resumed from it ends
    with the warm-up's figures of the checkpoint."""
    warm, saved, resumed, _ = _warm_then_resume(make_cfg, monkeypatch)
    assert saved == {"done": True, "stats": warm}
    assert resumed["global_step"] == 4
    assert {k: v for k, v in resumed.items() if k.startswith("warmup/")} == warm



def test_a_resumed_fit_skips_the_warm_up(make_cfg, monkeypatch):
    """A fit resumed from a checkpoint does not warm up again (the checkpoint holds the warmed weights)."""
    _, _, resumed, warm_ups = _warm_then_resume(make_cfg, monkeypatch)
    assert resumed["global_step"] == 4
    assert warm_ups == 0


def test_an_epoch_budget_grows_with_the_data_within_its_bounds():
    assert VisionWarmup(steps=500).budget(range(40)) == 500  # no epochs: the fixed count
    cb = VisionWarmup(steps=500, epochs=5, min_steps=60)
    assert cb.budget(range(40)) == 200  # 5 passes over 40 batches
    assert cb.budget(range(7)) == 60  # a small table: at least min_steps
    assert cb.budget(range(400)) == 500  # a large one: at most steps
    assert VisionWarmup(steps=100, epochs=1.5).budget(range(9)) == 14  # ⌈1.5 × 9⌉
    assert cb.budget(iter([])) == 500  # no length: the fixed count
    with pytest.raises(ValueError, match="epochs"):
        VisionWarmup(steps=10, epochs=0)


def test_the_warm_up_feeds_a_text_reading_objective_whole_batches(make_cfg):
    """contrastive pairs images with their answers: the warm-up stage gives it batches with their text (the
    image-only batches would give it nothing), so a run with it alone as the image-only objective warms up."""
    from radfm.train.train import train

    metrics = train(make_cfg("objective=[answer,contrastive]", *WARMUP, "callbacks.vision_warmup.steps=3",
                             "logger=none"))
    assert metrics["warmup/steps"] == 3.0 and metrics["warmup/first_loss"] > 0
