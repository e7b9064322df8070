"""The LightningModule: answer-only loss (optionally term-weighted), per-task logging, AdamW + schedule."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
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

LABEL_POOLS = ("mean", "max", "token")  # how the label head reads a row's image tokens (see label_loss)
PATCH_LABELS = ("types", "findings")  # which label names the patch head learns (see patch_label_indices)


def patch_label_indices(names: Sequence[str], which: str = "findings") -> list[int]:
    """The indices of ``names`` that the patch head learns.

    ``types``: names without a qualifier (``"cyst"``): presence only. ``findings``: those and every name
    that qualifies one of them (``"cyst left"``, ``"cyst left upper"``, ``"cyst small"``): where and how big a
    lesion is can be read off the patch that holds it (its token carries its position), so a max over
    patches can say it; ``"modality CT"``, ``"plane axial"``, ``"count 2"`` are about the whole image and
    stay with the label head alone.
    """
    if which not in PATCH_LABELS:
        raise ValueError(f"patch_labels must be one of {PATCH_LABELS}, got {which!r}")
    types = {n for n in names if " " not in n}
    if which == "types":
        return [j for j, n in enumerate(names) if n in types]
    return [j for j, n in enumerate(names) if n.split(" ", 1)[0] in types]


LOSS_REDUCTIONS = ("token", "sample", "turn")


def turn_mean(per_token: torch.Tensor, weights: torch.Tensor, segment_ids: torch.Tensor | None) -> torch.Tensor:
    """Mean over answers of each answer's weighted mean loss; a packed row holds one answer per turn.

    ``per_token``, ``weights``: B×(T−1), aligned with the targets (position t predicts token t + 1);
    ``segment_ids``: B×T (0 prefix, k turn k, −1 padding) or None (one answer per row: the ``sample`` mean).
    With packed questions the ``sample`` mean is a pack's token mean, where a one-token yes/no answer weighs
    ~1/100 of the pack beside a 60-token report; here each turn counts once.
    """
    if segment_ids is None:
        segments = (weights > 0).long()
    else:
        segments = segment_ids[:, 1:].clamp_min(0)  # the turn each predicted token belongs to
    n_seg = int(segments.max()) + 1
    key = (torch.arange(per_token.shape[0], device=per_token.device).unsqueeze(1) * n_seg + segments).flatten()
    size = per_token.shape[0] * n_seg
    num = per_token.new_zeros(size).index_add_(0, key, (per_token * weights).flatten())
    den = per_token.new_zeros(size).index_add_(0, key, weights.flatten().to(per_token.dtype))
    has = den > 0
    if not bool(has.any()):
        return per_token.sum() * 0.0
    return (num[has] / den[has]).mean()


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
        term_extra: Sequence[str] = (),
        seed: int = 0,
        model: RadFMModel | None = None,
        loss_reduction: str = "token",
        lr_scale: Mapping[str, float] | None = None,
        label_names: Sequence[str] | None = None,
        label_head_weight: float = 0.0,
        label_pool: str = "mean",
        patch_head_weight: float = 0.0,
        patch_labels: str = "findings",
    ) -> None:
        super().__init__()
        if loss_reduction not in LOSS_REDUCTIONS:
            raise ValueError(f"loss_reduction must be one of {LOSS_REDUCTIONS}, got {loss_reduction!r}")
        self.lr_scale = {str(k): float(v) for k, v in (lr_scale or {}).items()}
        for prefix, scale in self.lr_scale.items():
            if scale < 0:
                raise ValueError(f"lr_scale[{prefix!r}] = {scale} must be >= 0")
        if label_pool not in LABEL_POOLS:
            raise ValueError(f"label_pool must be one of {LABEL_POOLS}, got {label_pool!r}")
        if label_head_weight < 0:
            raise ValueError(f"label_head_weight = {label_head_weight} must be >= 0")
        if patch_head_weight < 0:
            raise ValueError(f"patch_head_weight = {patch_head_weight} must be >= 0")
        if patch_head_weight > 0 and label_head_weight <= 0:
            raise ValueError("patch_head_weight > 0 needs the label head (label_head_weight > 0): it learns "
                             "the same labels")
        if label_head_weight > 0 and not label_names:
            raise ValueError("label_head_weight > 0 needs label_names: the training split's manifest rows carry "
                             "no `labels` to train the label head on (set label_head_weight: 0)")
        self.label_names = list(label_names or []) if label_head_weight > 0 else []
        self.label_head_weight = float(label_head_weight)
        self.label_pool = label_pool
        self.patch_head_weight = float(patch_head_weight)
        self.save_hyperparameters({"model": model_cfg.to_dict(), "freeze": freeze, "lora": lora,
                                   "term_weight": term_weight, "term_extra": list(term_extra), "seed": seed,
                                   "loss_reduction": loss_reduction,
                                   "lr_scale": self.lr_scale, "label_head_weight": self.label_head_weight,
                                   "label_pool": label_pool, "patch_head_weight": self.patch_head_weight,
                                   "patch_labels": patch_labels,
                                   "label_names": self.label_names})
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
        # term_extra: answer words weighted like the terms, e.g. "yes"/"no": a closed answer is one token
        # beside ~60-token reports in a packed row, so by the token mean it hardly trains.
        self.weighter = (TermWeighter(tokenizer, [*load_terms(), *term_extra], term_weight)
                         if term_weight != 1.0 else None)
        # Training-only: a linear multi-label head on the image tokens the LM sees (not part of the exported
        # model). Why: the answer loss reaches the vision tower only through the LM, and a lesion changes a
        # few of ~40 answer tokens, so the ViT never learned lesions in the 10-minute demo (yes/no at chance);
        # a direct loss on the manifest's labels gives it that signal (BENCHMARKS.md, "Main job").
        self.label_head = (torch.nn.Linear(model_cfg.lm.hidden_size, len(self.label_names))
                           if self.label_names else None)
        # Training-only too: the same labels read from the ViT's patch tokens, max-pooled over each row's
        # patches. Why: a lesion fills one or two of 64–256 patches, and through the mean-pooled label head
        # (or the resampler) its gradient reaches those patches diluted; a max sends it to the patch that
        # holds the lesion, as a CNN detector's global max-pool does. On mid slices of MedMD-synth, 600
        # vision steps with it read test fractures at 0.95 through the *latent* head (0.53 without it).
        self.patch_labels = patch_label_indices(self.label_names, patch_labels)
        if self.patch_head_weight > 0 and not self.patch_labels:
            raise ValueError("patch_head_weight > 0 but the label head has no label name without a qualifier "
                             f"(a finding type such as 'cyst') for the patch head to learn: {self.label_names[:5]}")
        self.patch_head = (torch.nn.Linear(model_cfg.vision.width, len(self.patch_labels))
                           if self.patch_labels and self.patch_head_weight > 0 else None)
        self._t0: float | None = None

    def image_features(self, batch: dict[str, Any], patches: bool = False) -> tuple[Any, ...]:
        """(features, block features): ``N×K×hidden`` tokens of the batch's N images, ``B×K×hidden`` of its B blocks.

        Inline packs repeat an image in every turn (``batch["image_blocks"]``): each image is encoded once
        and its tokens are gathered per block. Otherwise blocks and images are the same list. (None, None)
        without images. ``patches``: a third item, the ``N×width`` max-pooled ViT patch tokens the patch
        head reads (None without a patch head or images).
        """
        images = batch.get("images") or None
        want = patches and self.patch_head is not None
        if images is None:
            return (None, None, None) if patches else (None, None)
        features, pooled = self.model.encode_images(images, patch_max=True) if want else (
            self.model.encode_images(images), None)
        blocks = batch.get("image_blocks")
        out = (features, features if blocks is None else per_block(features, blocks))
        return (*out, pooled) if patches else out

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        _, blocks = self.image_features(batch)
        return self.model(batch["input_ids"], batch["attention_mask"], image_features=blocks,
                          segment_ids=batch.get("segment_ids"))

    def pool_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """One row's image tokens ``M×hidden`` → ``1×hidden``: what the label head reads (``label_pool``;
        ``token`` rows are scored on their mean here, as a detector reading the whole image)."""
        if self.label_pool == "max":
            return tokens.max(dim=0, keepdim=True).values
        return tokens.mean(dim=0, keepdim=True)

    def label_loss(self, features: torch.Tensor, batch: dict[str, Any],
                   patches: torch.Tensor | None = None) -> torch.Tensor | None:
        """Binary cross-entropy of the label head on each row's image tokens, or None without a labelled row.

        ``features``: ``N×K×hidden`` image tokens of the batch's N images (row by row, ``batch["n_images"]``
        of them per row). The target of a row is the multi-hot of its ``label_names`` over ``self.label_names``
        (an empty list: no finding, every target 0). Rows without images or with ``label_names`` None carry
        no target and are left out. With ``label_pool="mean"`` the head reads the mean of the row's image
        tokens (one ``L`` logit vector per row); with ``"token"`` it reads every one of the row's ``n×K``
        tokens on its own (``n·K×L`` logits, all against the row's target) and the BCE is their mean.

        Why ``token``: the LM reads the image through attention, which may weigh any few of the K tokens;
        a mean-pooled head only asks that the *average* token carry the labels, so each finding may live
        in a direction spread thinly over all K. Asking every token to carry them makes any attention
        pattern read them.
        """
        assert self.label_head is not None
        index = {name: j for j, name in enumerate(self.label_names)}
        pooled, targets, start = [], [], 0
        patch_rows: list[torch.Tensor] = []
        for n, names in zip(batch["n_images"], batch["label_names"], strict=True):
            if n and names is not None:
                if patches is not None:
                    patch_rows.append(patches[start:start + n].amax(dim=0, keepdim=True))
                tokens = features[start:start + n].flatten(0, 1)  # n·K×hidden
                target = features.new_zeros(len(index))
                for name in names:
                    if name in index:  # a label unseen in training (val rows) has no output to train
                        target[index[name]] = 1.0
                if self.label_pool == "token":
                    pooled.append(tokens)
                    targets.append(target.expand(tokens.shape[0], -1))
                else:
                    pooled.append(self.pool_tokens(tokens))
                    targets.append(target.unsqueeze(0))
            start += n
        if not pooled:
            return None
        logits = self.label_head(torch.cat(pooled).float())
        loss = F.binary_cross_entropy_with_logits(logits, torch.cat(targets).float())
        if self.patch_head is not None and patch_rows:
            row_targets = torch.stack([t[0] for t in targets]) if self.label_pool == "token" else torch.cat(targets)
            patch_logits = self.patch_head(torch.cat(patch_rows).float())
            loss = loss + (self.patch_head_weight / self.label_head_weight) * F.binary_cross_entropy_with_logits(
                patch_logits, row_targets[:, self.patch_labels].float())
        return loss

    def _step(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        features, blocks, patches = self.image_features(batch, patches=True)  # once, for the LM and the heads
        labels = batch["labels"]
        target = labels[:, 1:]
        scored = target != IGNORE_INDEX
        # The LM head runs only where an answer token is predicted (position t predicts t + 1): M×V logits.
        logits = self.model(batch["input_ids"], batch["attention_mask"], image_features=blocks,
                            segment_ids=batch.get("segment_ids"), logits_at=F.pad(scored, (0, 1)))["logits"]
        aux = (self.label_loss(features, batch, patches)
               if self.label_head is not None and features is not None and "label_names" in batch else None)
        per_token = logits.new_zeros(target.shape, dtype=torch.float32)  # B×(T−1), 0 where nothing is scored
        per_token[scored] = F.cross_entropy(logits.float(), target[scored], reduction="none")
        mask = scored.float()
        weights = mask if self.weighter is None or stage != "train" else self.weighter(labels)[:, 1:]
        if self.loss_reduction == "sample":
            # Every answer counts once, whatever its length. With the token mean (RadFM's) a 60-token templated
            # report outweighs thirty one-word closed answers, and the model can lower most of the loss by
            # modelling report text without looking at the image.
            loss = turn_mean(per_token, weights, None)
        elif self.loss_reduction == "turn":
            loss = turn_mean(per_token, weights, batch.get("segment_ids"))
        else:
            loss = (per_token * weights).sum() / weights.sum().clamp_min(1.0)
        bs = labels.shape[0]
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=bs, sync_dist=stage != "train")
        if aux is not None:
            self.log(f"{stage}/label_loss", aux, batch_size=bs, sync_dist=stage != "train")
            if stage == "train":
                loss = loss + self.label_head_weight * aux
        # Per task family: the plain (unweighted) answer loss of the rows of that task.
        row_loss = (per_token * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        tasks = sorted(set(batch.get("tasks", [])))
        if stage != "train" and self._trainer is not None and self._trainer.world_size > 1:
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
            # The base rate (scale 1), whatever order the groups are in.
            base = next((g for g in opt.param_groups if g.get("lr_scale", 1.0) == 1.0), opt.param_groups[0])
            self.log("train/lr", base["lr"], batch_size=1)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step(batch, "val")

    def param_groups(self) -> list[dict[str, Any]]:
        """Trainable parameters grouped by learning-rate multiplier (``lr_scale``: name prefix → scale).

        A parameter takes the scale of the longest prefix of its name in ``self.model`` that matches
        (``"vision"`` covers ``vision.encoder.…``, ``vision.resampler.…``, ``vision.projection.…``); others
        take 1. Why: trained from scratch beside the LM at the LM's rate, the tiny ViT's features collapse in
        the first steps (a linear probe of modality on them fell from 0.90 at init to 0.63 after 50 steps)
        and the model learns to ignore its images; at 0.1× they sharpen instead (probe 0.99, modality 0.97
        after 150 steps of modality questions). Prefixes that match no parameter are an error.
        """
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        for prefix in self.lr_scale:
            if not any(n == prefix or n.startswith(prefix + ".") for n, _ in named):
                raise ValueError(f"lr_scale prefix {prefix!r} matches no trainable parameter of the model "
                                 f"(top-level modules: {sorted({n.split('.')[0] for n, _ in named})})")
        groups: dict[float, list[torch.nn.Parameter]] = {}
        for name, p in named:
            hits = [k for k in self.lr_scale if name == k or name.startswith(k + ".")]
            scale = self.lr_scale[max(hits, key=len)] if hits else 1.0
            groups.setdefault(scale, []).append(p)
        for head in (self.label_head, self.patch_head):
            if head is not None:
                groups.setdefault(1.0, []).extend(head.parameters())
        return [{"params": ps, "lr_scale": scale} for scale, ps in groups.items()]

    def configure_optimizers(self) -> Any:
        groups = self.param_groups()
        optimizer = self.optimizer_fn(groups)
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


def apply_lora(model: RadFMModel, r: int = 8, alpha: int = 16, dropout: float = 0.05,
               target_modules: list[str] | None = None) -> None:
    """Replace the LM with a PEFT LoRA-wrapped LM (the vision side stays as the freeze policy says)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none",
                        target_modules=target_modules or ["q_proj", "k_proj", "v_proj", "o_proj"])
    model.lm = get_peft_model(model.lm, config)
