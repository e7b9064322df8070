"""Every path the platform writes derives from one root, ``RADFM_HOME`` (default ``./.radfm``)."""

from __future__ import annotations

import os
from pathlib import Path


def radfm_home() -> Path:
    """The root under which runs, caches, checkpoints and services keep their files."""
    home = Path(os.environ.get("RADFM_HOME", ".radfm")).expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    return home


def home_path(*parts: str) -> Path:
    """A sub-directory of ``RADFM_HOME``, created on demand."""
    path = radfm_home().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def configure_caches() -> None:
    """Keep caches that libraries put in the system temp folder under RADFM_HOME instead."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(home_path("cache", "torchinductor")))
    os.environ.setdefault("TRITON_CACHE_DIR", str(home_path("cache", "triton")))
