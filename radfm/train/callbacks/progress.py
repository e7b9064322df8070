"""Progress of a training run (the vision warm-up, the fit, each validation) through :mod:`radfm.progress`.

Lightning's own bar is off (``enable_progress_bar=False``): off a terminal it is one endless line of carriage
returns. This callback reports instead, a Rich bar on a terminal and otherwise a line every ``every_s`` seconds
with the step, the loss, samples/s and the ETA. The loss is read as a number only when a line is due, so the fit
never waits on the device for it. Only the global rank 0 reports (a distributed run would print once per rank).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import lightning as L

from radfm.progress import ProgressReporter

# Prefect progress-artifact keys (flows/ keeps them up to date; lowercase letters, digits and dashes only).
WARMUP_KEY = "radfm-vision-warmup"
FIT_KEY = "radfm-fit"


def batch_samples(batch: Any) -> int | None:
    """The samples in a radfm batch (its ``ids``), None for anything else (the reporter counts steps)."""
    if isinstance(batch, Mapping) and isinstance(batch.get("ids"), (list, tuple)):
        return len(batch["ids"])
    return None


def _loss(outputs: Any) -> Any:
    """The training step's loss from what Lightning hands ``on_train_batch_end`` (a tensor, never read here)."""
    if isinstance(outputs, Mapping):
        return outputs.get("loss")
    return outputs


def _finite(total: Any) -> int | None:
    try:
        value = float(total)
    except (TypeError, ValueError):
        return None
    return int(value) if math.isfinite(value) and value > 0 else None


class TrainProgress(L.Callback):
    """Reports the fit and each validation; :meth:`reporter` gives the vision warm-up the same settings.

    ``every_s``: seconds between lines off a terminal (None: ``$RADFM_PROGRESS_EVERY_S``, else 15;
    :func:`radfm.progress.default_every_s`). ``bar``: None draws a bar when stderr is a terminal; True/False
    forces a bar / lines.
    """

    def __init__(self, every_s: float | None = None, bar: bool | None = None) -> None:
        if every_s is not None and not float(every_s) >= 0:
            raise ValueError(f"callbacks.progress.every_s = {every_s} must be >= 0 seconds (or null: 15)")
        self.every_s = None if every_s is None else float(every_s)
        self.bar = bar
        self._fit: ProgressReporter | None = None
        self._val: ProgressReporter | None = None

    def reporter(self, name: str, total: int | None, *, key: str | None = None, start: int = 0,
                 unit: str = "step") -> ProgressReporter:
        """A reporter with this callback's settings (the vision warm-up asks for one)."""
        return ProgressReporter(name, total, unit=unit, every_s=self.every_s, bar=self.bar, key=key, start=start)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        if total is None:
            total = _finite(trainer.estimated_stepping_batches)
        self._fit = self.reporter("fit", total, key=FIT_KEY, start=trainer.global_step)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._fit is not None:
            self._fit.update(trainer.global_step, items=batch_samples(batch), loss=_loss(outputs))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close("_fit")

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        batches = trainer.num_val_batches
        total = sum(_finite(n) or 0 for n in batches) if isinstance(batches, (list, tuple)) else _finite(batches)
        self._val = self.reporter("validation", total or None, unit="batch")

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._val is not None:
            self._val.update(items=batch_samples(batch))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close("_val")

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._close("_val", failed=True)
        self._close("_fit", failed=True)

    def _close(self, attr: str, failed: bool = False) -> None:
        reporter = getattr(self, attr)
        setattr(self, attr, None)
        if reporter is not None:
            reporter.close(failed=failed)
