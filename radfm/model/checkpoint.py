"""Checkpoint directory: safetensors weights + the typed config + the tokenizer; rebuilt exactly."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_model

import radfm
from radfm.model.config import RadFMConfig
from radfm.model.factory import build_model
from radfm.model.multimodal import RadFMModel
from radfm.model.tokenizer import RadFMTokenizer

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TOKENIZER = "tokenizer"
META = "radfm.json"


class CorruptWeightsError(ValueError):
    """A safetensors file that cannot be parsed: cut short (an interrupted copy or download) or damaged."""


@contextmanager
def named_weights_errors(path: str | Path) -> Iterator[None]:
    """Turn safetensors' errors inside the block into one line naming the file.

    Why: safetensors says only "Error while deserializing header: incomplete metadata, file not fully covered",
    and a run that loads several checkpoints (eval, registry, promotion) then leaves the user to guess which.
    """
    from safetensors import SafetensorError

    try:
        yield
    except SafetensorError as exc:
        size = Path(path).stat().st_size if Path(path).exists() else 0
        raise CorruptWeightsError(f"weights file {path} ({size:,} bytes) is truncated or corrupt ({exc}); "
                                  "copy or download it again, or save the checkpoint again") from None


def save_pretrained(model: RadFMModel, tokenizer: RadFMTokenizer, directory: str | Path,
                    extra: dict | None = None) -> Path:
    """Write ``model.safetensors``, ``config.json``, ``tokenizer/`` and ``radfm.json`` into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_model(model, str(directory / WEIGHTS))
    model.cfg.save(directory / CONFIG)
    tokenizer.save(directory / TOKENIZER)
    meta = {"radfm_version": radfm.__version__, "tokenizer_size": len(tokenizer),
            "image_patch_id": model.image_patch_id,
            "yes_no_offset": float(getattr(model, "yes_no_offset", 0.0)), **(extra or {})}
    (directory / META).write_text(json.dumps(meta, indent=2))
    return directory


def load_pretrained(directory: str | Path, device: str | torch.device = "cpu") -> tuple[RadFMModel, RadFMTokenizer]:
    """Rebuild the model and tokenizer saved by :func:`save_pretrained`."""
    directory = Path(directory)
    for name in (WEIGHTS, CONFIG, TOKENIZER):
        if not (directory / name).exists():
            raise FileNotFoundError(f"{directory} is not a radfm checkpoint: {name} is missing")
    cfg = RadFMConfig.load(directory / CONFIG)
    tokenizer = RadFMTokenizer.load(directory / TOKENIZER, cfg.num_image_tokens)
    with named_weights_errors(directory / WEIGHTS), safe_open(str(directory / WEIGHTS), framework="pt") as f:
        key = next(k for k in f.keys() if k.endswith("embed_tokens.weight"))  # noqa: SIM118 (safe_open is not iterable)
        rows = f.get_slice(key).get_shape()[0]
    if len(tokenizer) > rows or rows != cfg.lm.vocab_size:
        raise ValueError(
            f"vocabulary mismatch in {directory}: the tokenizer has {len(tokenizer)} tokens, the config "
            f"says {cfg.lm.vocab_size} and the weights have {rows} embedding rows"
        )
    cfg.lm.path = None  # the weights below carry the LM; never reload it from elsewhere
    model = build_model(cfg, tokenizer)
    from safetensors.torch import load_model

    with named_weights_errors(directory / WEIGHTS):
        missing, unexpected = load_model(model, str(directory / WEIGHTS), strict=False, device=str(device))
    if missing or unexpected:
        raise ValueError(f"checkpoint {directory} does not match its config: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    meta = json.loads((directory / META).read_text()) if (directory / META).is_file() else {}
    model.yes_no_offset = float(meta.get("yes_no_offset") or 0.0)  # radfm.eval.calibration
    return model.to(device).eval(), tokenizer
