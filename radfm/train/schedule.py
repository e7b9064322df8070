"""Learning-rate schedule: linear warm-up then cosine decay (used as a Hydra ``_partial_``)."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine(optimizer: Optimizer, total_steps: int, warmup_steps: int = 0,
                  min_lr_ratio: float = 0.1) -> LambdaLR:
    """lr × min(step/warmup, 1) then a cosine from 1 down to ``min_lr_ratio`` at ``total_steps``."""
    total = max(int(total_steps), 1)
    warm = max(int(warmup_steps), 0)

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        progress = min(max(step - warm, 0) / max(total - warm, 1), 1.0)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)
