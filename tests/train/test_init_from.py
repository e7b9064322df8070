"""``init_from``: a run starts from a saved model's tokenizer and weights; a model of another shape is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from radfm.model.tokenizer import RadFMTokenizer
from radfm.train.builder import build_model_config, build_module
from radfm.train.init_from import initial_model
from radfm.train.train import train


def test_a_run_starts_from_a_saved_model_and_refuses_another_shape(make_cfg, tmp_path):
    first = make_cfg("run_name=first")
    train(first)
    src = Path(first.paths.runs_dir) / "first" / "model"

    cfg = make_cfg(f"init_from={src}", "run_name=second", "trainer.max_steps=2", "seed=7")
    model_cfg = build_model_config(cfg)
    tokenizer = RadFMTokenizer.load(src / "tokenizer", model_cfg.num_image_tokens)
    state = build_module(cfg, model_cfg, tokenizer).model.state_dict()
    saved = load_file(str(src / "model.safetensors"))
    assert saved and all(torch.equal(state[k], v) for k, v in saved.items())  # not seed 7's fresh weights

    train(cfg)
    second = Path(cfg.paths.runs_dir) / "second"
    assert (second / "tokenizer" / "tokenizer.json").read_bytes() == (src / "tokenizer" / "tokenizer.json").read_bytes()

    small = build_model_config(make_cfg("model=small"))
    other = build_model_config(make_cfg("model.lm.intermediate_size=512"))  # same width and vocabulary
    with pytest.raises(ValueError, match=r"does not fit model=tiny: lm\..*mlp.* has shape \[.*688.*\], the model"):
        initial_model(src, other, tokenizer)
    with pytest.raises(ValueError, match=r"init_from=.* holds a 'tiny' model .* set model= to its preset"):
        initial_model(src, small, tokenizer)
    with pytest.raises(FileNotFoundError, match="model.safetensors is missing"):
        initial_model(tmp_path, model_cfg, tokenizer)


def test_a_lazy_rank_builds_no_weights_unless_a_stage_trains_before_sharding(make_cfg, tmp_path):
    """``build_run(lazy=True)`` (a sharded run's rank > 0): the model's parameters on the meta device and
    ``init_from`` not read; with a vision warm-up that trains in the fit's setup, the whole model as usual."""
    from radfm.model import factory
    from radfm.train.builder import build_run
    from radfm.train.data_prep import ensure_dataset

    cfg = make_cfg("init_from=/nowhere/not-read", "objective=[answer,label_head]")
    ensure_dataset(cfg.data)  # label_head reads the training rows' labels
    model_cfg = build_model_config(cfg)
    tokenizer = factory.build_tokenizer(model_cfg, texts=["Is there a nodule?", "Yes."])
    run = build_run(cfg, tokenizer, setup=False, lazy=True)
    assert run.module.built_lazily
    assert all(p.is_meta for p in run.module.model.parameters())
    assert not any(b.is_meta for b in run.module.model.buffers())  # built by the modules' own code
    assert run.module.param_counts["total"] > 0

    warm = make_cfg("objective=[answer,label_head]", "callbacks=[default,vision_warmup]",
                    "callbacks.vision_warmup.steps=2")
    run = build_run(warm, tokenizer, setup=False, lazy=True)
    assert not run.module.built_lazily and not any(p.is_meta for p in run.module.model.parameters())
