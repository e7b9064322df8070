"""Model answers for RadBench: closed questions ranked by likelihood, open ones generated (batched, KV cache)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from radfm.data.datamodule import RadFMDataset
from radfm.data.manifest import Sample
from radfm.model.multimodal import RadFMModel
from radfm.model.tokenizer import RadFMTokenizer


@dataclass
class Prediction:
    """One sample's answer; ``probs`` holds the candidate distribution for closed questions."""

    text: str
    probs: dict[str, float] = field(default_factory=dict)


def _images(ds: RadFMDataset, sample: Sample, order: Sequence[int], ablate: bool) -> list[torch.Tensor]:
    imgs = ds.load_images(sample)
    imgs = [imgs[k] for k in order]
    # The image-ablated baseline: same model, same text, every image replaced by zeros.
    return [torch.zeros_like(x) for x in imgs] if ablate else imgs


@torch.no_grad()
def predict(model: RadFMModel, tokenizer: RadFMTokenizer, samples: Sequence[Sample], ds: RadFMDataset,
            batch_size: int = 16, max_new_tokens: int = 128, ablate: bool = False) -> list[Prediction]:
    """Answer every sample: ``choices`` → rank by log p(answer | prompt, images); otherwise greedy generation."""
    model.eval()
    out: list[Prediction | None] = [None] * len(samples)
    positions = [[ref.position for ref in s.images] for s in samples]

    # Closed questions: one row per (sample, candidate); the softmax over candidates gives probabilities.
    rows: list[tuple[int, str]] = [(i, c) for i, s in enumerate(samples) if s.choices for c in s.choices]
    scores: dict[tuple[int, str], float] = {}
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        encs, images = [], []
        for i, cand in chunk:
            enc = tokenizer.format_prompt(samples[i].question, cand, positions[i])
            encs.append(enc)
            images += _images(ds, samples[i], enc.image_order, ablate)
        batch = tokenizer.pad(encs, side="right")
        logp = model.sequence_logprob(batch["input_ids"], batch["attention_mask"], batch["labels"], images or None)
        for (i, cand), value in zip(chunk, logp.tolist()):
            scores[(i, cand)] = value
    for i, s in enumerate(samples):
        if s.choices:
            logits = torch.tensor([scores[(i, c)] for c in s.choices])
            probs = torch.softmax(logits, dim=0).tolist()
            best = s.choices[int(torch.argmax(logits))]
            out[i] = Prediction(best, dict(zip(s.choices, probs)))

    open_idx = [i for i, s in enumerate(samples) if not s.choices]
    for start in range(0, len(open_idx), batch_size):
        chunk = open_idx[start:start + batch_size]
        encs, images = [], []
        for i in chunk:
            enc = tokenizer.format_prompt(samples[i].question, None, positions[i])
            encs.append(enc)
            images += _images(ds, samples[i], enc.image_order, ablate)
        batch = tokenizer.pad(encs, side="left")
        new = model.generate(batch["input_ids"], batch["attention_mask"], images or None,
                             max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_id,
                             pad_token_id=tokenizer.pad_id)
        for i, row in zip(chunk, new.tolist()):
            out[i] = Prediction(tokenizer.decode(row))
    return [p for p in out if p is not None]
