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
