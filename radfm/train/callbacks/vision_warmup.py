"""Vision warm-up: steps on the vision side and its image-only objectives before the joint fit.

Why: on the CPU the LM costs ~5× the vision tower per step, and through the answer loss alone the tiny ViT
learns lesions slowly or not at all (BENCHMARKS.md, "Main job"). A few hundred steps that run only the vision
side (ViT → resampler → projection) and the training-only heads teach the image tokens what the questions
will ask, at a fraction of a joint step's cost; the joint fit then mostly has to teach the LM to read them.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from contextlib import nullcontext
from typing import Any

import lightning as L
import torch

from radfm.progress import ProgressReporter
from radfm.train.callbacks.progress import WARMUP_KEY, TrainProgress, batch_samples
from radfm.train.objectives import Objective, StepEncoding

log = logging.getLogger(__name__)


def vision_objectives(module: Any) -> list[Objective]:
    """The module's objectives that train through the images alone (what the warm-up runs)."""
    return [o for o in module.objectives.values() if o.vision_only]


def warm_up_factor(step: int, steps: int, ramp: int = 0) -> float:
    """The warm-up's learning-rate factor at ``step`` (0-based): ``(step + 1) / ramp`` during the ramp, then a
    linear decay from 1 to 0.1 at the last step. Why a ramp: a fresh head's first gradients are large and
    noisy, and full-rate AdamW steps on them can wash out what the features already hold."""
    if step < ramp:
        return (step + 1) / ramp
    return 1.0 - 0.9 * (step - ramp) / max(1, steps - ramp - 1)


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a Lightning ``precision`` string (``bf16-mixed`` → bfloat16), None for full precision."""
    if precision.startswith("bf16") and "mixed" in precision:
        return torch.bfloat16
    if precision.startswith("16") and "mixed" in precision:
        return torch.float16
    return None


def _optimizer(module: Any, objectives: list[Objective], lr: float, head_lr: float | None,
               encoder_lr: float | None, weight_decay: float) -> tuple[torch.optim.Optimizer, list[Any]]:
    """AdamW over the ViT (``encoder_lr``), the rest of the vision side (``lr``) and the heads (``head_lr``)."""
    vision = module.model.vision
    encoder = [p for p in vision.encoder.parameters() if p.requires_grad]
    rest = [p for n, p in vision.named_parameters() if p.requires_grad and not n.startswith("encoder.")]
    if not encoder and not rest:
        raise ValueError("vision warm-up steps > 0 but no vision-side parameter is trainable (frozen): nothing "
                         "to warm up")
    head = [p for o in objectives for p in o.parameters()]
    groups = [{"params": encoder, "lr": encoder_lr or lr}, {"params": rest, "lr": lr},
              {"params": head, "lr": head_lr or lr}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=weight_decay, betas=(0.9, 0.95))
    return opt, encoder + rest + head


def _loss(module: Any, objectives: list[Objective], batch: dict[str, Any]) -> torch.Tensor | None:
    """The image-only objectives on one batch, weighted relative to the largest weight (None: nothing to learn)."""
    images = module.model.encode(batch.get("images") or None,
                                 with_patches=any(o.reads_patches for o in objectives))
    if images is None:
        return None
    encoding = StepEncoding(images, None, train=True)
    top = max(o.weight for o in objectives) or 1.0
    total = None
    for objective in objectives:
        value = objective.loss(batch, encoding)
        if value is not None:
            term = (objective.weight / top) * value
            total = term if total is None else total + term
    return total


def _apply(loss: torch.Tensor, opt: torch.optim.Optimizer, sched: Any, params: list[Any], clip: float) -> float:
    """One optimisation step on ``loss`` (gradients clipped to norm ``clip``); returns the loss."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, clip)
    opt.step()
    sched.step()
    return float(loss.detach())


def warm_up_vision(module: Any, batches: Iterable[dict[str, Any]], steps: int, lr: float,
                   weight_decay: float = 0.01, clip: float = 1.0, head_lr: float | None = None,
                   autocast_dtype: torch.dtype | None = None, ramp: int = 0,
                   encoder_lr: float | None = None, progress: ProgressReporter | None = None) -> dict[str, float]:
    """Train ``module.model.vision`` and the module's image-only objectives for ``steps`` steps.

    ``module`` is a :class:`radfm.train.module.RadFMLitModule`; ``batches`` an iterable of training batches
    (passed over again, with ``set_epoch``, when shorter than ``steps``). The LM is not run and its weights do
    not change. The loss is the image-only objectives' weighted sum, weights divided by the largest (so the
    warm-up's own rates set the step size). AdamW at ``lr`` (the ViT at ``encoder_lr``, the heads at
    ``head_lr``; both default ``lr``), reached by a linear ramp over the first ``ramp`` steps, then a linear
    decay to 0.1 × ``lr``; its state is dropped after (the joint fit starts its own optimizer).
    ``autocast_dtype`` (e.g. ``torch.bfloat16``, what a ``bf16-mixed`` fit uses) runs the forward under
    autocast, as the fit will; the weights stay fp32. ``progress`` (e.g. from
    :meth:`radfm.train.callbacks.TrainProgress.reporter`) reports each step and is closed at the end; None reports
    nothing. Returns the first and last loss and the seconds spent.
    """
    if steps <= 0:
        return {"steps": 0.0, "seconds": 0.0}
    if ramp < 0:
        raise ValueError(f"vision warm-up ramp = {ramp} must be >= 0")
    objectives = vision_objectives(module)
    if not objectives:
        raise ValueError("the vision warm-up needs an objective that trains through the images alone "
                         "(e.g. objective=[answer,label_head] or [answer,contrastive])")
    opt, params = _optimizer(module, objectives, lr, head_lr, encoder_lr, weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: warm_up_factor(i, steps, ramp))
    device = params[0].device.type
    was_training = module.training
    module.train()
    t0 = time.perf_counter()
    first = last = float("nan")
    done = epoch = 0
    with progress or nullcontext():
        while done < steps:
            sampler = getattr(batches, "batch_sampler", None)
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)  # a new shuffle each pass, as the fit loop would do
            seen = 0
            for batch in batches:
                if done >= steps:
                    break
                seen += 1
                with (torch.autocast(device, dtype=autocast_dtype) if autocast_dtype is not None
                      else nullcontext()):
                    loss = _loss(module, objectives, batch)
                if loss is None:  # a batch with no labelled image row teaches the heads nothing
                    continue
                last = _apply(loss, opt, sched, params, clip)
                first = last if done == 0 else first
                done += 1
                if progress is not None:
                    progress.update(done, items=batch_samples(batch), loss=last)
            if seen == 0:
                raise ValueError("vision warm-up: the training loader yielded no batch")
            if done == 0:
                raise ValueError("vision warm-up: no training batch gave the image-only objectives anything to "
                                 "learn (no row carries label_names for label_head, nor answer text for "
                                 "contrastive)")
            epoch += 1
    opt.zero_grad(set_to_none=True)
    module.train(was_training)
    return {"steps": float(done), "first_loss": first, "last_loss": last, "seconds": time.perf_counter() - t0}


