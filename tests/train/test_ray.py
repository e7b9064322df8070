"""Ray Train backend: 2 CPU workers end to end with MLflow read-back, a worker killed mid-training, and the
same under FSDP2 sharding (each worker holds half of the `small` model; sharded checkpoints; one exported file)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import mlflow
import pytest
import torch

from radfm.train.ray_launcher import PIDS_DIR, STARTS
from radfm.train.train import train

RAY = ["trainer=ray", "trainer.ray.num_workers=2", "trainer.ray.resources_per_worker={CPU: 1}",
       "trainer.ray.max_failures=2"]


def _starts(run_dir: Path) -> list[dict]:
    path = run_dir / STARTS
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_two_workers_end_to_end_with_mlflow(make_cfg, local_ray):
    # With the label head and a 2-step vision warm-up: every worker warms up before its fit (DDP then
    # broadcasts rank 0's weights), so that path runs under Ray too.
    cfg = make_cfg(*RAY, "trainer.max_steps=6", "trainer.val_check_interval=3",
                   "trainer.ray.checkpoint_every_n_steps=3", "run_name=ray-e2e", "objective=[answer,label_head]",
                   "objective.label_head.weight=1.0", "callbacks=[default,vision_warmup]",
                   "callbacks.vision_warmup.steps=2")
    metrics = train(cfg)
    run_dir = Path(cfg.paths.runs_dir) / "ray-e2e"

    assert metrics["global_step"] == 6
    assert {s["rank"] for s in _starts(run_dir)} == {0, 1}
    assert all(s["world_size"] == 2 and s["resumed_from_step"] == 0 for s in _starts(run_dir))

    client = mlflow.MlflowClient(tracking_uri=cfg.paths.mlflow_uri)
    run = client.get_run(metrics["run_id"])
    assert run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert sorted(steps) == list(range(6))  # rank 0 logged every step into the driver's run
    assert "val/loss" in run.data.metrics and "final/val_loss" in run.data.metrics
    assert run.data.params["cfg.trainer.backend"] == "ray"
    assert run.data.params["cfg.trainer.ray.num_workers"] == "2"
    assert run.data.tags["radfm.model_preset"] == "tiny" and len(run.data.tags["radfm.data_version"]) == 32
    assert int(run.data.tags["radfm.params_total"]) > 1e6
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert {"model/model.safetensors", "model/config.json", "model/tokenizer"} <= artifacts

    from radfm.model.checkpoint import load_pretrained

    model, tokenizer = load_pretrained(run_dir / "model")
    assert json.loads((run_dir / "model" / "radfm.json").read_text())["data_version"] == \
        run.data.tags["radfm.data_version"]
    assert len(tokenizer) <= model.cfg.lm.vocab_size


def _wait_for_checkpoint(storage: Path, name: str, timeout: float, worker: threading.Thread) -> None:
    """Until Ray's checkpoint manager has registered ``name`` (its snapshot lists the run's checkpoints)."""
    snapshot = storage / "checkpoint_manager_snapshot.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and worker.is_alive():
        if snapshot.exists() and name in snapshot.read_text():
            return
        time.sleep(0.2)
    raise AssertionError(f"no checkpoint {name} registered under {storage} within {timeout}s")


def _train_killing_a_worker(cfg, run_dir: Path, every: int, rank: int, timeout: float) -> tuple[int, float, dict]:
    """Train ``cfg`` in a thread, SIGKILL rank ``rank``'s worker once the step-``every`` checkpoint is registered
    and wait for the run to finish: the killed pid, the kill time and the run's metrics."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["metrics"] = train(cfg)
        except BaseException as exc:  # noqa: BLE001 (re-raised in the test thread below)
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    _wait_for_checkpoint(run_dir / "ray" / "train", f"step-{every:08d}", timeout, thread)
    pid = int((run_dir / PIDS_DIR / f"rank{rank}.pid").read_text())
    kill_time = time.time()
    os.kill(pid, signal.SIGKILL)
    thread.join(timeout * 1.5)
    assert not thread.is_alive(), "training did not finish after the worker was killed"
    if "error" in outcome:
        raise outcome["error"]
    return pid, kill_time, outcome["metrics"]


