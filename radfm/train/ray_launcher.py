"""``train_with_ray(cfg, run_dir)``: the same LightningModule on N Ray Train workers (``TorchTrainer``).

The driver owns the MLflow run (:class:`RunTracker`) and logs what a one-process run logs (config, data
version, git commit, counts, final metrics, the model directory); rank 0 logs the per-step metrics into that
same run through ``MLFlowLogger(run_id=…)``.

Checkpoints and resume: every ``trainer.ray.checkpoint_every_n_steps`` optimiser steps all ranks save a
full Lightning checkpoint (weights, optimizer, scheduler, step, data position) and call ``ray.train.report``;
rank 0 (and any rank that wrote shard files, under FSDP/DeepSpeed) hands Ray its directory, which Ray copies
to ``storage_path`` and records as the run's latest checkpoint. When a worker dies, Ray
(``FailureConfig(max_failures)``) restarts the whole worker group; each new worker takes
``ray.train.get_checkpoint()`` and passes the ``.ckpt`` inside it to ``Trainer.fit(ckpt_path=…)``, so
training continues from the last reported step and loses at most one checkpoint interval. The last report
also holds the ``save_pretrained`` directory, which the driver copies to ``run_dir/model``.

Multi-node: ``run_dir`` (tokenizer, markers), the dataset and ``storage_path`` must be on storage every node
sees (NFS, or ``s3://`` for ``storage_path``).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from radfm.train.sharding import ShardPlan, local_numel

log = logging.getLogger(__name__)

CKPT_NAME = "checkpoint.ckpt"  # ray.train.lightning.RayTrainReportCallback.CHECKPOINT_NAME
MODEL_SUBDIR = "model"
RAY_RUN_NAME = "train"  # the run folder under storage_path (Ray restores a run found there)
PIDS_DIR = "worker_pids"  # rank{r}.pid: the process of each live worker (operators and tests kill by it)
STARTS = "starts.jsonl"  # a line per worker (re)start: rank, pid, resumed_from_step, world_size, threads
LOCAL_RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    # On Linux Ray binds its node to the first routable interface even for a one-machine instance;
    # this keeps every Ray port on 127.0.0.1.
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}
PATH_KEYS = ("home", "data_dir", "runs_dir", "cache_dir", "checkpoints_dir", "mlflow_artifacts")


# ---- driver ---------------------------------------------------------------------------------------------
def start_local_ray(num_cpus: int | None = None) -> None:
    """Start a Ray instance on this machine only (loopback, no dashboard, no telemetry, no auth token)."""
    for key, value in LOCAL_RAY_ENV.items():
        os.environ.setdefault(key, value)
    import ray
    from ray._private import ray_constants

    if os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0":
        ray_constants.ENABLE_RAY_CLUSTER = False  # read at import; ray may have been imported before us
    # "local", not None: None would join any `ray start` instance on this machine (another user's, on a
    # shared box). Without the dashboard Ray's state API is absent and Ray Train's placement-group cleaner
    # warns about it every second, hence the ERROR level for Ray's own processes; errors reach the driver.
    # _node_ip_address pins every Ray port to loopback even if the env var above is overridden; the setup hook
    # (radfm/services/loopback.py) keeps torch's rendezvous store of Ray Train's rank 0 there too.
    ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
             configure_logging=False, logging_config=ray.LoggingConfig(log_level="ERROR"),
             _node_ip_address="127.0.0.1",
             runtime_env={"worker_process_setup_hook": "radfm.services.loopback.loopback_torch_store"})


def connect_ray(rcfg: DictConfig, needed_cpus: float) -> bool:
    """Connect to ``rcfg.address`` (a cluster) or start a local Ray; True when this call started Ray."""
    import ray

    if ray.is_initialized():
        return False
    if rcfg.get("address"):
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        address = str(rcfg.address)
        if address.split(":")[0] in ("127.0.0.1", "localhost"):
            # Without it a driver joining a loopback head picks the machine's network IP as its own node address
            # and waits forever for a node that never appears (seen with `radfm services up`'s Ray head).
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        # A loopback head (`radfm services up`) gets the same loopback torch store as a local Ray.
        ray.init(address=address, configure_logging=False,
                 runtime_env={"worker_process_setup_hook": "radfm.services.loopback.loopback_torch_store"}
                 if address.split(":")[0] in ("127.0.0.1", "localhost") else None)
        return True
    cpus = int(rcfg.get("local_num_cpus") or os.cpu_count() or 1)
    if needed_cpus > cpus:
        log.warning("the workers ask for %s CPUs and this machine has %d: oversubscribing the local Ray",
                    needed_cpus, cpus)
        cpus = int(-(-needed_cpus // 1))
    start_local_ray(cpus)
    return True


def absolute_paths(cfg: DictConfig) -> DictConfig:
    """A copy whose ``paths.*`` (and the SQLite tracking URI) are absolute: Ray workers have another cwd."""
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        for key in PATH_KEYS:
            value = cfg.paths.get(key)
            if value is not None and "://" not in str(value):
                cfg.paths[key] = str(Path(str(value)).expanduser().resolve())
        uri = str(cfg.paths.get("mlflow_uri") or "")
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            cfg.paths.mlflow_uri = "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    return cfg


def param_counts_on_meta(cfg: DictConfig, tokenizer: Any) -> Any:
    """The module's counts and preset without allocating weights (a 13B run's driver has no GPU)."""
    import torch

    from radfm.train.builder import build_model_config
    from radfm.train.module import RadFMLitModule

    with torch.device("meta"):
        return RadFMLitModule(build_model_config(cfg), tokenizer, objectives=[], freeze=cfg.freeze,
                              lora=OmegaConf.to_container(cfg.lora) if cfg.lora else None)


def train_with_ray(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train as ``cfg`` says on ``cfg.trainer.ray.num_workers`` Ray workers; metrics like :func:`train`."""
    from radfm.data.cache import TensorCache
    from radfm.data.datamodule import RadFMDataModule
    from radfm.eval.calibration import calibrate_checkpoint, calibration_options
    from radfm.model.tokenizer import RadFMTokenizer
    from radfm.registry.tracking import RunTracker
    from radfm.train.builder import build_data_config, build_model_config

    run_dir = Path(run_dir).resolve()
    rcfg = cfg.trainer.ray
    wcfg = absolute_paths(cfg)
    model_cfg = build_model_config(wcfg)
    tokenizer = RadFMTokenizer.load(run_dir / "tokenizer", model_cfg.num_image_tokens)
    # Validate the data once here (it also fills the tensor cache the workers read) before any worker starts.
    dm = RadFMDataModule(build_data_config(wcfg), tokenizer,
                         cache=TensorCache(Path(str(wcfg.paths.cache_dir)) / "tensors"),
                         quarantine_path=run_dir / "quarantine.jsonl")
    dm.setup()
    resources = dict(OmegaConf.to_container(rcfg.resources_per_worker, resolve=True) or {})
    started = connect_ray(rcfg, float(resources.get("CPU", 1)) * int(rcfg.num_workers))

    tracker = RunTracker.from_cfg(cfg, run_dir)
    try:
        tracker.log_start(cfg, param_counts_on_meta(wcfg, tokenizer), dm, Path(str(cfg.data.manifest)))
        storage = str(rcfg.get("storage_path") or run_dir / "ray")
        _clear_earlier_run(cfg, storage, run_dir)
        loop_config = {
            "cfg": OmegaConf.to_container(wcfg, resolve=True),
            "run_dir": str(run_dir),
            "run_id": tracker.run_id,
            "tracking_uri": str(wcfg.logger.tracking_uri) if tracker.enabled else None,
            "data_version": tracker.data_version,
        }
        result = _torch_trainer(rcfg, storage, loop_config, resources).fit()
        metrics = _collect(result, run_dir, storage)
        yes_no, min_rows = calibration_options(cfg)
        if yes_no:  # on the driver, after the workers: the exported model's offset (radfm.eval.calibration)
            metrics.update(calibrate_checkpoint(run_dir / MODEL_SUBDIR, dm, min_rows=min_rows))
        tracker.log_end(metrics, run_dir / MODEL_SUBDIR, [])
    except BaseException:
        tracker.fail()  # the MLflow run ends as FAILED, not left RUNNING
        raise
    finally:
        if started:
            import ray

            ray.shutdown()
    metrics["run_id"] = tracker.run_id  # type: ignore[assignment]
    log.info("trained %s on %d Ray workers for %d steps: %s", model_cfg.name, rcfg.num_workers,
             metrics["global_step"], metrics)
    return metrics


