"""Helpers every benchmark shares: machine information, memory, how busy the (shared) CPUs are, tables.

The reference machine is a 2-core VM shared with other jobs: a second process also makes torch's OpenMP
barriers wait, so small ops slow down far more than one big matmul does. Every bench therefore records how
many cores *other* processes kept busy while it measured, and may wait briefly for a quiet moment first.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


# ---- memory ---------------------------------------------------------------------------------------------
def rss_mb() -> float:
    """Current resident set size (MB), read from /proc (psutil is not needed)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def peak_rss_mb() -> float:
    """Peak RSS of this process so far (ru_maxrss is in KB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- CPU contention ---------------------------------------------------------------------------------------
def busy_cpu_s() -> float:
    """CPU-seconds the whole machine has spent busy since boot (/proc/stat); NaN where it is unreadable."""
    try:
        with open("/proc/stat") as fh:
            f = [int(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    idle = f[3] + (f[4] if len(f) > 4 else 0)
    return (sum(f[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    """CPU-seconds this process has used (user + system)."""
    t = os.times()
    return t.user + t.system


class BackgroundLoad:
    """CPU cores kept busy by *other* processes while the block runs (/proc/stat minus our own CPU time);
    ``cores`` is NaN where /proc/stat cannot be read."""

    def __enter__(self) -> BackgroundLoad:
        self.cores = float("nan")
        self._start = (busy_cpu_s(), own_cpu_s(), time.perf_counter())
        return self

    def __exit__(self, *exc: object) -> None:
        busy, own, wall = busy_cpu_s(), own_cpu_s(), time.perf_counter()
        b0, o0, w0 = self._start
        if busy == busy and wall > w0:  # NaN check: /proc/stat unreadable
            self.cores = max(0.0, ((busy - b0) - (own - o0)) / (wall - w0))


class QuietWait:
    """Before a measurement, wait until other processes keep fewer than ``threshold`` cores busy over a
    ``window``-second sample: at most ``per_call`` s each time and ``budget_s`` for the whole process.
    Cheap when the machine is quiet; bounded when it is not (other people's jobs never end on our cue)."""

    def __init__(self, budget_s: float, threshold: float = 0.3, window: float = 0.2, per_call: float = 3.0) -> None:
        self.left, self.threshold, self.window, self.per_call = budget_s, threshold, window, per_call
        self.waited = 0.0

    def __call__(self) -> None:
        this_call = 0.0
        while self.left > 0 and this_call < self.per_call:
            this_call += self.window
            with BackgroundLoad() as load:
                time.sleep(self.window)
            self.left -= self.window
            self.waited += self.window
            if not load.cores >= self.threshold:  # also stops when /proc/stat is unreadable (NaN)
                return


def run_measured(cmd: list[str], env: dict[str, str]) -> float:
    """Run a child; return the share of the machine's CPUs that *other* processes used meanwhile (0…1).

    On a shared 2-core box a busy neighbour slows torch's multi-threaded reductions by orders of magnitude
    (threads wait at barriers), so every figure travels with this number.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy0, t0 = busy_cpu_s(), time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    wall, busy = time.perf_counter() - t0, busy_cpu_s() - busy0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if busy != busy:  # /proc/stat unreadable: report an idle machine rather than NaN in the JSON
        return 0.0
    return max(0.0, busy - own) / (wall * (os.cpu_count() or 1))


# ---- machine ------------------------------------------------------------------------------------------------
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git(*cmd: str) -> str:
    """Output of a git command in the repository ('' without git)."""
    try:
        return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_info(packages: Iterable[str] = ("torch",), dirty: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Date (UTC), host, CPU, cores, RAM, load average, Python and package versions, the command line and the
    git commit — what a figure needs to be re-measured. ``dirty``: JSON key → path whose uncommitted changes
    to report (a figure measured on uncommitted code says so)."""
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "host": platform.node(),
        "cpu": cpu_model(), "nproc": os.cpu_count(), "ram_gib": round(ram, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()], "python": platform.python_version(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "git_commit": git("rev-parse", "--short", "HEAD"),
    }
    for name in packages:
        try:
            info[name] = importlib.import_module(name).__version__
        except (ImportError, AttributeError):
            info[name] = None
    if "torch" in info and info["torch"]:
        import torch

        info["torch_threads"] = torch.get_num_threads()
    for key, path in (dirty or {}).items():
        info[key] = bool(git("status", "--porcelain", "--", path))
    return info


# ---- output ---------------------------------------------------------------------------------------------------
def fmt_table(headers: list[str], rows: list[list[str]]) -> str:
    """A right-aligned plain-text table."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) for c, w in zip(cells, widths))

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def write_json(path: str | Path, result: Mapping[str, Any]) -> Path:
    """Write a benchmark's result as indented JSON (parents created), say where, and return the path."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {path}")
    return path


def training_parts(cfg: Any, tokenizer_dir: str | Path) -> tuple[Any, Any, Any, Any]:
    """What ``radfm.train.train.train`` builds before its fit, for a benchmark that drives the pieces itself:
    ``(tokenizer, data_cfg, datamodule, module)``. The dataset is made if absent, the manifest check is
    skipped (``prevalidate=False``: a benchmark measures, ``train`` validates), and the tensor cache is the
    config's (``paths.cache_dir``/tensors), so images decoded by an earlier run are reused."""
    import dataclasses

    from radfm.data.cache import TensorCache
    from radfm.data.datamodule import RadFMDataModule
    from radfm.paths import configure_caches
    from radfm.train import builder as B
    from radfm.train import train as T
    from radfm.train.data_prep import ensure_dataset

    configure_caches()
    manifest = ensure_dataset(cfg.data)
    model_cfg = B.build_model_config(cfg)
    tokenizer = T.prepare_tokenizer(model_cfg, manifest, Path(tokenizer_dir))
    data_cfg = dataclasses.replace(B.build_data_config(cfg), prevalidate=False)
    dm = RadFMDataModule(data_cfg, tokenizer, cache=TensorCache(Path(str(cfg.paths.cache_dir)) / "tensors"))
    dm.setup()
    return tokenizer, data_cfg, dm, B.build_module(cfg, model_cfg, tokenizer, data_cfg=data_cfg)


# ---- a yardstick for the vision side ---------------------------------------------------------------------------
def reference_cnn(in_channels: int, channels: int, width: int, pools: int = 2) -> Any:
    """A plain CNN with the vision side's interface, for benchmarks that compare the radfm vision side with it:
    ``N×in_channels×H×W×D`` images → ``N×(H/2^pools · W/2^pools)×width`` tokens. Three stages of two 3×3
    conv blocks (C, 2C, 4C channels, BatchNorm + ReLU) with a 2× max-pool between stages (and after the last
    with ``pools=3``); each slice on its own, then the max over slices (a 2D image has one)."""
    import torch
    from torch import nn

    def block(c_in: int, c_out: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

    if pools not in (2, 3):
        raise ValueError(f"pools must be 2 or 3, got {pools}")
    c = channels

    class ReferenceCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layers = [*block(in_channels, c), *block(c, c), nn.MaxPool2d(2), *block(c, 2 * c),
                      *block(2 * c, 2 * c), nn.MaxPool2d(2), *block(2 * c, 4 * c), *block(4 * c, 4 * c)]
            self.net = nn.Sequential(*layers, *([nn.MaxPool2d(2)] if pools == 3 else []))
            self.proj = nn.Linear(4 * c, width)

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            n, d = images.shape[0], images.shape[-1]
            feats = self.net(images.permute(0, 4, 1, 2, 3).flatten(0, 1))  # (N·D)×4c×h×w
            feats = feats.unflatten(0, (n, d)).amax(dim=1)
            return self.proj(feats.flatten(2).transpose(1, 2))

    return ReferenceCNN()

