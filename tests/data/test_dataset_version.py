"""The embedded default dataset is reproducible: regenerating it gives exactly the version in data.dvc."""

from __future__ import annotations

from pathlib import Path

import pytest

from radfm.data.synth import SynthConfig, generate
from radfm.data.versioning import content_hash, read_dvc_file

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_regenerated_default_dataset_matches_data_dvc(tmp_path):
    meta = read_dvc_file(ROOT, "data")
    assert meta is not None, "data.dvc is missing at the repository root"
    expected = meta["outs"][0]["md5"].removesuffix(".dir")
    generate(SynthConfig(n_samples=600, seed=0, variant="easy"), tmp_path / "data" / "medmd-synth")
    assert content_hash(tmp_path / "data") == expected
