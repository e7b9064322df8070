"""The LightningModule: the model, a weighted sum of objectives, per-task logging, AdamW + schedule."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from radfm.data.manifest import TASKS
from radfm.model import factory
from radfm.model.config import RadFMConfig
from radfm.model.multimodal import ImageEncoding, RadFMModel
from radfm.model.tokenizer import IGNORE_INDEX, RadFMTokenizer
from radfm.train.lora import apply_lora
from radfm.train.objectives import AnswerLoss, AnswerTokens, Objective, ObjectiveContext, StepEncoding
from radfm.train.param_groups import check_lr_scale, param_groups
from radfm.train.sharding import ShardPlan, shard_module


class RadFMLitModule(L.LightningModule):
    """Wraps :class:`RadFMModel` and trains it on the weighted sum of ``objectives`` (default: the answer loss).

    ``optimizer``/``scheduler`` are Hydra partials (params → optimizer, optimizer → LR scheduler stepped every
    optimisation step). ``label_names``: the training rows' label vocabulary, for objectives that need it. The
    model is built here (seeded) unless given; LoRA, freezing and then each objective's :meth:`Objective.bind`
    follow in that order, so a seed always gives the same initial weights.
    """

    def __init__(self, model_cfg: RadFMConfig, tokenizer: RadFMTokenizer,
                 objectives: Sequence[Objective] | None = None,
                 optimizer: Callable[..., torch.optim.Optimizer] | None = None,
                 scheduler: Callable[..., Any] | None = None, freeze: str = "none",
                 lora: dict[str, Any] | None = None, seed: int = 0, model: RadFMModel | None = None,
                 lr_scale: Mapping[str, float] | None = None, label_names: Sequence[str] | None = None) -> None:
        super().__init__()
        self.lr_scale = check_lr_scale(lr_scale)
        objectives = list(objectives) if objectives is not None else [AnswerLoss()]
        names = [o.name for o in objectives]
        if len(set(names)) != len(names):
            raise ValueError(f"objective names must be unique, got {names}")
        self.model_cfg = model_cfg
        self.tokenizer = tokenizer
        if model is None:
            torch.manual_seed(seed)
            model = factory.build_model(model_cfg, tokenizer)
        self.model = model
        if lora:
            apply_lora(self.model, **lora)
        self.param_counts = factory.freeze(self.model, freeze, verbose=False)
        context = ObjectiveContext(model_cfg, tokenizer, list(label_names) if label_names is not None else None)
        for objective in objectives:
            objective.bind(context)
        self.objectives = nn.ModuleDict({o.name: o for o in objectives})
        self.save_hyperparameters({"model": model_cfg.to_dict(), "freeze": freeze, "lora": lora, "seed": seed,
                                   "lr_scale": self.lr_scale, "label_names": list(label_names or []),
                                   "objectives": {o.name: o.options() for o in objectives}})
        self.optimizer_fn = optimizer or (lambda params: torch.optim.AdamW(params, lr=3e-4))
        self.scheduler_fn = scheduler
        self._t0: float | None = None
        # Set by a sharded (FSDP) run before its fit; configure_model applies it once the ranks are up.
        self.shard_plan: ShardPlan | None = None
        self._sharded = False

    def configure_model(self) -> None:
        """Shard the model over the strategy's device mesh when a :class:`ShardPlan` is set (else nothing)."""
        if self.shard_plan is None or self._sharded:
            return
        shard_module(self, self.device_mesh["data_parallel"], self.shard_plan)
        self._sharded = True

    def encode(self, batch: dict[str, Any]) -> ImageEncoding | None:
        """The batch's images, encoded once (patch tokens too when an objective reads them)."""
        want = any(o.reads_patches for o in self.objectives.values())
        return self.model.encode(batch.get("images") or None, with_patches=want)

    def answer_tokens(self, batch: dict[str, Any], images: ImageEncoding | None) -> AnswerTokens:
        """The LM over the batch, its head run only where an answer token is predicted (t predicts t + 1).

        Inline packs repeat an image in every turn (``batch["image_blocks"]``): each image was encoded once
        and its tokens are gathered per block here.
        """
        labels = batch["labels"]
        target = labels[:, 1:]
        scored = target != IGNORE_INDEX
        blocks = None if images is None else images.tokens
        if blocks is not None and batch.get("image_blocks") is not None:
            blocks = per_block(blocks, batch["image_blocks"])
        logits = self.model(batch["input_ids"], batch["attention_mask"], image_features=blocks,
                            segment_ids=batch.get("segment_ids"), logits_at=F.pad(scored, (0, 1)))["logits"]
        per_token = logits.new_zeros(target.shape, dtype=torch.float32)  # B×(T−1), 0 where nothing is scored
        per_token[scored] = F.cross_entropy(logits.float(), target[scored], reduction="none")
        return AnswerTokens(per_token, scored.float(), labels)

    def _step(self, batch: dict[str, Any], stage: str) -> torch.Tensor | None:
        train = stage == "train"
        images = self.encode(batch)
        reads = any(o.reads_answers for o in self.objectives.values())
        answers = self.answer_tokens(batch, images) if reads else None
        encoding = StepEncoding(images, answers, train)
        bs = len(batch["ids"])
        total: torch.Tensor | None = None
        for objective in self.objectives.values():
            value = objective.loss(batch, encoding)
            if value is None:
                continue
            self.log(f"{stage}/{objective.metric}", value, prog_bar=objective.metric == "loss", batch_size=bs,
                     sync_dist=not train)
            term = objective.weight * value
            total = term if total is None else total + term
        if answers is not None:
            self._log_tasks(batch, answers, stage)
        return total

    def _log_tasks(self, batch: dict[str, Any], answers: AnswerTokens, stage: str) -> None:
        """Per task family: the plain (unweighted) answer loss of the rows of that task."""
        mask = answers.mask
        row_loss = (answers.per_token * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        tasks = sorted(set(batch.get("tasks", [])))
        if stage != "train" and self._trainer is not None and self._trainer.world_size > 1:
            tasks = self._tasks_on_any_rank(tasks)  # synced keys must be the same on every rank
        for task in tasks:
            rows = torch.tensor([t == task for t in batch["tasks"]], device=row_loss.device)
            n = int(rows.sum())
            self.log(f"{stage}/loss_{task}", row_loss[rows].mean() if n else row_loss.new_zeros(()),
                     batch_size=n, sync_dist=stage != "train")
        if stage == "train":
            self.log("train/answer_tokens", mask.sum(), reduce_fx="sum", batch_size=len(batch["ids"]))

    def _tasks_on_any_rank(self, tasks: list[str]) -> list[str]:
        """The tasks present in this step's batch of any rank (a rank without rows logs weight 0)."""
        present = torch.tensor([float(t in tasks) for t in TASKS], device=self.device)
        anywhere = (self.trainer.strategy.reduce(present, reduce_op="sum") > 0).tolist()
        return [t for t, p in zip(TASKS, anywhere, strict=True) if p]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        loss = self._step(batch, "train")
        now = time.perf_counter()
        if self._t0 is not None:
            dt = now - self._t0
            self.log("train/samples_per_s", len(batch["ids"]) / dt, batch_size=1)
            if "attention_mask" in batch:
                self.log("train/tokens_per_s", float(batch["attention_mask"].sum()) / dt, batch_size=1)
        self._t0 = now
        opt = self.optimizers()
        if opt is not None and hasattr(opt, "param_groups"):
            # The base rate (scale 1), whatever order the groups are in.
            base = next((g for g in opt.param_groups if g.get("lr_scale", 1.0) == 1.0), opt.param_groups[0])
            self.log("train/lr", base["lr"], batch_size=1)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step(batch, "val")

    def param_groups(self) -> list[dict[str, Any]]:
        """The model's trainable parameters by ``lr_scale`` multiplier; the objectives' own (heads) at 1."""
        return param_groups(self.model, self.lr_scale, self.objectives.parameters())

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_fn(self.param_groups())
        # Scale after construction: the optimizer filled each group's lr from its own default; the scheduler
        # (made next) takes these as its base rates.
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] * group.get("lr_scale", 1.0)
        if self.scheduler_fn is None:
            return optimizer
        trainer = self._trainer  # None outside a Trainer (the property would raise)
        total = int(trainer.estimated_stepping_batches) if trainer is not None else 1000
        scheduler = self.scheduler_fn(optimizer, total_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def per_block(features: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """``N×K×H`` features of N images → ``B×K×H`` features of B image blocks (block j shows image blocks[j]).

    A one-hot matmul rather than ``features[blocks]``: an image repeated in several blocks sums its gradients
    in the backward pass, and the index backward (an index-add over CPU threads) sums them in a varying order,
    so two runs of the same config drifted apart (1e-7 after 6 steps, ~0.03 in RadBench after 400).
    """
    onehot = F.one_hot(blocks, features.shape[0]).to(features.dtype)  # B×N
    return torch.einsum("bn,nkh->bkh", onehot, features)
