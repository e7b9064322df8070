"""Hydra entry point: resolves ``conf/train.yaml`` and calls the pure ``train(cfg)``."""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

import radfm  # noqa: F401  (offline defaults before any library import)
from radfm.paths import configure_caches

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    configure_caches()
    from radfm.train.train import train

    metrics = train(cfg)
    target = cfg.get("optimized_metric")
    # The Optuna sweeper minimises what the task returns.
    return float(metrics[target]) if target and target in metrics else None
