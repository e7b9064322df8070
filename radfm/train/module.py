"""The LightningModule: answer-only loss (optionally term-weighted), per-task logging, AdamW + schedule."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from radfm.data.manifest import TASKS
from radfm.model import factory
from radfm.model.config import RadFMConfig
from radfm.model.multimodal import RadFMModel
from radfm.model.tokenizer import IGNORE_INDEX, RadFMTokenizer
from radfm.train.terms import TermWeighter, load_terms


class RadFMLitModule(L.LightningModule):
    """Wraps :class:`RadFMModel`. ``optimizer``/``scheduler`` are Hydra partials (params → optimizer,
    optimizer → LR scheduler stepped every optimisation step)."""

    def __init__(
        self,
        model_cfg: RadFMConfig,
        tokenizer: RadFMTokenizer,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        freeze: str = "none",
        lora: dict[str, Any] | None = None,
        term_weight: float = 1.0,
        seed: int = 0,
        model: RadFMModel | None = None,
        loss_reduction: str = "token",
    ) -> None:
        super().__init__()
        if loss_reduction not in ("token", "sample"):
            raise ValueError(f"loss_reduction must be 'token' or 'sample', got {loss_reduction!r}")
        self.save_hyperparameters({"model": model_cfg.to_dict(), "freeze": freeze, "lora": lora,
                                   "term_weight": term_weight, "seed": seed, "loss_reduction": loss_reduction})
        self.loss_reduction = loss_reduction
        self.model_cfg = model_cfg
        self.tokenizer = tokenizer
        if model is None:
            torch.manual_seed(seed)
            model = factory.build_model(model_cfg, tokenizer)
        self.model = model
        if lora:
            apply_lora(self.model, **lora)
        self.param_counts = factory.freeze(self.model, freeze, verbose=False)
        self.optimizer_fn = optimizer or (lambda params: torch.optim.AdamW(params, lr=3e-4))
        self.scheduler_fn = scheduler
        self.weighter = TermWeighter(tokenizer, load_terms(), term_weight) if term_weight != 1.0 else None
        self._t0: float | None = None

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return self.model(batch["input_ids"], batch["attention_mask"], batch.get("images") or None)

    def _step(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        logits = self.forward(batch)["logits"]
        labels = batch["labels"]
        target = labels[:, 1:]
        per_token = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), target,
                                    ignore_index=IGNORE_INDEX, reduction="none")
        mask = (target != IGNORE_INDEX).float()
        weights = mask if self.weighter is None or stage != "train" else self.weighter(labels)[:, 1:]
        if self.loss_reduction == "sample":
            # Every answer counts once, whatever its length. With the token mean (RadFM's) a 60-token templated
            # report outweighs thirty one-word closed answers, and the model can lower most of the loss by
            # modelling report text without looking at the image.
            per_row = (per_token * weights).sum(1) / weights.sum(1).clamp_min(1.0)
            has_answer = weights.sum(1) > 0
            loss = per_row[has_answer].mean() if bool(has_answer.any()) else per_row.sum() * 0.0
        else:
            loss = (per_token * weights).sum() / weights.sum().clamp_min(1.0)
        bs = labels.shape[0]
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=bs, sync_dist=stage != "train")
        # Per task family: the plain (unweighted) answer loss of the rows of that task.
        row_loss = (per_token * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        tasks = sorted(set(batch.get("tasks", [])))
        if stage != "train" and self.trainer is not None and self.trainer.world_size > 1:
            tasks = self._tasks_on_any_rank(tasks)  # synced keys must be the same on every rank
        for task in tasks:
            rows = torch.tensor([t == task for t in batch["tasks"]], device=row_loss.device)
            n = int(rows.sum())
            self.log(f"{stage}/loss_{task}", row_loss[rows].mean() if n else row_loss.new_zeros(()),
                     batch_size=n, sync_dist=stage != "train")
        if stage == "train":
            self.log("train/answer_tokens", mask.sum(), reduce_fx="sum", batch_size=bs)
        return loss

    def _tasks_on_any_rank(self, tasks: list[str]) -> list[str]:
        """The tasks present in this step's batch of any rank (a rank without rows logs weight 0)."""
        present = torch.tensor([float(t in tasks) for t in TASKS], device=self.device)
        anywhere = (self.trainer.strategy.reduce(present, reduce_op="sum") > 0).tolist()
        return [t for t, p in zip(TASKS, anywhere, strict=True) if p]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self._step(batch, "train")
        now = time.perf_counter()
        if self._t0 is not None:
            dt = now - self._t0
            self.log("train/samples_per_s", batch["labels"].shape[0] / dt, batch_size=1)
            self.log("train/tokens_per_s", float(batch["attention_mask"].sum()) / dt, batch_size=1)
        self._t0 = now
        opt = self.optimizers()
        if opt is not None and hasattr(opt, "param_groups"):
            self.log("train/lr", opt.param_groups[0]["lr"], batch_size=1)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step(batch, "val")

    def configure_optimizers(self) -> Any:
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = self.optimizer_fn(params)
        if self.scheduler_fn is None:
            return optimizer
        total = int(self.trainer.estimated_stepping_batches) if self.trainer is not None else 1000
        scheduler = self.scheduler_fn(optimizer, total_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def apply_lora(model: RadFMModel, r: int = 8, alpha: int = 16, dropout: float = 0.05,
               target_modules: list[str] | None = None) -> None:
    """Replace the LM with a PEFT LoRA-wrapped LM (the vision side stays as the freeze policy says)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none",
                        target_modules=target_modules or ["q_proj", "k_proj", "v_proj", "o_proj"])
    model.lm = get_peft_model(model.lm, config)
