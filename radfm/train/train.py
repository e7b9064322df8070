"""``train(cfg) -> metrics``: pure (no Prefect); the Hydra entry point and flows call it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from radfm.data.cache import TensorCache
from radfm.data.datamodule import DataConfig, RadFMDataModule, label_names
from radfm.data.errors import Quarantine
from radfm.data.manifest import read_manifest
from radfm.data.transforms import TransformConfig
from radfm.model import factory
from radfm.model.checkpoint import save_pretrained
from radfm.model.config import RadFMConfig
from radfm.model.tokenizer import RadFMTokenizer
from radfm.paths import configure_caches
from radfm.train.allocator import keep_freed_memory
from radfm.train.data_prep import ensure_dataset
from radfm.train.module import RadFMLitModule

log = logging.getLogger(__name__)


def build_model_config(cfg: DictConfig) -> RadFMConfig:
    return instantiate(cfg.model, _convert_="all")


def check_depth_buckets(buckets: tuple[int, ...], patch_depth: int) -> None:
    """Every 3D depth bucket must cut into whole ``patch_depth`` slabs, or the ViT refuses the first such scan
    mid-run: refuse the config before a run starts instead, saying what to set."""
    bad = [b for b in buckets if b % patch_depth]
    if bad:
        fit = list(range(patch_depth, max(max(buckets), patch_depth) + 1, patch_depth))
        raise ValueError(f"data.transform.depth_buckets {list(bad)} are not multiples of model.vision.patch_depth "
                         f"= {patch_depth}: a 3D scan resampled to such a depth cannot be cut into patches; "
                         f"set data.transform.depth_buckets to multiples of {patch_depth}, e.g. {fit}")


def build_data_config(cfg: DictConfig) -> DataConfig:
    d = cfg.data
    transform = TransformConfig(**OmegaConf.to_container(d.transform, resolve=True))
    check_depth_buckets(transform.depth_buckets, int(cfg.model.vision.patch_depth))  # every model group sets it
    return DataConfig(manifest=str(d.manifest), data_root=str(d.root), batch_size_2d=d.batch_size_2d,
                      batch_size_3d=d.batch_size_3d, num_workers=d.num_workers, seed=cfg.seed,
                      on_error=d.on_error, max_length=d.max_length, prevalidate=d.prevalidate,
                      transform=transform, balance=d.get("balance"),
                      pack_questions=bool(d.get("pack_questions", False)),
                      label_source=str(d.get("label_source", "labels")),
                      pack_layout=str(d.get("pack_layout", "inline")),
                      redraw_yesno=bool(d.get("redraw_yesno", False)),
                      yesno_extra=str(d.get("yesno_extra", "none")))


def prepare_tokenizer(model_cfg: RadFMConfig, manifest: str | Path, out_dir: Path) -> RadFMTokenizer:
    """Train (tiny presets) or load the tokenizer once per run; workers and resumes load the saved copy."""
    tok_dir = out_dir / "tokenizer"
    if (tok_dir / "tokenizer.json").exists():
        return RadFMTokenizer.load(tok_dir, model_cfg.num_image_tokens)
    # Rows rejected here are reported by the datamodule's own read; only the good rows' text matters now.
    samples = read_manifest(manifest, on_error="quarantine", quarantine=Quarantine())
    texts = [t for s in samples if s.split == "train" for t in (s.question, s.answer)]
    tokenizer = factory.build_tokenizer(model_cfg, texts)
    tokenizer.save(tok_dir)
    return tokenizer


def run_dir_of(cfg: DictConfig) -> Path:
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    out = Path(str(cfg.paths.runs_dir)) / str(cfg.run_name)
    out.mkdir(parents=True, exist_ok=True)
    return out


def build_trainer_kwargs(cfg: DictConfig) -> dict[str, Any]:
    t = cfg.trainer
    keys = ("accelerator", "devices", "strategy", "precision", "max_steps", "max_epochs", "val_check_interval",
            "check_val_every_n_epoch", "limit_val_batches", "gradient_clip_val", "accumulate_grad_batches",
            "log_every_n_steps", "fast_dev_run", "deterministic", "num_sanity_val_steps")
    return {k: t[k] for k in keys if k in t}


def train_label_names(manifest: str | Path, source: str = "labels") -> list[str]:
    """The sorted label vocabulary of the manifest's training rows (``datamodule.label_names`` of each)."""
    samples = read_manifest(manifest, on_error="quarantine", quarantine=Quarantine())
    return sorted({name for s in samples if s.split == "train" for name in (label_names(s, source) or ())})