def _clear_earlier_run(cfg: DictConfig, storage: str, run_dir: Path) -> None:
    """Ray restores a run found under ``storage/train``; only ``ckpt_path=last`` asks for that."""
    if cfg.get("ckpt_path") != "last" and "://" not in storage and (Path(storage) / RAY_RUN_NAME).exists():
        shutil.rmtree(Path(storage) / RAY_RUN_NAME)
    shutil.rmtree(run_dir / PIDS_DIR, ignore_errors=True)  # markers of an earlier run of this name
    (run_dir / STARTS).unlink(missing_ok=True)


def _torch_trainer(rcfg: DictConfig, storage: str, loop_config: dict[str, Any], resources: dict[str, Any]) -> Any:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    return TorchTrainer(
        _train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=int(rcfg.num_workers), use_gpu=bool(rcfg.use_gpu),
                                     resources_per_worker=resources or None),
        run_config=RunConfig(
            name=RAY_RUN_NAME, storage_path=storage,
            checkpoint_config=CheckpointConfig(num_to_keep=rcfg.get("keep_checkpoints") or None),
            failure_config=FailureConfig(max_failures=int(rcfg.max_failures)),
            worker_runtime_env={"env_vars": _worker_env()},
        ),
    )


def _collect(result: Any, run_dir: Path, storage: str) -> dict[str, Any]:
    """Copy the last reported model into the run dir; the metrics the workers reported last."""
    if result.checkpoint is None:
        raise RuntimeError(f"Ray Train finished without a checkpoint; see the logs under {storage}")
    model_dir = run_dir / MODEL_SUBDIR
    with result.checkpoint.as_directory() as ckpt_dir:
        if model_dir.exists():
            shutil.rmtree(model_dir)
        shutil.copytree(Path(ckpt_dir) / MODEL_SUBDIR, model_dir)
    reported = dict(result.metrics or {})
    metrics: dict[str, Any] = {k: float(v) for k, v in reported.items()
                               if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "epoch")}
    metrics["global_step"] = float(reported.get("step", 0))
    return metrics


