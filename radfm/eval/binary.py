"""Binary (yes/no) diagnosis scored as a classifier: score = log p(yes) − log p(no) of the answer under the model.

``p(yes) / (p(yes) + p(no)) = sigmoid(score)``, so "probability ≥ 0.5" is "score ≥ 0". The public benchmarks
(MedMNIST) report ACC at 0.5 and AUC; a threshold chosen on the validation split (maximum accuracy) shows how
much of an ACC gap is calibration (a shifted prior) rather than ranking.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from radfm.data.datamodule import RadFMDataset
from radfm.data.manifest import Sample, read_manifest
from radfm.data.transforms import TransformConfig
from radfm.eval import metrics as M
from radfm.eval.predict import predict
from radfm.model.multimodal import RadFMModel
from radfm.model.tokenizer import RadFMTokenizer


@dataclass
class BinaryScores:
    """Per-sample ``score`` (log p(positive) − log p(negative)) and gold ``label`` (1 = positive answer)."""

    ids: list[str]
    score: np.ndarray
    label: np.ndarray

    def __post_init__(self) -> None:
        self.score = np.asarray(self.score, dtype=np.float64)
        self.label = np.asarray(self.label, dtype=np.int64)
        if not len(self.ids) == len(self.score) == len(self.label):
            raise ValueError(f"{len(self.ids)} ids, {len(self.score)} scores and {len(self.label)} labels")
        if set(np.unique(self.label).tolist()) - {0, 1}:
            raise ValueError("labels must be 0/1")
        if not np.isfinite(self.score).all():
            raise ValueError("scores must be finite")

    @property
    def prob(self) -> np.ndarray:
        """p(positive) among the two answers: ``sigmoid(score)``."""
        return 1.0 / (1.0 + np.exp(-self.score))


def binary_samples(samples: Sequence[Sample], positive: str = "yes", negative: str = "no") -> list[Sample]:
    """The samples whose closed choices are exactly ``{positive, negative}``; an error if there are none."""
    pair = {positive, negative}
    out = [s for s in samples if s.choices and set(s.choices) == pair]
    if not out:
        raise ValueError(f"no sample has the choices {sorted(pair)}: is this a yes/no manifest?")
    return out


# Test-time augmentation: fixed, deterministic in-plane views (rotation in degrees, shift in pixels along
# width and height, zoom factor > 1 = zoom in), mild versions of the training augmentation. View 0 is the image.
TTA_VIEWS: tuple[tuple[float, float, float, float], ...] = (
    (0.0, 0.0, 0.0, 1.0), (0.0, 1.0, 0.0, 1.0), (0.0, -1.0, 0.0, 1.0), (0.0, 0.0, 1.0, 1.0),
    (0.0, 0.0, -1.0, 1.0), (5.0, 0.0, 0.0, 1.0), (-5.0, 0.0, 0.0, 1.0), (0.0, 0.0, 0.0, 1.08),
)


def view_image(image: torch.Tensor, view: tuple[float, float, float, float]) -> torch.Tensor:
    """One deterministic view of a ``C×H×W×D`` image: rotate by ``degrees``, shift by ``(dx, dy)`` pixels,
    zoom by ``zoom`` (about the centre; borders repeat the edge pixels, as the training augmentation does).
    ``C×H×W×D`` in and out; the identity view returns the image itself."""
    degrees, dx, dy, zoom = view
    if degrees == 0 and dx == 0 and dy == 0 and zoom == 1:
        return image
    C, H, W, D = image.shape
    t = image.permute(3, 0, 1, 2).reshape(D * C, 1, H, W).float()
    a = math.radians(degrees)
    cos, sin = math.cos(a) / zoom, math.sin(a) / zoom
    # affine_grid maps output to input coordinates in [-1, 1]: a shift of +dx pixels samples from x − dx.
    theta = torch.tensor([[cos, -sin, -2.0 * dx / W], [sin, cos, -2.0 * dy / H]], dtype=t.dtype)
    grid = torch.nn.functional.affine_grid(theta.expand(D * C, 2, 3), list(t.shape), align_corners=False)
    y = torch.nn.functional.grid_sample(t, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return y.reshape(D, C, H, W).permute(1, 2, 3, 0).contiguous().to(image.dtype)


class _ViewDataset:
    """``ds`` whose ``load_images`` returns one fixed view of each image (what :func:`predict` reads)."""

    def __init__(self, ds: RadFMDataset, view: tuple[float, float, float, float]) -> None:
        self.ds, self.view = ds, view

    def load_images(self, sample: Sample, rng: Any = None) -> list[torch.Tensor]:
        return [view_image(x, self.view) for x in self.ds.load_images(sample, rng)]


@torch.no_grad()
def score_binary(model: RadFMModel, tokenizer: RadFMTokenizer, samples: Sequence[Sample], ds: RadFMDataset,
                 batch_size: int = 64, positive: str = "yes", negative: str = "no", tta: int = 1) -> BinaryScores:
    """Score every sample by ``log p(positive | question, images) − log p(negative | …)`` (answer tokens + EOS).

    Batched: each batch holds ``batch_size`` samples × 2 answers (:func:`radfm.eval.predict.predict`). The
    question is the row's own (evaluation never re-draws prompts) and images are preprocessed without
    augmentation. ``tta`` > 1 averages the score over the first ``tta`` of :data:`TTA_VIEWS` (view 0 is the
    image itself, so ``tta=1`` is plain scoring).
    """
    if not 1 <= tta <= len(TTA_VIEWS):
        raise ValueError(f"tta must be 1…{len(TTA_VIEWS)}, got {tta}")
    labels: list[int] = []
    for s in samples:
        if s.answer not in (positive, negative):
            raise ValueError(f"sample {s.id}: answer {s.answer!r} is neither {positive!r} nor {negative!r}")
        if not s.choices or set(s.choices) != {positive, negative}:
            raise ValueError(f"sample {s.id}: choices {s.choices} are not [{positive!r}, {negative!r}]")
        labels.append(int(s.answer == positive))
    # RadBench's own likelihood ranking (each image encoded once for both answers).
    total = np.zeros(len(samples))
    for view in TTA_VIEWS[:tta]:
        view_ds: Any = ds if view == TTA_VIEWS[0] else _ViewDataset(ds, view)
        preds = predict(model, tokenizer, samples, view_ds, batch_size=2 * batch_size)
        total += np.array([p.logprobs[positive] - p.logprobs[negative] for p in preds])
    return BinaryScores([s.id for s in samples], total / tta, np.array(labels))


def accuracy_at(scores: BinaryScores, threshold: float = 0.0) -> float:
    """Accuracy of "positive iff score ≥ threshold" (threshold 0 ⇔ p(positive) ≥ 0.5)."""
    if not len(scores.label):
        return M.Undefined("no samples")
    return float(np.mean((scores.score >= threshold).astype(np.int64) == scores.label))


def choose_threshold(scores: BinaryScores) -> float:
    """The score threshold of maximum accuracy on ``scores`` (the validation split).

    Candidates are the midpoints between consecutive distinct scores, plus one below the lowest and one above
    the highest (everything positive / negative). Among equally accurate ones the candidate nearest 0 (the
    uncalibrated 0.5 rule) wins, so a flat optimum does not drift to an extreme.
    """
    if not len(scores.score):
        raise ValueError("cannot choose a threshold on no samples")
    u = np.unique(scores.score)
    candidates = np.concatenate([[u[0] - 1.0], (u[:-1] + u[1:]) / 2, [u[-1] + 1.0]])
    # Accuracy at every candidate at once: sort scores, count positives/negatives below each candidate.
    order = np.argsort(scores.score, kind="stable")
    s, y = scores.score[order], scores.label[order]
    below = np.searchsorted(s, candidates, side="left")  # how many scores fall below each candidate
    neg_below = np.concatenate([[0], np.cumsum(1 - y)])[below]
    pos_at_or_above = int(y.sum()) - np.concatenate([[0], np.cumsum(y)])[below]
    acc = (neg_below + pos_at_or_above) / len(y)
    best = np.flatnonzero(acc == acc.max())
    return float(candidates[best[np.argmin(np.abs(candidates[best]))]])


def binary_metrics(val: BinaryScores, test: BinaryScores) -> dict[str, float]:
    """AUC, ACC at 0.5 and ACC at the validation-chosen threshold on ``test`` (+ the threshold and its
    probability, and the validation figures)."""
    threshold = choose_threshold(val)
    return {
        "auc": M.auc(test.score.tolist(), test.label.tolist()),
        "acc@0.5": accuracy_at(test, 0.0),
        "acc@val_threshold": accuracy_at(test, threshold),
        "threshold": threshold,
        "threshold_prob": 1.0 / (1.0 + math.exp(-threshold)),
        "val_auc": M.auc(val.score.tolist(), val.label.tolist()),
        "val_acc@0.5": accuracy_at(val, 0.0),
        "val_acc@val_threshold": accuracy_at(val, threshold),
        "n_test": float(len(test.label)),
        "n_test_positive": float(test.label.sum()),
    }


def evaluate_model_dir(model_dir: str | Path, manifest: str | Path, data_root: str | Path,
                       transform: TransformConfig, batch_size: int = 64, cache: Any = None,
                       limit: int | None = None, tta: int = 1) -> tuple[dict[str, float], dict[str, BinaryScores]]:
    """Load a saved model and score the val and test splits of a yes/no manifest; return metrics and scores.

    ``limit`` keeps the first N samples of each split (smoke tests); ``tta`` views per image (:func:`score_binary`).
    """
    from radfm.model.checkpoint import load_pretrained

    model, tokenizer = load_pretrained(model_dir)
    rows = binary_samples(read_manifest(manifest))
    scores: dict[str, BinaryScores] = {}
    for split in ("val", "test"):
        samples = [s for s in rows if s.split == split][:limit]
        if not samples:
            raise ValueError(f"the {split} split of {manifest} has no yes/no samples")
        ds = RadFMDataset(samples, data_root, tokenizer, transform, train=False, cache=cache)
        scores[split] = score_binary(model, tokenizer, samples, ds, batch_size, tta=tta)
    return binary_metrics(scores["val"], scores["test"]), scores
