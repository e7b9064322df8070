"""ResNet-18 for 28×28 grey images, as MedMNIST v2 trains it (3×3 stem, stride 1, no max-pool; He et al. 2016
blocks [2, 2, 2, 2] at 64-128-256-512 channels): the anchor that bench/real_data.py trains on the same images in
the same run. torchvision is not a dependency, so the ~40 lines are here."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                      if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.short(x))


class ResNet18(nn.Module):
    """``B×1×28×28`` → ``B×classes`` logits."""

    def __init__(self, in_channels: int = 1, classes: int = 2) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        layers, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(512, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.layers(self.stem(x)).mean(dim=(2, 3)))


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


def _scores(model: nn.Module, x: torch.Tensor, batch: int = 256) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)])
    return (logits[:, 1] - logits[:, 0]).numpy()


def train_resnet18(npz: dict[str, np.ndarray], epochs: int = 5, seed: int = 0, lr: float = 1e-3,
                   batch: int = 128) -> dict[str, Any]:
    """Train on ``train_images``/``train_labels`` (uint8 N×28×28, 0/1), keep the epoch of best val AUC, score the
    test split: ``{val_auc, test_auc, test_acc, epochs, best_epoch, seconds}`` (ACC at logit difference 0)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)

    def tensor(key: str) -> torch.Tensor:
        return torch.from_numpy(npz[key].astype(np.float32) / 255.0).unsqueeze(1)

    x_tr, x_va, x_te = tensor("train_images"), tensor("val_images"), tensor("test_images")
    y_tr = torch.from_numpy(npz["train_labels"].reshape(-1).astype(np.int64))
    y_va, y_te = npz["val_labels"].reshape(-1), npz["test_labels"].reshape(-1)
    model = ResNet18()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    best: dict[str, Any] = {"val_auc": -1.0}
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.from_numpy(rng.permutation(len(x_tr)))
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            loss = nn.functional.cross_entropy(model(x_tr[idx]), y_tr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        val_auc = _auc(_scores(model, x_va), y_va)
        if val_auc > best["val_auc"]:
            test = _scores(model, x_te)
            best = {"val_auc": val_auc, "test_auc": _auc(test, y_te),
                    "test_acc": float(((test > 0).astype(int) == y_te).mean()), "best_epoch": epoch + 1}
    return {**best, "epochs": epochs, "seconds": time.perf_counter() - t0}
