"""Make sure the configured dataset exists: generate MedMD-synth or import MedMNIST on first use."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def ensure_dataset(data_cfg: Any) -> Path:
    """Return the manifest path of ``data_cfg``, creating the dataset when it is generated/imported."""
    manifest = Path(str(data_cfg.manifest))
    if manifest.exists():
        return manifest
    if "synth" in data_cfg and data_cfg.synth is not None:
        from radfm.data.synth import SynthConfig, generate

        log.info("generating %s under %s", data_cfg.name, data_cfg.root)
        return Path(generate(SynthConfig(**dict(data_cfg.synth)), Path(str(data_cfg.root))))
    if "npz" in data_cfg and data_cfg.npz:
        from radfm.data.importers import ingest_medmnist

        npz = Path(str(data_cfg.npz))
        if not npz.exists():
            raise FileNotFoundError(f"MedMNIST file {npz} does not exist (set RADFM_MEDMNIST_NPZ)")
        ingest_medmnist(npz, Path(str(data_cfg.root)), name=data_cfg.name, manifest_path=manifest)
        return manifest
    if (Path(str(data_cfg.root)) / "manifests").is_dir():
        from radfm.data.manifest import find_manifest

        return find_manifest(data_cfg.root)  # the single manifest an older `radfm ingest` wrote there
    raise FileNotFoundError(f"manifest {manifest} does not exist: run `radfm ingest …` or `radfm synth` first")
