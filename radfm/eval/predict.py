"""Model answers for RadBench: closed questions ranked by likelihood, open ones generated (batched, KV cache)."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from radfm.data.datamodule import RadFMDataset
from radfm.data.families import yes_index
from radfm.data.manifest import Sample
from radfm.model.multimodal import RadFMModel
from radfm.model.tokenizer import RadFMTokenizer
from radfm.progress import ProgressReporter


@dataclass
class Prediction:
    """One sample's answer; for closed questions ``probs`` holds the distribution over the candidates and
    ``logprobs`` each candidate's log p(answer | prompt, images) (kept raw: a ratio of two probabilities that
    underflow is still a finite difference of log-probabilities)."""

    text: str
    probs: dict[str, float] = field(default_factory=dict)
    logprobs: dict[str, float] = field(default_factory=dict)


class _ImageFeatures:
    """Each sample's images loaded and encoded once (``N_i×K×hidden``, in the sample's image order), shared by
    every row that shows them: a closed question's candidates all reuse one encoding. In the image-ablated
    system every image is zeros, so its features depend on its shape alone and are encoded once per shape."""

    def __init__(self, model: RadFMModel, ds: RadFMDataset, samples: Sequence[Sample], ablate: bool) -> None:
        self.model, self.ds, self.samples, self.ablate = model, ds, samples, ablate
        self.by_sample: dict[int, torch.Tensor | None] = {}
        self.zeros: dict[tuple[int, ...], torch.Tensor] = {}

    def load(self, indices: Sequence[int]) -> None:
        """Encode the samples of ``indices`` not held yet, all in one ``encode_images`` call."""
        todo = [i for i in dict.fromkeys(indices) if i not in self.by_sample]
        loaded = {i: self.ds.load_images(self.samples[i]) if self.samples[i].images else [] for i in todo}
        if self.ablate:
            for i, imgs in loaded.items():
                for x in imgs:
                    shape = tuple(x.shape)
                    if shape not in self.zeros:
                        self.zeros[shape] = self.model.encode_images([torch.zeros_like(x)])[0]
                self.by_sample[i] = torch.stack([self.zeros[tuple(x.shape)] for x in imgs]) if imgs else None
            return
        flat = [x for i in todo for x in loaded[i]]
        feats = self.model.encode_images(flat) if flat else None
        at = 0
        for i in todo:
            n = len(loaded[i])
            self.by_sample[i] = feats[at:at + n] if n and feats is not None else None
            at += n

    def rows(self, items: Sequence[tuple[int, Sequence[int]]]) -> torch.Tensor | None:
        """``(sample index, image order)`` per batch row → the batch's features in block order, or None."""
        parts = []
        for i, order in items:
            feats = self.by_sample[i]
            if feats is not None and len(order):
                parts.append(feats[list(order)])
        return torch.cat(parts) if parts else None

    def drop(self, indices: Sequence[int]) -> None:
        for i in indices:
            self.by_sample.pop(i, None)


