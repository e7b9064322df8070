"""``init_from``: start a run from a saved model (``radfm import-checkpoint --out``, or a run's ``model/``).

The run takes that directory's tokenizer and weights; the config's model preset must have the same shapes
(e.g. ``model=base`` for the released RadFM). LoRA and freezing apply on top, as for a fresh model.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from radfm.model import factory
from radfm.model.checkpoint import CONFIG, TOKENIZER, WEIGHTS, named_weights_errors
from radfm.model.config import RadFMConfig
from radfm.model.multimodal import RadFMModel
from radfm.model.tokenizer import RadFMTokenizer


def checked_dir(path: str | Path) -> Path:
    """The directory, or one line saying which of its parts is missing."""
    directory = Path(str(path)).expanduser()
    for name in (WEIGHTS, CONFIG, TOKENIZER):
        if not (directory / name).exists():
            raise FileNotFoundError(f"init_from={directory}: {name} is missing (expected a directory written by "
                                    "radfm import-checkpoint --out or a run's model/)")
    return directory


def copy_tokenizer(path: str | Path, run_dir: Path) -> None:
    """The saved model's tokenizer becomes the run's (workers and resumes load ``run_dir/tokenizer``)."""
    target = run_dir / TOKENIZER
    if not (target / "tokenizer.json").exists():
        shutil.copytree(checked_dir(path) / TOKENIZER, target, dirs_exist_ok=True)


def initial_model(path: str | Path, model_cfg: RadFMConfig, tokenizer: RadFMTokenizer) -> RadFMModel:
    """A model of ``model_cfg`` holding the weights saved under ``path`` (every weight, each of its shape)."""
    from safetensors import safe_open

    directory = checked_dir(path)
    saved = RadFMConfig.load(directory / CONFIG)
    if saved.lm.vocab_size != model_cfg.lm.vocab_size or saved.lm.hidden_size != model_cfg.lm.hidden_size:
        raise ValueError(f"init_from={directory} holds a {saved.name!r} model (LM {saved.lm.hidden_size} wide, "
                         f"{saved.lm.vocab_size} tokens) and the config asks for {model_cfg.name!r} "
                         f"({model_cfg.lm.hidden_size}, {model_cfg.lm.vocab_size}): set model= to its preset")
    model = factory.build_model(model_cfg, tokenizer)
    own = model.state_dict()  # views of the weights: each saved tensor is copied in place, one at a time,
    # so a 13B start holds one model in memory, not the model and a second copy of every weight
    with named_weights_errors(directory / WEIGHTS), safe_open(str(directory / WEIGHTS), framework="pt") as f:
        keys = set(f.keys())  # noqa: SIM118 (safe_open is not iterable)
        missing, unexpected = sorted(own.keys() - keys), sorted(keys - own.keys())
        if missing or unexpected:
            raise ValueError(f"init_from={directory} does not fit model={model_cfg.name}: "
                             f"{len(missing)} weights missing (e.g. {missing[:2]}), "
                             f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})")
        for key in sorted(keys):
            shape = tuple(f.get_slice(key).get_shape())
            if shape != tuple(own[key].shape):
                raise ValueError(f"init_from={directory} does not fit model={model_cfg.name}: {key} has shape "
                                 f"{list(shape)}, the model's is {list(own[key].shape)}")
            with torch.no_grad():
                own[key].copy_(f.get_tensor(key))
    model.yes_no_offset = 0.0  # a new fit fits its own offset
    return model
