"""Training-throughput benchmark (not a test): one Lightning process against Ray Train with 1 and 2 workers,
on the same Hydra config (MedMD-synth, batch 4 per process, MLflow logging every step, no validation).

    python bench/train_throughput.py [--presets tiny,small] [--steps tiny=40,small=10] [--repeats 3]
                                     [--json PATH]

Every (preset, mode) run is ``radfm.train.train.train(cfg)`` in its own child process, timed from the call to
its return. Modes: ``plain`` (``trainer=cpu``: one process, torch's default threads), ``ray1``
(``trainer=ray``, 1 worker with ``{CPU: 2}``), ``ray2`` (2 workers with ``{CPU: 1}`` each). Ray runs start and
stop their own local Ray inside the call, so its start-up is counted, as a user pays it.

Figures per run, from the log times of the run's own per-step MLflow metrics (rank 0 logs every step):
- step s: (log time of the last step − log time of step ``WARMUP`` − 1) ÷ the steps in between;
- samples/s: workers × batch ÷ step s (batches are full but for one partial batch per epoch);
  tokens/s: samples/s × the mean tokens per sample of rank 0's batches (the module's
  ``train/tokens_per_s`` ÷ ``train/samples_per_s`` per step);
- start-up s: from the ``train(cfg)`` call to the first step's log (config, data check, model build, and for
  Ray: ``ray.init``, worker start, process group, each worker's model and data set-up);
- finish s: from the last step's log to the return (final checkpoint, model directory, MLflow artifacts,
  Ray shutdown).
A warm-up run per preset (plain, 4 steps) fills the tensor cache and the OS file cache first. The machine may
be shared, so the three modes alternate ``--repeats`` times; the table shows the best repeat of each with the
median beside it. Every repeat of a mode trains the same batches in the same order (``plain`` and ``ray1``
the very same sequence), so the per-step minimum over repeats — the floor — is the least-disturbed time of
each step; the step overhead of Ray is read from floors. ``others' cores``: CPU that processes outside this
run kept busy during its steps (``/proc/stat`` minus this run's process tree, Ray's processes included).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RAY = ["trainer=ray", "trainer.ray.checkpoint_every_n_steps=100000", "trainer.ray.max_failures=0"]
MODES = {
    "plain": ["trainer=cpu"],
    "ray1": [*RAY, "trainer.ray.num_workers=1", "trainer.ray.resources_per_worker={CPU: 2}"],
    "ray2": [*RAY, "trainer.ray.num_workers=2", "trainer.ray.resources_per_worker={CPU: 1}"],
}
WORKERS = {"plain": 1, "ray1": 1, "ray2": 2}
DEFAULT_STEPS = {"tiny": 40, "small": 10}
BATCH = 4
WARMUP = 2
COMMON = [
    "data.synth.n_samples=24", f"data.batch_size_2d={BATCH}", f"data.batch_size_3d={BATCH}",
    "trainer.limit_val_batches=0", "trainer.log_every_n_steps=1", "logger.log_system_metrics=false",
    "callbacks.keep_best_by=null", "callbacks.checkpoint_every_n_steps=100000",
]
ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1"}


# ---- child: one run -------------------------------------------------------------------------------------
def compose(home: Path, preset: str, mode: str, steps: int, run_name: str) -> Any:
    from hydra import compose as hcompose
    from hydra import initialize_config_dir
    from omegaconf import open_dict

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hcompose(config_name="train", overrides=[
            f"paths.home={home}", f"paths.data_dir={home}/data",
            f"paths.mlflow_uri=sqlite:///{home}/mlflow.db",
            f"model={preset}", *MODES[mode], *COMMON, f"trainer.max_steps={steps}", f"run_name={run_name}"])
    with open_dict(cfg):
        cfg.paths.runs_dir = str(home / "runs")
    return cfg


class CpuSampler:
    """Every ``period`` s: the machine's busy CPU seconds and those of this process and its descendants (the
    Ray processes included), so that ``others_cores`` = what other processes kept busy over a window."""

    def __init__(self, period: float = 0.5) -> None:
        import psutil

        self.psutil, self.period = psutil, period
        self.me = psutil.Process()
        self.seen: dict[int, float] = {}
        self.samples: list[tuple[float, float, float]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _ours(self) -> float:
        for proc in [self.me, *self.me.children(recursive=True)]:
            with contextlib.suppress(self.psutil.Error):
                t = proc.cpu_times()
                self.seen[proc.pid] = max(self.seen.get(proc.pid, 0.0), t.user + t.system)
        return sum(self.seen.values())

    def _run(self) -> None:
        while not self.stop.is_set():
            c = self.psutil.cpu_times()
            busy = c.user + c.nice + c.system + c.irq + c.softirq + getattr(c, "steal", 0.0)
            self.samples.append((time.time(), busy, self._ours()))
            self.stop.wait(self.period)

    def others_cores(self, t0: float, t1: float) -> float | None:
        inside = [s for s in self.samples if t0 <= s[0] <= t1]
        if len(inside) < 2:
            return None
        (a, busy0, ours0), (b, busy1, ours1) = inside[0], inside[-1]
        return max(0.0, ((busy1 - busy0) - (ours1 - ours0)) / (b - a))


def child(home: Path, preset: str, mode: str, steps: int, run_name: str) -> dict[str, Any]:
    import mlflow
    import torch

    from radfm.train.train import train

    cfg = compose(home, preset, mode, steps, run_name)
    load0 = os.getloadavg()[0]
    sampler = CpuSampler()
    sampler.thread.start()
    t_call = time.time()
    metrics = train(cfg)
    t_end = time.time()
    sampler.stop.set()
    sampler.thread.join()
    client = mlflow.MlflowClient(tracking_uri=str(cfg.paths.mlflow_uri))

    def history(key: str) -> list[Any]:
        return sorted(client.get_metric_history(metrics["run_id"], key), key=lambda m: (m.step, m.timestamp))

    loss = history("train/loss")
    times = [m.timestamp / 1000 for m in loss]
    n = WORKERS[mode]
    sps = {m.step: m.value for m in history("train/samples_per_s")}
    tps = {m.step: m.value for m in history("train/tokens_per_s")}
    tokens_per_sample = statistics.fmean(tps[k] / sps[k] for k in sps if k >= WARMUP)
    steady = len(times) - WARMUP  # steps WARMUP..N-1, timed from the log of step WARMUP-1
    step_s = (times[-1] - times[WARMUP - 1]) / steady
    samples_per_s = n * BATCH / step_s
    return {
        "preset": preset, "mode": mode, "workers": n, "steps": int(metrics["global_step"]),
        "logged_steps": len(loss), "batch_per_worker": BATCH, "torch_threads_driver": torch.get_num_threads(),
        "samples_per_s": samples_per_s, "tokens_per_s": samples_per_s * tokens_per_sample,
        "tokens_per_sample": tokens_per_sample, "step_s": step_s,
        "startup_s": times[0] - t_call, "finish_s": t_end - times[-1], "wall_s": t_end - t_call,
        "step_log_times": [round(t - t_call, 3) for t in times],
        "others_cores_steps": sampler.others_cores(times[WARMUP - 1], times[-1]),
        "others_cores_run": sampler.others_cores(t_call, t_end),
        "worker_torch_threads": _worker_threads(Path(str(cfg.paths.runs_dir)) / run_name),
        "load_before": load0, "load_after": os.getloadavg()[0], "final_loss": metrics.get("train/loss"),
    }


def _worker_threads(run_dir: Path) -> list[int] | None:
    from radfm.train.ray_launcher import STARTS

    path = run_dir / STARTS
    return [json.loads(x)["torch_threads"] for x in path.read_text().splitlines()] if path.exists() else None


# ---- parent ---------------------------------------------------------------------------------------------
def run_child(home: Path, preset: str, mode: str, steps: int, run_name: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", json.dumps([str(home), preset, mode, steps, run_name])]
    env = {**os.environ, **ENV}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(ROOT))
    line = next((x for x in reversed(proc.stdout.splitlines()) if x.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-6000:])
        raise RuntimeError(f"{preset}/{mode} failed with exit code {proc.returncode}")
    return json.loads(line[len("RESULT "):])


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(x.split(":", 1)[1].strip() for x in Path("/proc/cpuinfo").read_text().splitlines()
                   if x.startswith("model name"))
    import torch

    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=str(ROOT)).stdout.strip()
    import ray

    return {"cpu": cpu, "nproc": os.cpu_count(), "ram_gib": round(mem, 1),
            "python": platform.python_version(),
            "torch": torch.__version__, "ray": ray.__version__, "git": commit}


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (preset, mode): the best repeat (least disturbed by neighbours) and the median of the repeats."""
    out = []
    for preset in dict.fromkeys(r["preset"] for r in rows):
        for mode in dict.fromkeys(r["mode"] for r in rows if r["preset"] == preset):
            rs = [r for r in rows if r["preset"] == preset and r["mode"] == mode]
            agg: dict[str, Any] = {"preset": preset, "mode": mode, "workers": rs[0]["workers"],
                                   "steps": rs[0]["steps"], "repeats": len(rs)}
            for key, best in (("samples_per_s", max), ("tokens_per_s", max), ("step_s", min),
                              ("startup_s", min), ("finish_s", min), ("wall_s", min)):
                values = [r[key] for r in rs]
                agg[key], agg[key + "_median"] = best(values), statistics.median(values)
            agg["load"] = [round(min(r["load_before"] for r in rs), 1),
                           round(max(r["load_after"] for r in rs), 1)]
            others = [r["others_cores_steps"] for r in rs if r.get("others_cores_steps") is not None]
            agg["others_cores"] = [round(min(others), 2), round(max(others), 2)] if others else None
            # Every repeat trains the same batches in the same order, so the per-step minimum over repeats
            # is the least-disturbed time of each step; their mean is the floor step time.
            gaps = [[b - a for a, b in zip(r["step_log_times"][WARMUP - 1:], r["step_log_times"][WARMUP:],
                                           strict=False)] for r in rs]
            agg["floor_step_s"] = statistics.fmean(min(g) for g in zip(*gaps, strict=False))
            agg["floor_samples_per_s"] = agg["workers"] * BATCH / agg["floor_step_s"]
            out.append(agg)
    for agg in out:
        base = next(b for b in out if b["preset"] == agg["preset"] and b["mode"] == "plain")
        agg["samples_per_s_vs_plain"] = agg["samples_per_s"] / base["samples_per_s"]
        agg["step_s_vs_plain"] = agg["step_s"] / base["step_s"]
        agg["step_overhead_ms"] = 1000 * (agg["step_s"] - base["step_s"])
        agg["floor_step_s_vs_plain"] = agg["floor_step_s"] / base["floor_step_s"]
        agg["floor_step_overhead_ms"] = 1000 * (agg["floor_step_s"] - base["floor_step_s"])
        agg["floor_samples_per_s_vs_plain"] = agg["floor_samples_per_s"] / base["floor_samples_per_s"]
        agg["startup_s_vs_plain"] = agg["startup_s"] / base["startup_s"]
        agg["startup_extra_s"] = agg["startup_s"] - base["startup_s"]
    return out


