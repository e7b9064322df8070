"""``train(cfg) -> metrics``: pure (no Prefect); the Hydra entry point and flows call it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, open_dict

from radfm.data.errors import Quarantine
from radfm.data.manifest import read_manifest
from radfm.eval.calibration import calibrate_on_validation, calibration_options
from radfm.logs import quiet_third_party
from radfm.model import factory
from radfm.model.checkpoint import save_pretrained
from radfm.model.config import RadFMConfig
from radfm.model.tokenizer import RadFMTokenizer
from radfm.paths import configure_caches
from radfm.train.allocator import keep_freed_memory
from radfm.train.builder import (
    build_model_config,
    build_run,
    build_trainer_kwargs,
    fit,
    resolve_ckpt_path,
    stage_metrics,
    transform_record,
)
from radfm.train.data_prep import ensure_dataset
from radfm.train.init_from import copy_tokenizer
from radfm.train.lora import merged_for_export

log = logging.getLogger(__name__)


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


def train(cfg: DictConfig) -> dict[str, float]:
    """Train one model as ``cfg`` says and return its final metrics (floats)."""
    configure_caches()
    quiet_third_party()  # before Lightning's first line (the seed): each line once, no advertising
    keep_freed_memory()
    L.seed_everything(cfg.seed, workers=True)
    manifest = ensure_dataset(cfg.data)
    if str(manifest) != str(cfg.data.manifest):
        with open_dict(cfg):
            cfg.data.manifest = str(manifest)  # found under the data root (radfm.data.manifest.find_manifest)
    run_dir = run_dir_of(cfg)
    model_cfg = build_model_config(cfg)
    if cfg.get("init_from"):
        copy_tokenizer(cfg.init_from, run_dir)
    tokenizer = prepare_tokenizer(model_cfg, manifest, run_dir)
    if cfg.trainer.get("backend", "lightning") == "ray":
        from radfm.train.ray_launcher import train_with_ray

        return train_with_ray(cfg, run_dir)

    run = build_run(cfg, tokenizer, quarantine_path=run_dir / "quarantine.jsonl")
    module = run.module
    if cfg.trainer.get("compile"):
        module.model = torch.compile(module.model)
    from radfm.registry.tracking import RunTracker

    tracker = RunTracker.from_cfg(cfg, run_dir)
    callbacks = checkpoint_callbacks(cfg, run_dir)
    trainer = L.Trainer(**build_trainer_kwargs(cfg), default_root_dir=str(run_dir),
                        callbacks=[*callbacks, *run.stages], logger=tracker.lightning_logger(),
                        enable_progress_bar=False, enable_model_summary=False)
    tracker.log_start(cfg, module, run.datamodule, manifest)
    try:
        fit(trainer, run, resolve_ckpt_path(cfg, run_dir))
    except BaseException:
        tracker.fail()  # the MLflow run ends as FAILED, not left RUNNING and active in this process
        raise
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
    metrics.update(stage_metrics(run.stages))
    exported = merged_for_export(module.model)
    yes_no, min_rows = calibration_options(cfg)
    if yes_no:
        metrics.update(calibrate_on_validation(exported, tokenizer, run.datamodule, min_rows=min_rows))
    model_dir = save_pretrained(exported, tokenizer, run_dir / "model",
                                extra={"data_version": tracker.data_version,
                                       "transform": transform_record(run.data_cfg)})
    metrics["global_step"] = float(trainer.global_step)
    tracker.log_end(metrics, model_dir, callbacks)
    metrics["run_id"] = tracker.run_id  # type: ignore[assignment]
    log.info("trained %s for %d steps: %s", model_cfg.name, trainer.global_step, metrics)
    return metrics


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