@torch.no_grad()
def predict(model: RadFMModel, tokenizer: RadFMTokenizer, samples: Sequence[Sample], ds: RadFMDataset,
            batch_size: int = 16, max_new_tokens: int = 128, ablate: bool = False,
            progress: str | None = None, num_beams: int = 1) -> list[Prediction]:
    """Answer every sample: ``choices`` → rank by log p(answer | prompt, images) (yes/no moved by the model's
    ``yes_no_offset``, :mod:`radfm.eval.calibration`); otherwise greedy generation, or beam search with
    ``num_beams`` > 1.

    Each sample's images are encoded once, however many candidate rows score them. ``progress`` names the work
    in progress lines (:mod:`radfm.progress`; rows = candidate rows + open questions); None reports nothing.
    """
    model.eval()
    out: list[Prediction | None] = [None] * len(samples)
    positions = [[ref.position for ref in s.images] for s in samples]
    features = _ImageFeatures(model, ds, samples, ablate)

    # Closed questions: one row per (sample, candidate); the softmax over candidates gives probabilities.
    rows: list[tuple[int, str]] = [(i, c) for i, s in enumerate(samples) if s.choices for c in s.choices]
    last_row = {i: r for r, (i, _) in enumerate(rows)}
    scores: dict[tuple[int, str], float] = {}
    open_idx = [i for i, s in enumerate(samples) if not s.choices]
    reporter = ProgressReporter(progress, len(rows) + len(open_idx), unit="row", item="rows") if progress else None
    with reporter or nullcontext():
        _score_closed(model, tokenizer, samples, rows, last_row, positions, features, scores, batch_size, reporter)
        _generate_open(model, tokenizer, samples, open_idx, positions, features, out, batch_size, max_new_tokens,
                       reporter, num_beams)
    # The model's yes/no offset (radfm.eval.calibration) moves the yes/no decision; logprobs stay raw.
    offset = float(getattr(model, "yes_no_offset", 0.0) or 0.0)
    for i, s in enumerate(samples):
        if s.choices:
            logits = torch.tensor([scores[(i, c)] for c in s.choices])
            decided = logits.clone()
            yes = yes_index(s.choices) if offset else None
            if yes is not None:
                decided[yes] += offset
            probs = torch.softmax(decided, dim=0).tolist()
            best = s.choices[int(torch.argmax(decided))]
            out[i] = Prediction(best, dict(zip(s.choices, probs)), dict(zip(s.choices, logits.tolist())))
    return [p for p in out if p is not None]


def _score_closed(model: RadFMModel, tokenizer: RadFMTokenizer, samples: Sequence[Sample],
                  rows: list[tuple[int, str]], last_row: dict[int, int], positions: list[list[int | None]],
                  features: _ImageFeatures, scores: dict[tuple[int, str], float], batch_size: int,
                  reporter: ProgressReporter | None) -> None:
    """log p(candidate | prompt, images) of every closed row into ``scores``."""
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        encs = [tokenizer.format_prompt(samples[i].question, cand, positions[i]) for i, cand in chunk]
        features.load([i for i, _ in chunk])
        feats = features.rows([(i, enc.image_order) for (i, _), enc in zip(chunk, encs)])
        batch = tokenizer.pad(encs, side="right")
        logp = model.sequence_logprob(batch["input_ids"], batch["attention_mask"], batch["labels"],
                                      image_features=feats)
        for (i, cand), value in zip(chunk, logp.tolist()):
            scores[(i, cand)] = value
        # A sample whose candidates are all scored never comes back: free its features.
        features.drop([i for i, _ in chunk if last_row[i] < start + batch_size])
        if reporter is not None:
            reporter.update(advance=len(chunk))


def _generate_open(model: RadFMModel, tokenizer: RadFMTokenizer, samples: Sequence[Sample], open_idx: list[int],
                   positions: list[list[int | None]], features: _ImageFeatures, out: list[Prediction | None],
                   batch_size: int, max_new_tokens: int, reporter: ProgressReporter | None,
                   num_beams: int = 1) -> None:
    """Greedy (or ``num_beams`` beam-search) answers of the open questions into ``out``."""
    for start in range(0, len(open_idx), batch_size):
        chunk = open_idx[start:start + batch_size]
        encs = [tokenizer.format_prompt(samples[i].question, None, positions[i]) for i in chunk]
        features.load(chunk)
        feats = features.rows([(i, enc.image_order) for i, enc in zip(chunk, encs)])
        features.drop(chunk)
        batch = tokenizer.pad(encs, side="left")
        new = model.generate(batch["input_ids"], batch["attention_mask"], max_new_tokens=max_new_tokens,
                             eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id, image_features=feats,
                             num_beams=num_beams)
        for i, row in zip(chunk, new.tolist()):
            out[i] = Prediction(tokenizer.decode(row))
        if reporter is not None:
            reporter.update(advance=len(chunk))
