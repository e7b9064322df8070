"""train(cfg): fast_dev_run of every experiment, a real short run whose loss drops, resume, MLflow contents."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import torch
from omegaconf import open_dict

from radfm.train.train import train

CONF = Path(__file__).resolve().parents[2] / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


MEDMNIST_EXPERIMENTS = {"pneumoniamnist": "pneumoniamnist.npz"}


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_fast_dev_run_every_experiment(make_cfg, experiment, tmp_path):
    extra: list[str] = []
    if experiment in MEDMNIST_EXPERIMENTS:
        import numpy as np

        from tests.conftest import SHARED_DATA

        source = SHARED_DATA / MEDMNIST_EXPERIMENTS[experiment]
        if not source.is_file():
            pytest.skip(f"{source} is absent (the shared data folder is not beside this checkout)")
        # A 24-image-per-split slice keeps the import and the data check to seconds.
        with np.load(source) as z:
            np.savez(tmp_path / "slice.npz", **{k: z[k][:24] for k in z.files})
        extra = [f"data.npz={tmp_path / 'slice.npz'}", f"data.root={tmp_path / 'medmnist'}",
                 "data.prevalidate=false"]
    cfg = make_cfg(f"experiment={experiment}", "trainer.fast_dev_run=true", "logger=none", "trainer.max_steps=2",
                   *extra, synth=experiment not in MEDMNIST_EXPERIMENTS)
    metrics = train(cfg)
    assert metrics["global_step"] >= 1


@pytest.mark.parametrize("model", ["tiny", "small", "base"])
def test_every_model_group_instantiates(make_cfg, model):
    from radfm.train.builder import build_model_config

    cfg = build_model_config(make_cfg(f"model={model}"))
    assert cfg.name == model


def test_short_run_loss_drops_and_mlflow_has_it(make_cfg, tmp_path):
    cfg = make_cfg("trainer.max_steps=40", "trainer.val_check_interval=20", "optim.lr=2e-3",
                   "optim.warmup_steps=5", "++objective.answer.term_weight=3.0")
    metrics = train(cfg)
    client = mlflow.MlflowClient(tracking_uri=cfg.paths.mlflow_uri)
    run = client.get_run(metrics["run_id"])
    losses = [m.value for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert len(losses) >= 10
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.6 * first, (first, last)
    tags = run.data.tags
    assert tags["radfm.model_preset"] == "tiny"
    assert len(tags["radfm.data_version"]) == 32
    assert tags["radfm.git_commit"]
    assert int(tags["radfm.params_total"]) > 1e6
    assert run.data.params["cfg.model.vision.width"] == "192"
    assert "val/loss" in run.data.metrics and "train/lr" in run.data.metrics
    assert any(k.startswith("train/loss_") for k in run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert {"model/model.safetensors", "model/config.json", "model/tokenizer"} <= artifacts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "config")} == {"config/resolved.yaml"}


def _next_step_loss(cfg, ckpt: Path) -> float:
    """The loss of the step right after ``ckpt``, computed by resuming a 1-step-longer run."""
    from lightning.pytorch.callbacks import Callback

    seen: list[float] = []

    class Grab(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append(float(outputs["loss"]))

    import radfm.train.train as tr

    original = tr.checkpoint_callbacks
    tr.checkpoint_callbacks = lambda c, d: [*original(c, d), Grab()]
    try:
        with open_dict(cfg):
            cfg.ckpt_path = str(ckpt) if ckpt else None
        train(cfg)
    finally:
        tr.checkpoint_callbacks = original
    return seen


def test_resume_gives_the_same_next_step_loss(make_cfg, tmp_path):
    straight = make_cfg("trainer.max_steps=6", "logger=none", "run_name=straight")
    losses = _next_step_loss(straight, None)
    ckpt = Path(straight.paths.runs_dir) / "straight" / "checkpoints" / "step-step=4.ckpt"
    assert ckpt.exists(), sorted(p.name for p in ckpt.parent.iterdir())
    resumed = make_cfg("trainer.max_steps=6", "logger=none", "run_name=resumed")
    after = _next_step_loss(resumed, ckpt)
    assert len(after) == 2
    assert after[0] == pytest.approx(losses[4], rel=1e-5, abs=1e-6)
    state = torch.load(ckpt, weights_only=False)
    assert state["global_step"] == 4 and state["optimizer_states"] and state["lr_schedulers"]


def test_lora_and_freezing_train_only_what_they_say(make_cfg):
    from radfm.model.checkpoint import load_pretrained

    cfg = make_cfg("lora={r: 4, alpha: 8, dropout: 0.0}", "freeze=vision", "logger=none", "trainer.max_steps=3",
                   "run_name=lora")
    metrics = train(cfg)
    assert metrics["global_step"] == 3
    model, _ = load_pretrained(Path(cfg.paths.runs_dir) / "lora" / "model")
    assert not any("lora_" in name for name, _ in model.named_parameters())
    # The preprocessing travels with the weights: evaluation and serving read it back.
    from radfm.data.transforms import checkpoint_transform

    saved = checkpoint_transform(Path(cfg.paths.runs_dir) / "lora" / "model", 0)
    assert saved.standardize is bool(cfg.data.transform.get("standardize", False)) and saved.image_size == 64


def test_lora_module_counts():
    from radfm.model import presets
    from radfm.model.tokenizer import RadFMTokenizer
    from radfm.train.module import RadFMLitModule

    tok = RadFMTokenizer.train_bpe(["is there a nodule", "yes", "no"], 300)
    full = RadFMLitModule(presets.tiny(), tok)
    lora = RadFMLitModule(presets.tiny(), tok, freeze="adapter_only", lora={"r": 4})
    c_full, c_lora = full.param_counts, lora.param_counts
    assert c_full["trainable"] == c_full["total"]
    lm_lora = sum(p.numel() for n, p in lora.model.lm.named_parameters() if p.requires_grad)
    assert 0 < lm_lora < 0.05 * c_full["lm"]
    assert c_lora["trainable"] == c_lora["resampler"] + lm_lora


def test_sample_loss_reduction_counts_every_answer_once(tiny_tokenizer):
    """token: mean over all answer tokens (a long answer dominates); sample: mean of per-answer means."""
    import torch
    import torch.nn.functional as F

    from radfm.model import presets
    from radfm.train.module import RadFMLitModule
    from radfm.train.objectives import AnswerLoss

    tok = tiny_tokenizer
    rows = [tok.format_prompt("Is there a nodule?", "No.", []),
            tok.format_prompt("Describe it.", "Yes, a left nodule. Yes, a left nodule. Yes, a left nodule.", [])]
    batch = {**tok.pad(rows), "images": [], "tasks": ["diagnosis", "report"], "ids": ["a", "b"]}
    by = {}
    for reduction in ("token", "sample"):
        module = RadFMLitModule(presets.tiny(), tok, seed=0, objectives=[AnswerLoss(reduction=reduction)]).eval()
        module.log = lambda *args, **kwargs: None  # no Trainer attached: the loss is what is under test
        with torch.no_grad():
            by[reduction] = float(module._step(batch, "train"))
            assert module.encode(batch) is None  # no images
            logits = module.model(batch["input_ids"], batch["attention_mask"])["logits"]
    target = batch["labels"][:, 1:]
    per_token = F.cross_entropy(logits[:, :-1].transpose(1, 2), target, ignore_index=-100, reduction="none")
    mask = (target != -100).float()
    per_row = (per_token * mask).sum(1) / mask.sum(1)
    assert by["sample"] == pytest.approx(float(per_row.mean()), rel=1e-5)
    assert by["token"] == pytest.approx(float((per_token * mask).sum() / mask.sum()), rel=1e-5)
    assert mask[0].sum() < mask[1].sum() and by["sample"] != pytest.approx(by["token"])
    with pytest.raises(ValueError, match="reduction must be one of"):
        RadFMLitModule(presets.tiny(), tok, objectives=[AnswerLoss(reduction="mean")])


def test_lr_scale_groups_parameters_and_sets_base_rates(tiny_tokenizer):
    """lr_scale: the longest matching name prefix sets a parameter's multiplier; the scheduler starts from it."""
    import functools

    from radfm.model import presets
    from radfm.train.module import RadFMLitModule
    from radfm.train.schedule import warmup_cosine

    module = RadFMLitModule(presets.tiny(), tiny_tokenizer, lr_scale={"vision": 0.1, "vision.projection": 0.5},
                            optimizer=functools.partial(torch.optim.AdamW, lr=1e-3),
                            scheduler=functools.partial(warmup_cosine, warmup_steps=0))
    opt = module.configure_optimizers()["optimizer"]
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    for name, p in module.model.named_parameters():
        want = 5e-4 if name.startswith("vision.projection.") else 1e-4 if name.startswith("vision.") else 1e-3
        assert lr_of[id(p)] == pytest.approx(want), name
    assert len(lr_of) == sum(1 for _ in module.model.parameters())  # every parameter in exactly one group
    assert sorted(g["initial_lr"] for g in opt.param_groups) == pytest.approx([1e-4, 5e-4, 1e-3])
    with pytest.raises(ValueError, match="matches no trainable parameter"):
        RadFMLitModule(presets.tiny(), tiny_tokenizer, lr_scale={"vison": 0.1}).param_groups()
    with pytest.raises(ValueError, match="must be >= 0"):
        RadFMLitModule(presets.tiny(), tiny_tokenizer, lr_scale={"vision": -1})


