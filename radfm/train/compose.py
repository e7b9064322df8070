"""Compose the Hydra training config outside ``@hydra.main`` (flows, notebooks, tests)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from radfm.train.entry import CONF_DIR


def compose(overrides: Sequence[str] = (), config_name: str = "train") -> DictConfig:
    """``conf/<config_name>.yaml`` with Hydra ``overrides`` applied, exactly as ``radfm train`` would see it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    # A previous compose (or a Hydra app in this process) leaves the global instance set; compose needs a fresh one.
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3", job_name="radfm"):
        return hydra_compose(config_name=config_name, overrides=list(overrides))


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain data (what a run records, and what a cache key hashes)."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def fingerprint(cfg: DictConfig | dict[str, Any], *extra: str) -> str:
    """A short stable hash of the resolved config (and e.g. the data version): names a reproducible run."""
    data = to_container(cfg) if isinstance(cfg, DictConfig) else cfg
    # How often progress is printed changes nothing the run computes: it must not rename the run (or miss the
    # flows' cache).
    callbacks = data.get("callbacks") if isinstance(data, dict) else None
    if isinstance(callbacks, dict) and "progress" in callbacks:
        data = {**data, "callbacks": {k: v for k, v in callbacks.items() if k != "progress"}}
    blob = json.dumps([data, list(extra)], sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]
