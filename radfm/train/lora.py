"""LoRA on the language model (peft), and merging it back for export."""

from __future__ import annotations

import copy
from typing import Any

from radfm.model.multimodal import RadFMModel


def apply_lora(model: RadFMModel, r: int = 8, alpha: int = 16, dropout: float = 0.05,
               target_modules: list[str] | None = None) -> None:
    """Replace the LM with a PEFT LoRA-wrapped LM (the vision side stays as the freeze policy says)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none",
                        target_modules=target_modules or ["q_proj", "k_proj", "v_proj", "o_proj"])
    model.lm = get_peft_model(model.lm, config)


def merged_for_export(model: Any, in_place: bool = False) -> Any:
    """A LoRA-wrapped LM is merged into plain weights so the checkpoint loads without peft (into a copy, unless
    ``in_place``: a model built only to be saved need not be copied again)."""
    if hasattr(model.lm, "merge_and_unload"):
        model = model if in_place else copy.deepcopy(model)
        model.lm = model.lm.merge_and_unload()
    return model