def term_words(words: Any) -> list[str]:
    """``term_extra`` as strings; YAML reads a bare ``yes``/``no`` as a boolean, which would silently weigh
    the words "True"/"False" instead, so anything but a string is refused with how to write it."""
    out = []
    for w in words or ():
        if not isinstance(w, str):
            raise ValueError(f"term_extra holds {w!r} ({type(w).__name__}), not a word: quote it in YAML "
                             f'(term_extra: ["yes", "no"]); on the command line term_extra=[yes,no] is fine')
        out.append(w)
    return out


def build_module(cfg: DictConfig, model_cfg: RadFMConfig, tokenizer: RadFMTokenizer) -> RadFMLitModule:
    """The LightningModule as the composed config says (one process and every Ray worker alike)."""
    lr_scale = cfg.optim.get("lr_scale")
    head_weight = float(cfg.get("label_head_weight", 0.0))
    names = (train_label_names(cfg.data.manifest, str(cfg.data.get("label_source", "labels")))
             if head_weight > 0 else None)
    return RadFMLitModule(model_cfg, tokenizer, optimizer=instantiate(cfg.optim.optimizer),
                          scheduler=instantiate(cfg.optim.scheduler), freeze=cfg.freeze,
                          lora=OmegaConf.to_container(cfg.lora) if cfg.lora else None,
                          term_weight=cfg.term_weight, seed=cfg.seed,
                          term_extra=term_words(cfg.get("term_extra")),
                          loss_reduction=cfg.get("loss_reduction", "token"),
                          lr_scale=OmegaConf.to_container(lr_scale) if lr_scale else None,
                          label_names=names, label_head_weight=head_weight,
                          label_pool=str(cfg.get("label_pool", "mean")),
                          patch_head_weight=float(cfg.get("patch_head_weight", 0.0)),
                          patch_labels=str(cfg.get("patch_labels", "findings")))