def table(summary: list[dict[str, Any]]) -> str:
    out = ["| preset | mode | workers × CPUs | steps | samples/s | tokens/s | step s | floor step s | "
           "floor samples/s | start-up s | finish s | wall s | floor step vs plain | "
           "floor samples/s vs plain | start-up vs plain | others' cores |",
           "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    cpus = {"plain": "1 × 2 threads", "ray1": "1 × 2", "ray2": "2 × 1"}
    for a in summary:
        others = "–".join(str(x) for x in a["others_cores"]) if a["others_cores"] else "n/a"
        out.append(
            f"| {a['preset']} | {a['mode']} | {cpus[a['mode']]} | {a['steps']} | "
            f"{a['samples_per_s']:.2f} ({a['samples_per_s_median']:.2f}) | "
            f"{a['tokens_per_s']:.0f} ({a['tokens_per_s_median']:.0f}) | "
            f"{a['step_s']:.3f} ({a['step_s_median']:.3f}) | {a['floor_step_s']:.3f} | "
            f"{a['floor_samples_per_s']:.2f} | "
            f"{a['startup_s']:.1f} ({a['startup_s_median']:.1f}) | {a['finish_s']:.1f} | {a['wall_s']:.1f} | "
            f"{a['floor_step_s_vs_plain']:.2f}× ({a['floor_step_overhead_ms']:+.0f} ms) | "
            f"{a['floor_samples_per_s_vs_plain']:.2f}× | "
            f"{a['startup_s_vs_plain']:.1f}× ({a['startup_extra_s']:+.1f} s) | {others} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="tiny,small")
    ap.add_argument("--steps", default=",".join(f"{k}={v}" for k, v in DEFAULT_STEPS.items()))
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "train_throughput.json"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        home, preset, mode, steps, run_name = json.loads(args.child)
        print("RESULT " + json.dumps(child(Path(home), preset, mode, int(steps), run_name)), flush=True)
        return

    steps = {**DEFAULT_STEPS, **{k: int(v) for k, v in (x.split("=") for x in args.steps.split(",") if x)}}
    presets, modes = args.presets.split(","), args.modes.split(",")
    if "plain" not in modes:
        modes = ["plain", *modes]
    t0 = time.time()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="radfm-train-bench-") as tmp:
        home = Path(tmp)
        for preset in presets:
            print(f"[{preset}] warm-up (data, tensor cache)", flush=True)
            run_child(home, preset, "plain", WARMUP + 2, f"warmup-{preset}")
            for rep in range(args.repeats):
                for mode in modes:
                    row = run_child(home, preset, mode, steps[preset], f"{preset}-{mode}-{rep}")
                    row["repeat"] = rep
                    rows.append(row)
                    print(f"[{preset}] {mode} #{rep}: {row['samples_per_s']:.2f} samples/s, "
                          f"step {row['step_s']:.3f} s, start-up {row['startup_s']:.1f} s, "
                          f"wall {row['wall_s']:.1f} s", flush=True)
    summary = summarise(rows)
    print("\nbest repeat (median in brackets); floor: per-step minimum over repeats; ratios from floors")
    print(table(summary))
    meta = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "command": "python bench/train_throughput.py " + " ".join(sys.argv[1:]), **machine(),
            "batch_per_worker": BATCH, "warmup_steps_excluded": WARMUP, "overrides": COMMON,
            "modes": MODES, "wall_s": round(time.time() - t0, 1)}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"meta": meta, "summary": summary, "runs": rows}, indent=2))
    print(f"\nJSON: {args.json} ({meta['wall_s']} s)")


if __name__ == "__main__":
    main()
