"""Vision warm-up: label-head-only steps on the vision side before the joint fit.

Why: on the CPU the LM costs ~5× the vision tower per step (BENCHMARKS.md, "Main job"), and through the answer
loss alone the tiny ViT learns lesions slowly or not at all (BENCHMARKS.md, "Main job"). A few hundred steps
that run only the vision side (ViT → resampler → projection) and the training-only label head teach the image
tokens what the questions will ask, at a fraction of a joint step's cost; the joint fit then mostly has to
teach the LM to read them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from contextlib import nullcontext
from typing import Any

import torch

log = logging.getLogger(__name__)


def require_head(module: Any) -> None:
    """The warm-up trains through the label head: refuse a module without one."""
    if module.label_head is None:
        raise ValueError("vision_warmup.steps > 0 needs the label head: set label_head_weight > 0 (and a "
                         "data.label_source whose rows carry labels)")


def warm_up_factor(step: int, steps: int, ramp: int = 0) -> float:
    """The warm-up's learning-rate factor at ``step`` (0-based): ``(step + 1) / ramp`` during the ramp, then a
    linear decay from 1 to 0.1 at the last step. Why a ramp: a fresh head's first gradients are large and
    noisy, and full-rate AdamW steps on them can wash out what the features already hold."""
    if step < ramp:
        return (step + 1) / ramp
    return 1.0 - 0.9 * (step - ramp) / max(1, steps - ramp - 1)


def warm_up_vision(module: Any, batches: Iterable[dict[str, Any]], steps: int, lr: float,
                   weight_decay: float = 0.01, clip: float = 1.0, head_lr: float | None = None,
                   autocast_dtype: torch.dtype | None = None, ramp: int = 0,
                   encoder_lr: float | None = None) -> dict[str, float]:
    """Train ``module.model.vision`` and ``module.label_head`` on the label loss alone for ``steps`` steps.

    ``module`` is a :class:`radfm.train.module.RadFMLitModule` with a label head; ``batches`` an iterable of
    training batches (the train loader; passed over again, with ``set_epoch``, when shorter than ``steps``). The LM is not run and its
    weights do not change. With a patch head (``module.patch_head``) it trains beside the label head on the
    ViT's max-pooled patch tokens. AdamW at ``lr`` (the ViT at ``encoder_lr``, the heads at ``head_lr``; both
    default ``lr``), reached by a linear ramp over
    the first ``ramp`` steps, then a linear decay to 0.1 × ``lr``; its state is dropped after (the joint fit starts
    its own optimizer). ``autocast_dtype`` (e.g. ``torch.bfloat16``, what a ``bf16-mixed``
    fit uses) runs the forward under autocast on the parameters' device, as the fit will; the weights stay fp32.
    Returns the first and last label loss and the seconds spent.
    """
    if steps <= 0:
        return {"steps": 0.0, "seconds": 0.0}
    if ramp < 0:
        raise ValueError(f"vision warm-up ramp = {ramp} must be >= 0")
    require_head(module)
    vision = module.model.vision
    encoder = [p for p in vision.encoder.parameters() if p.requires_grad]
    rest = [p for n, p in vision.named_parameters() if p.requires_grad and not n.startswith("encoder.")]
    if not encoder and not rest:
        raise ValueError("vision_warmup.steps > 0 but no vision-side parameter is trainable (frozen): nothing to warm up")
    head = list(module.label_head.parameters())
    if getattr(module, "patch_head", None) is not None:
        head += list(module.patch_head.parameters())
    groups = [{"params": encoder, "lr": encoder_lr or lr}, {"params": rest, "lr": lr},
              {"params": head, "lr": head_lr or lr}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=weight_decay, betas=(0.9, 0.95))
    params = encoder + rest + head
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: warm_up_factor(i, steps, ramp))
    device = params[0].device.type
    was_training = module.training
    module.train()
    t0 = time.perf_counter()
    first = last = float("nan")
    done = 0
    epoch = 0
    while done < steps:
        sampler = getattr(batches, "batch_sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)  # a new shuffle each pass, as the fit loop would do
        seen = 0
        for batch in batches:
            if done >= steps:
                break
            seen += 1
            with (torch.autocast(device, dtype=autocast_dtype) if autocast_dtype is not None else nullcontext()):
                features, _, patches = module.image_features(batch, patches=True)
                loss = module.label_loss(features, batch, patches) if features is not None else None
            if loss is None:  # a batch with no labelled image row teaches the head nothing
                continue
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, clip)
            opt.step()
            sched.step()
            last = float(loss.detach())
            if done == 0:
                first = last
            done += 1
            if done % 50 == 0 or done == steps:
                log.info("vision warm-up step %d/%d: label loss %.4f", done, steps, last)
        if seen == 0:
            raise ValueError("vision warm-up: the training loader yielded no batch")
        if done == 0:
            raise ValueError("vision warm-up: no training row carries labels for the head (label_names)")
        epoch += 1
    opt.zero_grad(set_to_none=True)
    module.train(was_training)
    return {"steps": float(done), "first_loss": first, "last_loss": last, "seconds": time.perf_counter() - t0}
