"""Shared fixtures: one RADFM_HOME per session, a tiny model and its tokenizer built once."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Prefect reads PREFECT_HOME when it is first imported (at collection, before any fixture runs): point it at a
# folder of this session so persisted task results and caches never leak between test sessions.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="radfm-test-prefect-")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def radfm_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("radfm_home")
    os.environ["RADFM_HOME"] = str(home)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(home / "cache" / "torchinductor"))
    return home


@pytest.fixture(scope="session")
def tiny_cfg():
    from radfm.model import presets

    return presets.tiny()


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_cfg):
    from radfm.model import factory

    return factory.build_tokenizer(tiny_cfg, texts=["Is there a nodule?", "Yes, a left nodule.", "No."])


@pytest.fixture()
def tiny_model(tiny_cfg, tiny_tokenizer):
    import torch

    from radfm.model import factory

    torch.manual_seed(0)
    return factory.build_model(tiny_cfg, tiny_tokenizer).eval()


@pytest.fixture()
def tiny_model_for(tiny_cfg):
    """Build a tiny model for a given tokenizer."""
    import torch

    from radfm.model import factory

    def build(tokenizer):
        torch.manual_seed(0)
        return factory.build_model(tiny_cfg, tokenizer)

    return build


from tests.mlflow_server import mlflow_server  # noqa: E402,F401  (session fixture: a real mlflow server)