def test_killed_worker_resumes_from_last_checkpoint(make_cfg, local_ray):
    every, max_steps = 5, 30
    cfg = make_cfg(*RAY, f"trainer.max_steps={max_steps}", "trainer.val_check_interval=15",
                   f"trainer.ray.checkpoint_every_n_steps={every}", "run_name=ray-kill")
    run_dir = Path(cfg.paths.runs_dir) / "ray-kill"
    pid, kill_time, metrics = _train_killing_a_worker(cfg, run_dir, every, rank=0, timeout=240)
    assert metrics["global_step"] == max_steps

    starts = _starts(run_dir)
    first, restarted = starts[:2], starts[2:]
    assert all(s["resumed_from_step"] == 0 for s in first) and pid in {s["pid"] for s in first}
    assert len(restarted) >= 2, f"no worker-group restart recorded: {starts}"
    assert {s["rank"] for s in restarted[:2]} == {0, 1}
    resumed = {s["resumed_from_step"] for s in restarted[:2]}
    assert len(resumed) == 1, resumed  # both ranks restored the same checkpoint
    resumed_step = resumed.pop()
    assert resumed_step > 0 and resumed_step % every == 0

    # The step reached when the worker died, from rank 0's per-step MLflow metrics logged before the kill.
    client = mlflow.MlflowClient(tracking_uri=cfg.paths.mlflow_uri)
    history = client.get_metric_history(metrics["run_id"], "train/loss")
    reached = max(m.step for m in history if m.timestamp / 1000 <= kill_time) + 1
    assert reached - every <= resumed_step <= reached, (reached, resumed_step)
    assert {m.step for m in history} == set(range(max_steps))
    assert client.get_run(metrics["run_id"]).info.status == "FINISHED"


def test_fsdp_shards_small_resumes_a_killed_worker_and_exports_one_file(make_cfg, local_ray):
    """``strategy=fsdp`` on 2 workers with the ``small`` preset and a label head: each rank holds half of the
    weights, every rank writes its shard of each checkpoint, a killed worker resumes from the sharded
    checkpoint, and the gathered model is one safetensors file that loads."""
    every, max_steps = 2, 4
    overrides = [*RAY, "trainer.ray.strategy=fsdp", "model=small", f"trainer.max_steps={max_steps}",
                 f"trainer.val_check_interval={max_steps}", f"trainer.ray.checkpoint_every_n_steps={every}",
                 # fp32 compute and no validation keep it in CI's budget (bf16: tests/train/test_sharding.py)
                 "data.batch_size_2d=2", "data.batch_size_3d=1", "trainer.limit_val_batches=0",
                 "trainer.ray.shard.param_dtype=null", "objective=[answer,label_head]",
                 # each checkpoint of small with AdamW states is ~1.3 GB: keep one on disk
                 "objective.label_head.weight=1.0", "trainer.ray.keep_checkpoints=1"]
    cfg = make_cfg(*overrides, "run_name=ray-fsdp")
    run_dir = Path(cfg.paths.runs_dir) / "ray-fsdp"
    storage = run_dir / "ray" / "train"
    _, _, metrics = _train_killing_a_worker(cfg, run_dir, every, rank=1, timeout=600)
    assert metrics["global_step"] == max_steps

    starts = _starts(run_dir)
    assert all(0.45 <= s["params_held"] / s["params_total"] <= 0.55 for s in starts), starts
    assert all(s["params_total"] > 5e7 for s in starts)  # the small preset, not tiny
    # rank 1 built no weights of its own (radfm.train.lazy_init): rank 0 sent its slices after sharding
    assert {s["rank"]: s["built_lazily"] for s in starts[:2]} == {0: False, 1: True}, starts
    restarted = starts[2:]
    assert len(restarted) >= 2 and {s["resumed_from_step"] for s in restarted[:2]} >= {every}, starts

    final = next(storage.glob(f"step-{max_steps:08d}-final"))
    shards = sorted(p.name for p in (final / "checkpoint.ckpt").iterdir())
    assert {"__0_0.distcp", "__1_0.distcp", ".metadata", "meta.pt"} <= set(shards), shards

    from radfm.model.checkpoint import load_pretrained

    model, _ = load_pretrained(run_dir / "model")
    assert model.cfg.name == "small"
    assert [p.name for p in (run_dir / "model").glob("*.safetensors")] == ["model.safetensors"]
    assert all(torch.isfinite(p).all() for p in model.parameters())
    del model
    shutil.rmtree(storage)  # the checks above are done with it; the straight run below writes as much again

    # Exact resume: an uninterrupted run of the same config logs the same loss at every step, those after the
    # restart included (weights, AdamW states, schedule and data position all came back from the shards).
    straight = train(make_cfg(*overrides, "run_name=ray-fsdp-straight"))
    client = mlflow.MlflowClient(tracking_uri=cfg.paths.mlflow_uri)
    resumed_losses, straight_losses = (_last_per_step(client, m["run_id"]) for m in (metrics, straight))
    assert set(resumed_losses) == set(straight_losses) == set(range(max_steps))
    for step in range(max_steps):
        assert resumed_losses[step] == pytest.approx(straight_losses[step], rel=1e-5, abs=1e-6), step


def _last_per_step(client: mlflow.MlflowClient, run_id: str) -> dict[int, float]:
    """``train/loss`` by step, the value logged last where a restarted worker logged a step again."""
    out: dict[int, tuple[int, float]] = {}
    for m in client.get_metric_history(run_id, "train/loss"):
        if m.step not in out or m.timestamp >= out[m.step][0]:
            out[m.step] = (m.timestamp, m.value)
    return {step: value for step, (_, value) in out.items()}
