"""One builder of a run: the single process and every Ray worker assemble the same parts from the composed config.

Everything here reads the composed config or what ``instantiate`` built from it; no option has a second
default in code.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from radfm.data.answer_targets import answer_targets, target_names
from radfm.data.cache import TensorCache
from radfm.data.config import DataConfig
from radfm.data.datamodule import RadFMDataModule
from radfm.data.errors import Quarantine
from radfm.data.labels import label_names
from radfm.data.manifest import read_manifest
from radfm.data.profile import with_profile
from radfm.model.config import RadFMConfig
from radfm.model.tokenizer import RadFMTokenizer
from radfm.train.init_from import initial_model
from radfm.train.module import RadFMLitModule
from radfm.train.objectives import Objective

log = logging.getLogger(__name__)

TRAINER_KEYS = ("accelerator", "devices", "strategy", "precision", "max_steps", "max_epochs", "val_check_interval",
                "check_val_every_n_epoch", "limit_val_batches", "gradient_clip_val", "accumulate_grad_batches",
                "log_every_n_steps", "fast_dev_run", "deterministic", "num_sanity_val_steps")


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


def _instantiate(node: Any, where: str) -> Any:
    """``instantiate(node)``; a failure is one line that names the config key."""
    try:
        return instantiate(node, _convert_="all")
    except Exception as exc:  # Hydra wraps the cause in a multi-line InstantiationException
        cause = exc.__cause__ or exc
        raise ValueError(f"{where}: {' '.join(str(cause).split())}") from None


def build_data_config(cfg: DictConfig) -> DataConfig:
    data_cfg = _instantiate(cfg.data, "data")
    check_depth_buckets(data_cfg.transform.depth_buckets, int(cfg.model.vision.patch_depth))
    return data_cfg


def train_label_names(manifest: str | Path, source: str = "labels") -> list[str]:
    """The sorted label vocabulary of the manifest's training rows (:func:`radfm.data.labels.label_names`)."""
    samples = read_manifest(manifest, on_error="quarantine", quarantine=Quarantine())
    if source == "answers":
        return target_names(answer_targets([s for s in with_profile(samples, manifest) if s.split == "train"]))
    return sorted({name for s in samples if s.split == "train" for name in (label_names(s, source) or ())})


def build_objectives(cfg: DictConfig) -> list[Objective]:
    """The objectives of ``cfg.objective`` (composed from ``conf/objective/*.yaml``), in order; weight 0 = off.

    Each entry names its class (``_target_``) and states its ``weight``; a missing one, an unknown class or a
    refused option fails here, before any training, with a message that names the key.
    """
    out = []
    for name, node in (cfg.get("objective") or {}).items():
        where = f"objective.{name}"
        if not isinstance(node, DictConfig) or "_target_" not in node:
            raise ValueError(f"{where} has no _target_: every objective names its class "
                             "(e.g. radfm.train.objectives.LabelHead; see conf/objective/)")
        if node.get("weight") is None:
            raise ValueError(f"{where}.weight is missing: every objective states its weight")
        objective = _instantiate(node, where)
        if not isinstance(objective, Objective):
            raise ValueError(f"{where}: {node._target_} is not a radfm.train.objectives.Objective")
        if objective.weight == 0:
            log.info("%s has weight 0: left out", where)
            continue
        objective.name = str(name)
        out.append(objective)
    if not out:
        raise ValueError("no objective with a weight > 0 in cfg.objective: e.g. objective=[answer]")
    return out


def build_stages(cfg: DictConfig) -> list[Any]:
    """The Lightning callbacks of ``cfg.callbacks`` that name a ``_target_`` (stages such as the vision warm-up)."""
    return [_instantiate(node, f"callbacks.{key}") for key, node in (cfg.get("callbacks") or {}).items()
            if isinstance(node, DictConfig) and "_target_" in node]


