"""Hydra entry point: resolves ``conf/train.yaml`` and calls the pure ``train(cfg)``.

Errors are reported like every ``radfm`` command (:mod:`radfm.cli_errors`): a bad override, a config value the
builder refuses, a missing manifest or a bad sample is one line and exit code 2; ``--debug`` before ``train``,
``RADFM_DEBUG=1`` or Hydra's own ``HYDRA_FULL_ERROR=1`` shows the traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

import hydra
from omegaconf import DictConfig

import radfm  # noqa: F401  (offline defaults before any library import)
from radfm.paths import configure_caches

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")
HYDRA_FULL_ERROR = "HYDRA_FULL_ERROR"

# The failure of a single run, kept here and re-raised by run() once Hydra has returned: raised inside the task,
# Hydra would first print its own "Error executing job with overrides: …" line.
_failed: list[Exception] = []


def _single_run() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.RUN


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    """The Hydra task: one training run; returns the sweep's objective (``optimized_metric``) when it has one."""
    configure_caches()
    from radfm.train.train import train

    try:
        metrics = train(cfg)
    except Exception as exc:
        if not _single_run():
            raise  # a sweep records the failed trial and names its overrides
        _failed.append(exc)
        return None
    target = cfg.get("optimized_metric")
    # The Optuna sweeper minimises what the task returns.
    return float(metrics[target]) if target and target in metrics else None


def run(argv: Sequence[str] | None = None, *, debug: bool | None = None, prog: str = "radfm train",
        argv0: str | None = None) -> int:
    """Run training with the Hydra command line ``argv`` (overrides, ``-m``, ``--cfg job`` …) → exit code:
    0 done, 2 a known error (one line on stderr), 1 a bug (its traceback)."""
    from radfm.cli_errors import debug_enabled, env_true, run_guarded

    args = list(sys.argv[1:] if argv is None else argv)
    # HYDRA_FULL_ERROR=1 set by the user asks for the whole traceback: it counts as --debug.
    debug = debug_enabled(debug) or env_true(HYDRA_FULL_ERROR)

    def call() -> int:
        saved_argv, saved_full = sys.argv, os.environ.get(HYDRA_FULL_ERROR)
        sys.argv = [argv0 or sys.argv[0], *args]
        # Hydra prints its own (trimmed) traceback and exits 1 unless HYDRA_FULL_ERROR is set, when it re-raises:
        # set it for this call so the error reaches run_guarded, which prints one line or the full traceback.
        os.environ[HYDRA_FULL_ERROR] = "1"
        _failed.clear()
        try:
            hydra_main()
        finally:
            sys.argv = saved_argv
            if saved_full is None:
                os.environ.pop(HYDRA_FULL_ERROR, None)
            else:
                os.environ[HYDRA_FULL_ERROR] = saved_full
        if _failed:
            raise _failed.pop()
        return 0

    return run_guarded(prog, call, debug)


def main() -> None:
    """``python -m radfm.train [OVERRIDES…]``: :func:`run` on ``sys.argv``, exiting with its code."""
    sys.exit(run(sys.argv[1:], prog="python -m radfm.train"))