def check_warm_up(cfg: DictConfig, module: RadFMLitModule) -> int:
    """The warm-up steps ``cfg.vision_warmup`` asks for; a config that cannot warm up fails here, before a run starts."""
    from radfm.train.warmup import require_head

    steps = int((cfg.get("vision_warmup") or {}).get("steps", 0))
    if steps > 0:
        require_head(module)
    return steps


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a Lightning ``precision`` string (``bf16-mixed`` → bfloat16), None for full precision."""
    if precision.startswith("bf16") and "mixed" in precision:
        return torch.bfloat16
    if precision.startswith("16") and "mixed" in precision:
        return torch.float16
    return None


def warm_up(cfg: DictConfig, module: RadFMLitModule, dm: RadFMDataModule, resuming: bool) -> dict[str, float]:
    """The optional vision warm-up (``cfg.vision_warmup``) of a fresh run; a resumed run has its weights."""
    from radfm.train.warmup import warm_up_vision

    wcfg = cfg.get("vision_warmup") or {}
    steps = check_warm_up(cfg, module)
    if steps <= 0 or resuming:
        return {}
    if cfg.trainer.get("fast_dev_run"):
        steps = 1  # a smoke run checks that the warm-up works, as Lightning runs one batch of the fit
    stats = warm_up_vision(module, dm.warmup_dataloader(), steps, float(wcfg.get("lr", 1e-3)),
                           weight_decay=float(cfg.optim.get("weight_decay", 0.01)),
                           head_lr=float(wcfg["head_lr"]) if wcfg.get("head_lr") else None,
                           ramp=int(wcfg.get("ramp", 0) or 0),
                           encoder_lr=float(wcfg["encoder_lr"]) if wcfg.get("encoder_lr") else None,
                           autocast_dtype=autocast_dtype(str(cfg.trainer.get("precision", "32-true"))))
    log.info("vision warm-up: %d steps in %.1f s, label loss %.4f -> %.4f", int(stats["steps"]),
             stats["seconds"], stats["first_loss"], stats["last_loss"])
    return {f"warmup/{k}": v for k, v in stats.items()}


def train(cfg: DictConfig) -> dict[str, float]:
    """Train one model as ``cfg`` says and return its final metrics (floats)."""
    configure_caches()
    keep_freed_memory()
    L.seed_everything(cfg.seed, workers=True)
    manifest = ensure_dataset(cfg.data)
    run_dir = run_dir_of(cfg)
    model_cfg = build_model_config(cfg)
    tokenizer = prepare_tokenizer(model_cfg, manifest, run_dir)
    if cfg.trainer.get("backend", "lightning") == "ray":
        from radfm.train.ray_launcher import train_with_ray

        return train_with_ray(cfg, run_dir)

    data_cfg = build_data_config(cfg)
    cache = TensorCache(Path(str(cfg.paths.cache_dir)) / "tensors")
    dm = RadFMDataModule(data_cfg, tokenizer, cache=cache, quarantine_path=run_dir / "quarantine.jsonl")
    dm.setup()
    module = build_module(cfg, model_cfg, tokenizer)
    if cfg.trainer.get("compile"):
        module.model = torch.compile(module.model)

    check_warm_up(cfg, module)
    from radfm.registry.tracking import RunTracker

    tracker = RunTracker.from_cfg(cfg, run_dir)
    callbacks = checkpoint_callbacks(cfg, run_dir)
    trainer = L.Trainer(**build_trainer_kwargs(cfg), default_root_dir=str(run_dir), callbacks=callbacks,
                        logger=tracker.lightning_logger(), enable_progress_bar=False,
                        enable_model_summary=False)
    tracker.log_start(cfg, module, dm, manifest)
    ckpt_path = resolve_ckpt_path(cfg, run_dir)
    try:
        warm = warm_up(cfg, module, dm, resuming=ckpt_path is not None)
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    except BaseException:
        tracker.fail()  # the MLflow run ends as FAILED, not left RUNNING and active in this process
        raise
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
    metrics.update(warm)
    export_model = merged_for_export(module.model)
    model_dir = save_pretrained(export_model, tokenizer, run_dir / "model",
                                extra={"data_version": tracker.data_version,
                                       "transform": transform_record(data_cfg)})
    metrics["global_step"] = float(trainer.global_step)
    tracker.log_end(metrics, model_dir, callbacks)
    metrics["run_id"] = tracker.run_id  # type: ignore[assignment]
    log.info("trained %s for %d steps: %s", model_cfg.name, trainer.global_step, metrics)
    return metrics


def transform_record(data_cfg: DataConfig) -> dict[str, Any]:
    """The preprocessing a checkpoint was trained with, saved beside its weights: evaluation and serving
    must feed it the same tensors (radfm.data.transforms.checkpoint_transform reads it back)."""
    from dataclasses import asdict

    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(data_cfg.transform).items()}


def merged_for_export(model: Any) -> Any:
    """A LoRA-wrapped LM is merged into plain weights so the checkpoint loads without peft."""
    import copy

    if hasattr(model.lm, "merge_and_unload"):
        model = copy.deepcopy(model)
        model.lm = model.lm.merge_and_unload()
    return model


def checkpoint_callbacks(cfg: DictConfig, run_dir: Path) -> list[Any]:
    from lightning.pytorch.callbacks import ModelCheckpoint

    ckpt_dir = run_dir / "checkpoints"
    every = ModelCheckpoint(dirpath=ckpt_dir, filename="step-{step}", every_n_train_steps=cfg.callbacks.
                            checkpoint_every_n_steps, save_top_k=-1, save_last=True)
    callbacks: list[Any] = [every]
    if cfg.callbacks.get("keep_best_by") and not cfg.trainer.get("fast_dev_run"):
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=cfg.callbacks.keep_best_by,
                                         mode="min", save_top_k=1))
    return callbacks


def resolve_ckpt_path(cfg: DictConfig, run_dir: Path) -> str | None:
    if not cfg.ckpt_path:
        return None
    if cfg.ckpt_path == "last":
        last = run_dir / "checkpoints" / "last.ckpt"
        return str(last) if last.exists() else None
    path = Path(str(cfg.ckpt_path))
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return str(path)

