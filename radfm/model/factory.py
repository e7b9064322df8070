"""Factory: owns the tokenizer's special tokens, builds the LM and the composed model, freezing policies."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from radfm.model.config import RadFMConfig
from radfm.model.multimodal import RadFMModel
from radfm.model.tokenizer import RadFMTokenizer
from radfm.terms import load_terms

log = logging.getLogger(__name__)

RESOURCES = Path(__file__).resolve().parent.parent / "resources"
FREEZE_POLICIES = ("none", "vision", "lm", "adapter_only")


def default_corpus() -> list[str]:
    """Radiology text shipped with the package: what a tiny tokenizer is trained on by default."""
    lines = (RESOURCES / "radiology_corpus.txt").read_text().splitlines()
    return [ln for ln in lines if ln and not ln.startswith("#")] + load_terms()


def build_tokenizer(cfg: RadFMConfig, texts: Iterable[str] | None = None) -> RadFMTokenizer:
    """Train a BPE (``kind: bpe``) on ``texts`` + the shipped corpus, or load a local directory."""
    k = cfg.num_image_tokens
    if cfg.tokenizer.kind == "local" or cfg.tokenizer.path:
        if not cfg.tokenizer.path:
            raise ValueError(
                f"model preset {cfg.name!r} needs a local tokenizer directory: set model.tokenizer.path "
                "(e.g. a LLaMA tokenizer folder); radfm never downloads one"
            )
        return RadFMTokenizer.from_local(cfg.tokenizer.path, k)
    if cfg.tokenizer.kind != "bpe":
        raise ValueError(f"unknown tokenizer kind {cfg.tokenizer.kind!r} (use 'bpe' or 'local')")
    corpus = default_corpus() + list(texts or [])
    return RadFMTokenizer.train_bpe(corpus, min(cfg.tokenizer.vocab_size, cfg.lm.vocab_size), k)


def build_lm(cfg: RadFMConfig) -> nn.Module:
    """A LLaMA causal LM from ``cfg.lm`` (random init), or loaded from the local ``cfg.lm.path``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    lm_cfg = cfg.lm
    if lm_cfg.path:
        from transformers import AutoModelForCausalLM

        if not Path(lm_cfg.path).is_dir():
            raise FileNotFoundError(f"language model directory {lm_cfg.path} does not exist (no downloads)")
        return AutoModelForCausalLM.from_pretrained(lm_cfg.path, local_files_only=True)
    config = LlamaConfig(
        vocab_size=lm_cfg.vocab_size,
        hidden_size=lm_cfg.hidden_size,
        intermediate_size=lm_cfg.intermediate_size,
        num_hidden_layers=lm_cfg.layers,
        num_attention_heads=lm_cfg.heads,
        num_key_value_heads=lm_cfg.kv_heads or lm_cfg.heads,
        max_position_embeddings=lm_cfg.max_position_embeddings,
        rms_norm_eps=lm_cfg.rms_norm_eps,
        rope_theta=lm_cfg.rope_theta,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(config)


def build_model(cfg: RadFMConfig, tokenizer: RadFMTokenizer | None = None) -> RadFMModel:
    """Compose ViT + resampler + LM. Without a tokenizer (shape checks, meta device) the image tokens are
    assumed to be the last three rows of the vocabulary, as the base preset's LLaMA + 3 layout has them."""
    lm = build_lm(cfg)
    vocab_rows = lm.get_input_embeddings().weight.shape[0]
    if tokenizer is not None:
        if len(tokenizer) > vocab_rows:
            if cfg.lm.path:
                lm.resize_token_embeddings(len(tokenizer))
                cfg.lm.vocab_size = len(tokenizer)
            else:
                raise ValueError(
                    f"the tokenizer has {len(tokenizer)} tokens but the LM vocabulary has {vocab_rows} rows: "
                    "raise model.lm.vocab_size or use a smaller tokenizer"
                )
        patch_id, suppress = tokenizer.image_patch_id, tokenizer.image_token_ids
        extra = list(range(len(tokenizer), vocab_rows))  # unused padding rows are never generated
        suppress = suppress + extra
    else:
        patch_id, suppress = vocab_rows - 1, [vocab_rows - 3, vocab_rows - 2, vocab_rows - 1]
    model = RadFMModel(cfg, lm, image_patch_id=patch_id, suppress_ids=suppress)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return model


def create(cfg: RadFMConfig, texts: Iterable[str] | None = None) -> tuple[RadFMModel, RadFMTokenizer]:
    """Tokenizer + model, ready to train."""
    tokenizer = build_tokenizer(cfg, texts)
    model = build_model(cfg, tokenizer)
    counts = count_parameters(model)
    if counts["trainable"] == 0:
        raise RuntimeError(f"model {cfg.name!r} has no trainable parameters")
    log.info("built %s: %s", cfg.name, format_counts(counts))
    return model, tokenizer


def enable_gradient_checkpointing(model: RadFMModel) -> None:
    model.vision.encoder.gradient_checkpointing = True
    # transformers 5 renamed the switch (and its keyword); accept both so an older transformers still works.
    kwargs = {"use_reentrant": False}
    if hasattr(model.lm, "activation_checkpointing_enable"):
        model.lm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    elif hasattr(model.lm, "gradient_checkpointing_enable"):
        model.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def count_parameters(model: RadFMModel) -> dict[str, int]:
    """Total and trainable parameter counts, overall and per part (vision encoder, resampler+projection, LM)."""

    def n(module: nn.Module, trainable: bool = False) -> int:
        return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable)

    return {
        "total": n(model),
        "trainable": n(model, True),
        "vision": n(model.vision.encoder),
        "resampler": n(model.vision.resampler) + n(model.vision.projection),
        "lm": n(model.lm),
    }


def format_counts(counts: dict[str, int]) -> str:
    def h(x: int) -> str:
        return f"{x / 1e9:.2f}B" if x >= 1e9 else f"{x / 1e6:.2f}M"

    return (f"{h(counts['total'])} parameters, {h(counts['trainable'])} trainable "
            f"(vision {h(counts['vision'])}, resampler+projection {h(counts['resampler'])}, LM {h(counts['lm'])})")


def freeze(model: RadFMModel, policy: str = "none", verbose: bool = True) -> dict[str, int]:
    """Apply a freezing policy and return (and print) the parameter counts.

    ``none``: train everything (RadFM). ``vision``: freeze the ViT. ``lm``: freeze the language model.
    ``adapter_only``: train only the resampler and projection (and LoRA adapters if any were added).
    """
    if policy not in FREEZE_POLICIES:
        raise ValueError(f"unknown freeze policy {policy!r}; choose one of {FREEZE_POLICIES}")
    for p in model.parameters():
        p.requires_grad_(True)
    frozen: list[nn.Module] = {
        "none": [],
        "vision": [model.vision.encoder],
        "lm": [model.lm],
        "adapter_only": [model.vision.encoder, model.lm],
    }[policy]
    for module in frozen:
        for name, p in module.named_parameters():
            if "lora_" not in name:
                p.requires_grad_(False)
    counts = count_parameters(model)
    if verbose:
        print(f"freeze={policy}: {format_counts(counts)}")
    return counts


def build_on_meta(cfg: RadFMConfig) -> RadFMModel:
    """Build without allocating memory (shape and parameter-count checks of the 13B preset)."""
    with torch.device("meta"):
        return build_model(cfg)