def _worker_env() -> dict[str, str]:
    env = {k: os.environ[k] for k in ("RAY_USAGE_STATS_ENABLED", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                                      "MLFLOW_DISABLE_TELEMETRY") if k in os.environ}
    import ray

    if ray.util.get_node_ip_address() in ("127.0.0.1", "::1") and "GLOO_SOCKET_IFNAME" not in os.environ:
        env["GLOO_SOCKET_IFNAME"] = "lo"  # a one-machine Ray: keep the gloo rendezvous on loopback too
    return env


# ---- workers --------------------------------------------------------------------------------------------
def _train_loop_per_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: datamodule and module from the config, Lightning under Ray's strategy."""
    import lightning as L
    import ray.train
    from ray.train.lightning import RayLightningEnvironment, prepare_trainer

    from radfm.logs import quiet_third_party
    from radfm.model.tokenizer import RadFMTokenizer
    from radfm.paths import configure_caches
    from radfm.train import builder
    from radfm.train.allocator import keep_freed_memory

    quiet_third_party()
    cfg = OmegaConf.create(config["cfg"])
    run_dir = Path(config["run_dir"])
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    configure_caches()
    keep_freed_memory()
    L.seed_everything(cfg.seed, workers=True)
    (run_dir / PIDS_DIR).mkdir(parents=True, exist_ok=True)
    (run_dir / PIDS_DIR / f"rank{rank}.pid").write_text(str(os.getpid()))

    model_cfg = builder.build_model_config(cfg)
    tokenizer = RadFMTokenizer.load(run_dir / "tokenizer", model_cfg.num_image_tokens)
    # Each rank warms up (a stage, in the fit's setup) on its own shard; DDP then broadcasts rank 0's weights
    # when it wraps the module.
    rcfg = cfg.trainer.ray
    kwargs = {k: v for k, v in builder.build_trainer_kwargs(cfg).items()
              if k not in ("accelerator", "devices", "strategy")}
    sharded = _sharded(rcfg, kwargs)
    plan = ShardPlan.from_dict(_plain(rcfg.get("shard"))) if sharded else None
    run = builder.build_run(cfg, tokenizer, setup=False, lazy=plan is not None and plan.lazy_init and rank != 0)
    logger: Any = False
    if rank == 0 and config.get("run_id"):
        from lightning.pytorch.loggers import MLFlowLogger

        logger = MLFlowLogger(tracking_uri=config["tracking_uri"], run_id=config["run_id"], log_model=False)

    report = _report_callback(int(rcfg.checkpoint_every_n_steps), run_dir, tokenizer,
                              {"data_version": config.get("data_version", "unknown"),
                               "transform": builder.transform_record(run.data_cfg)})
    if sharded:
        run.module.shard_plan = plan
    trainer = L.Trainer(**kwargs, accelerator="gpu" if rcfg.use_gpu else "cpu", devices="auto",
                        strategy=_strategy(rcfg), plugins=[RayLightningEnvironment()],
                        use_distributed_sampler=False,  # ModalityBatchSampler shards by rank itself
                        callbacks=[report, *run.stages], logger=logger, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(run_dir))
    if not sharded:  # Ray's check knows only its own strategy classes (the FSDP2 one is ours)
        trainer = prepare_trainer(trainer)

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:  # a fresh run: an explicit ckpt_path (or a one-process run's last.ckpt) if given
        builder.fit(trainer, run, builder.resolve_ckpt_path(cfg, run_dir))
        return
    with checkpoint.as_directory() as ckpt_dir:
        builder.fit(trainer, run, str(Path(ckpt_dir) / CKPT_NAME))


def _plain(node: Any) -> dict[str, Any]:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})