def test_turn_loss_reduction_counts_every_packed_answer_once(tiny_tokenizer):
    """turn: each answer of a packed row counts once (a one-word answer weighs what a long one does); on
    unpacked rows it equals the sample mean."""
    import torch

    from radfm.train.objectives.answer import turn_mean

    tok = tiny_tokenizer
    packed = tok.format_turns([("Is there a nodule?", "no"), ("Describe it.", "A left nodule. " * 5)], 0)
    single = tok.format_prompt("Modality?", "CT", [])
    batch = tok.pad([packed, single])
    target = batch["labels"][:, 1:]
    mask = (target != -100).float()
    per_token = torch.rand(target.shape) * mask
    seg = batch["segment_ids"][:, 1:]
    means = []
    for row, turns in ((0, (1, 2)), (1, (1,))):
        for k in turns:
            m = mask[row] * (seg[row] == k)
            assert m.sum() > 0
            means.append(float((per_token[row] * m).sum() / m.sum()))
    assert float(turn_mean(per_token, mask, batch["segment_ids"])) == pytest.approx(sum(means) / 3, rel=1e-5)
    # Without segments every row is one answer: the sample mean.
    rows = (per_token * mask).sum(1) / mask.sum(1)
    assert float(turn_mean(per_token, mask, None)) == pytest.approx(float(rows.mean()), rel=1e-5)
    assert float(turn_mean(per_token, mask * 0, batch["segment_ids"])) == 0.0


def test_depth_buckets_that_do_not_cut_into_patch_slabs_are_refused_before_a_run(make_cfg):
    """A 3D scan resampled to depth 12 cannot be cut into 8-slice slabs: the config is refused up front, with
    the buckets that would fit; the demo's own buckets pass."""
    from radfm.train.builder import build_data_config

    bad = make_cfg("model.vision.patch_depth=8", "model.vision.min_depth=8")
    with pytest.raises(ValueError, match=r"depth_buckets \[4, 12, 20.*patch_depth = 8.*\[8, 16, 24"):
        build_data_config(bad)
    assert build_data_config(make_cfg("experiment=demo_tiny")).transform.depth_buckets == (16, 32, 48, 64)


def test_min_depth_must_be_a_multiple_of_patch_depth():
    from radfm.model.config import VisionConfig

    with pytest.raises(ValueError, match="min_depth = 4 must be a positive multiple of vision.patch_depth = 8"):
        VisionConfig(patch_depth=8, min_depth=4)
    assert VisionConfig(patch_depth=8, min_depth=8).min_depth == 8
