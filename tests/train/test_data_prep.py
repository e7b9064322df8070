"""ensure_dataset: the configured manifest, else the single one an older `radfm ingest` wrote under manifests/."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from radfm.train.data_prep import ensure_dataset


def test_a_single_manifest_under_manifests_is_found(tmp_path):
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "mine.jsonl").write_text("")
    cfg = OmegaConf.create({"name": "custom", "root": str(tmp_path), "manifest": str(tmp_path / "manifest.jsonl")})
    assert ensure_dataset(cfg) == tmp_path / "manifests" / "mine.jsonl"
    (tmp_path / "manifests" / "other.jsonl").write_text("")
    with pytest.raises(ValueError, match="2 manifests"):
        ensure_dataset(cfg)
    (tmp_path / "manifest.jsonl").write_text("")
    assert ensure_dataset(cfg) == tmp_path / "manifest.jsonl"


def test_no_manifest_says_what_to_run(tmp_path):
    cfg = OmegaConf.create({"name": "custom", "root": str(tmp_path), "manifest": str(tmp_path / "manifest.jsonl")})
    with pytest.raises(FileNotFoundError, match="radfm ingest"):
        ensure_dataset(cfg)