def build_module(cfg: DictConfig, model_cfg: RadFMConfig, tokenizer: RadFMTokenizer,
                 objectives: list[Objective] | None = None, data_cfg: DataConfig | None = None,
                 lazy: bool = False) -> RadFMLitModule:
    """The LightningModule as the composed config says (``objectives`` default: ``cfg.objective``'s).

    ``lazy``: the model's parameters on the meta device, ``init_from`` not read (a sharded run's rank > 0,
    which gets rank 0's weights after sharding: radfm.train.lazy_init)."""
    objectives = build_objectives(cfg) if objectives is None else objectives
    names = None
    if any(o.needs_label_names for o in objectives):
        data_cfg = data_cfg or build_data_config(cfg)
        names = train_label_names(data_cfg.manifest, data_cfg.label_source)
    lr_scale = cfg.optim.get("lr_scale")
    model = None
    if lazy:
        from radfm.model import factory
        from radfm.train.lazy_init import params_on_meta

        with params_on_meta():
            model = factory.build_model(model_cfg, tokenizer)
    elif cfg.get("init_from"):
        torch.manual_seed(cfg.seed)  # the same draws for what the saved model does not hold (objective heads)
        model = initial_model(cfg.init_from, model_cfg, tokenizer)
    module = RadFMLitModule(model_cfg, tokenizer, objectives, model=model,
                            optimizer=instantiate(cfg.optim.optimizer), scheduler=instantiate(cfg.optim.scheduler),
                            freeze=cfg.freeze, lora=OmegaConf.to_container(cfg.lora) if cfg.lora else None,
                            seed=cfg.seed, lr_scale=OmegaConf.to_container(lr_scale) if lr_scale else None,
                            label_names=names)
    module.built_lazily = lazy
    return module


@dataclass
class Run:
    """The parts of one training run, as every process builds them."""

    model_cfg: RadFMConfig
    data_cfg: DataConfig
    datamodule: RadFMDataModule
    module: RadFMLitModule
    stages: list[Any]


def build_run(cfg: DictConfig, tokenizer: RadFMTokenizer, quarantine_path: Path | None = None,
              setup: bool = True, lazy: bool = False) -> Run:
    """Data config, datamodule (set up: every sample checked once), module and stages; a config that cannot
    run (a stage with nothing to train, a wrong objective) fails here, before a trainer starts.

    ``lazy``: build the model without weights (:func:`build_module`), unless a stage trains it before the
    fit shards it (a vision warm-up with steps runs in the fit's setup, on every rank's own weights)."""
    model_cfg = build_model_config(cfg)
    data_cfg = build_data_config(cfg)
    stages = build_stages(cfg)
    dm = RadFMDataModule(data_cfg, tokenizer, cache=TensorCache(Path(str(cfg.paths.cache_dir)) / "tensors"),
                         quarantine_path=quarantine_path)
    if setup:
        dm.setup()
    if lazy and any(getattr(stage, "steps", 0) for stage in stages):
        log.info("building the whole model on this rank: a stage trains it before sharding")
        lazy = False
    module = build_module(cfg, model_cfg, tokenizer, data_cfg=data_cfg, lazy=lazy)
    for stage in stages:
        if hasattr(stage, "check"):
            stage.check(module)
    return Run(model_cfg, data_cfg, dm, module, stages)


def fit(trainer: Any, run: Run, ckpt_path: str | None) -> None:
    """``trainer.fit`` on the run's module and data, resuming from ``ckpt_path`` when given.

    The path is set on the trainer before the fit (Lightning's ``trainer.ckpt_path``, equivalent to
    ``fit(ckpt_path=…)``): a path passed to ``fit`` is visible to callbacks only after their ``setup``, and stages
    such as the vision warm-up must know in ``setup`` that the checkpoint will bring their weights.
    """
    trainer.ckpt_path = ckpt_path
    trainer.fit(run.module, datamodule=run.datamodule)


def build_trainer_kwargs(cfg: DictConfig) -> dict[str, Any]:
    t = cfg.trainer
    return {k: t[k] for k in TRAINER_KEYS if k in t}


def stage_metrics(stages: list[Any]) -> dict[str, float]:
    """What the stages measured (e.g. ``warmup/seconds``), restored from the checkpoint on a resumed run."""
    out: dict[str, float] = {}
    for stage in stages:
        out.update(getattr(stage, "stats", {}) or {})
    return out


def transform_record(data_cfg: DataConfig) -> dict[str, Any]:
    """The preprocessing a checkpoint was trained with, saved beside its weights: evaluation and serving
    must feed it the same tensors (radfm.data.transforms.checkpoint_transform reads it back)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(data_cfg.transform).items()}


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