class VisionWarmup(L.Callback):
    """The warm-up as a stage of the fit: it runs in ``setup`` of a fresh fit, before the optimizer is made and
    before a distributed strategy wraps the model (DDP then broadcasts rank 0's weights). A fit resumed from a
    checkpoint skips it (the checkpoint holds the warmed weights); whether it ran, and its figures, travel in
    the checkpoint. Lightning makes a path given to ``fit(ckpt_path=…)`` visible only after ``setup``: set
    ``trainer.ckpt_path`` before the fit instead (``radfm.train.builder.fit`` does). ``trainer.fast_dev_run`` runs one step, as Lightning runs one batch of the fit.
    """

    def __init__(self, steps: int = 0, lr: float = 1e-3, head_lr: float | None = None,
                 encoder_lr: float | None = None, ramp: int = 0, weight_decay: float = 0.01,
                 epochs: float | None = None, min_steps: int = 0) -> None:
        if steps < 0 or ramp < 0 or min_steps < 0:
            raise ValueError(f"vision warm-up steps = {steps}, min_steps = {min_steps} and ramp = {ramp} must be "
                             ">= 0")
        if epochs is not None and float(epochs) <= 0:
            raise ValueError(f"vision warm-up epochs = {epochs} must be > 0 (or null: a fixed number of steps)")
        self.steps, self.lr, self.head_lr, self.encoder_lr = int(steps), float(lr), head_lr, encoder_lr
        self.epochs, self.min_steps = (None if epochs is None else float(epochs)), int(min_steps)
        self.ramp, self.weight_decay = int(ramp), float(weight_decay)
        self.stats: dict[str, float] = {}
        self.done = False

    def check(self, module: Any) -> None:
        """Refuse, before a run starts, a module that gives the warm-up nothing to train."""
        if self.steps > 0 and not vision_objectives(module):
            raise ValueError("callbacks.vision_warmup.steps > 0 needs an objective that trains through the images "
                             "alone: add label_head or contrastive (objective=[answer,label_head]) or set the steps "
                             "to 0")

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or self.steps <= 0 or self.done or trainer.ckpt_path is not None:
            return
        # Image-only batches skip the text; an objective that pairs images with their answers needs it.
        text = any(o.reads_text for o in vision_objectives(pl_module))
        batches = trainer.datamodule.train_dataloader() if text else trainer.datamodule.warmup_dataloader()
        steps = 1 if trainer.fast_dev_run else self.budget(batches)
        # The fit's progress settings (conf/callbacks/default.yaml); only rank 0 reports.
        reporter = next((c for c in getattr(trainer, "callbacks", ()) if isinstance(c, TrainProgress)), None)
        progress = (reporter.reporter("vision warm-up", steps, key=WARMUP_KEY)
                    if reporter is not None and getattr(trainer, "is_global_zero", True) else None)
        stats = warm_up_vision(pl_module, batches, steps, self.lr,
                               weight_decay=self.weight_decay,
                               head_lr=float(self.head_lr) if self.head_lr else None, ramp=self.ramp,
                               encoder_lr=float(self.encoder_lr) if self.encoder_lr else None,
                               autocast_dtype=autocast_dtype(str(trainer.precision)), progress=progress)
        log.info("vision warm-up: %d steps in %.1f s, loss %.4f -> %.4f", int(stats["steps"]), stats["seconds"],
                 stats["first_loss"], stats["last_loss"])
        self.stats = {f"warmup/{k}": v for k, v in stats.items()}
        self.done = True

    def budget(self, batches: Any) -> int:
        """The steps to run: ``steps``, or with ``epochs`` set, ``epochs`` passes over the training batches,
        at least ``min_steps`` and at most ``steps`` (a budget that grows with the data, within a cap)."""
        if self.epochs is None:
            return self.steps
        try:
            per_pass = len(batches)
        except TypeError:  # an iterable without a length: the fixed count
            return self.steps
        by_data = max(self.min_steps, math.ceil(self.epochs * per_pass))
        steps = min(self.steps, by_data)
        log.info("vision warm-up: %.3g passes over %d batches -> %d steps (min %d, max %d)", self.epochs, per_pass,
                 steps, self.min_steps, self.steps)
        return steps

    def state_dict(self) -> dict[str, Any]:
        return {"done": self.done, "stats": dict(self.stats)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.done = bool(state_dict.get("done", False))
        self.stats = dict(state_dict.get("stats", {}))