def _sharded(rcfg: DictConfig, trainer_kwargs: dict[str, Any]) -> bool:
    """True for ``strategy=fsdp``; its mixed precision is the shard plan's, not Lightning's precision flag."""
    if str(rcfg.get("strategy") or "ddp") != "fsdp":
        return False
    precision = str(trainer_kwargs.get("precision", "32-true"))
    if precision not in ("32", "32-true"):
        raise ValueError(f"trainer.precision={precision} with trainer.ray.strategy=fsdp: keep 32-true and set "
                         "trainer.ray.shard.param_dtype=bfloat16 (FSDP's mixed precision, fp32 master weights)")
    return True


def _strategy(rcfg: DictConfig) -> Any:
    """DDP (Ray's; every worker holds the whole model) or FSDP2 (ours; each holds 1/N of it)."""
    from ray.train import lightning as rl

    from radfm.train.sharding import ray_fsdp_strategy

    name = str(rcfg.get("strategy") or "ddp")
    if name == "ddp":
        return rl.RayDDPStrategy(**_plain(rcfg.get("strategy_kwargs")))
    if name == "fsdp":
        return ray_fsdp_strategy()
    raise ValueError(f"trainer.ray.strategy={name!r}: choose ddp or fsdp (FSDP2 with trainer.ray.shard; "
                     "DeepSpeed is not installed and was never run)")


def _report_callback(every: int, run_dir: Path, tokenizer: Any, extra: dict[str, Any]) -> Any:
    """Ray's report callback, reporting every ``every`` steps (and at the end) instead of every epoch."""
    import ray.train
    import torch
    from ray.train import Checkpoint
    from ray.train.lightning import RayTrainReportCallback

    from radfm.model.checkpoint import save_pretrained

    class StepReportCallback(RayTrainReportCallback):
        def __init__(self) -> None:
            super().__init__()
            self.last_reported = -1

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            ctx = ray.train.get_context()
            # global_step is the restored one here: what this start resumed from (0 for a fresh start).
            held, total = local_numel(pl_module)  # after sharding: this rank's part of the weights
            line = {"rank": trainer.global_rank, "pid": os.getpid(),
                    "resumed_from_step": trainer.global_step, "world_size": ctx.get_world_size(),
                    "torch_threads": torch.get_num_threads(), "time": time.time(),
                    "params_held": held, "params_total": total,
                    "built_lazily": bool(getattr(pl_module, "built_lazily", False))}
            with open(run_dir / STARTS, "a") as f:
                f.write(json.dumps(line) + "\n")
            self.last_reported = trainer.global_step

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            pass  # reports go by steps (below), not by epochs

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                               batch_idx: int) -> None:
            step = trainer.global_step
            final = trainer.max_steps > 0 and step >= trainer.max_steps
            if step != self.last_reported and step % every == 0 and not final:
                self._report(trainer, pl_module, with_model=False)

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            self._report(trainer, pl_module, with_model=True)

        def _report(self, trainer: Any, pl_module: Any, with_model: bool) -> None:
            step = trainer.global_step
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
            metrics.update(step=step, epoch=trainer.current_epoch)
            with tempfile.TemporaryDirectory(prefix=f"{Path(self.tmpdir_prefix).name}-{step}-") as tmp:
                trainer.save_checkpoint(str(Path(tmp) / CKPT_NAME), weights_only=False)  # collective
                if with_model:
                    exported = _exported(pl_module, tokenizer)  # collective under FSDP
                    if trainer.global_rank == 0:
                        save_pretrained(exported, tokenizer, Path(tmp) / MODEL_SUBDIR, extra=extra)
                # Every rank reports (it is a barrier). Rank 0 carries the checkpoint; under DDP the others
                # wrote nothing, under sharded strategies their shard files, which Ray merges into one dir.
                wrote = trainer.global_rank == 0 or any(Path(tmp).iterdir())
                checkpoint = Checkpoint.from_directory(tmp) if wrote else None
                ray.train.report(metrics, checkpoint=checkpoint,
                                 checkpoint_dir_name=f"step-{step:08d}" + ("-final" if with_model else ""))
            self.last_reported = step

    return StepReportCallback()


def _exported(pl_module: Any, tokenizer: Any) -> Any:
    """The model rank 0 saves (LoRA merged), None on other ranks; a sharded model is gathered into one plain
    copy on rank 0 (every rank must call this: the gather is a collective)."""
    from radfm.train.lora import merged_for_export
    from radfm.train.sharding import full_state_dict, unsharded_copy

    if not getattr(pl_module, "_sharded", False):
        return merged_for_export(pl_module.model) if pl_module.global_rank == 0 else None
    state = full_state_dict(pl_module.model)
    if pl_module.global_rank != 0:
        return None
    plain = unsharded_copy(pl_module.model, state, tokenizer, pl_module.hparams.get("lora"))
    return merged_for_export(plain, in_place=True)
