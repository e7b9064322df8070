"""``radfm rollback``: the champion goes back to the previous one the gate promoted, recorded on both versions,
against a real SQLite tracking store and registry (tests/registry/test_registry.py's fixtures)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from radfm.cli import main
from radfm.registry.promotion import promote, rollback
from radfm.registry.registry import RegistryError
from tests.registry import test_registry as shared

checkpoint_dir, scans, local_registry = shared.checkpoint_dir, shared.scans, shared.local_registry


def test_rollback_restores_the_previous_champion(local_registry: str, checkpoint_dir: Path, scans: list[Path],
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    v1 = shared.new_version(checkpoint_dir, scans, 0.7, 0.6)
    assert promote(gate=shared.GATE).promoted
    with pytest.raises(RegistryError, match="first champion"):
        rollback()
    v2 = shared.new_version(checkpoint_dir, scans, 0.6, 0.6)  # worse: the gate refuses it
    assert promote(gate=shared.GATE).refused
    v3 = shared.new_version(checkpoint_dir, scans, 0.9, 0.6)
    assert promote(gate=shared.GATE).promoted and shared.aliases()["champion"] == v3

    # A refused version never comes back this way; an unknown one is named.
    with pytest.raises(RegistryError, match="never promoted"):
        rollback(to=v2)
    with pytest.raises(RegistryError, match="no version 99"):
        rollback(to=99)
    assert shared.aliases()["champion"] == v3

    monkeypatch.setenv("MLFLOW_TRACKING_URI", local_registry)
    assert main(["rollback"]) == 0
    assert f"champion is version {v1} again (was {v3})" in capsys.readouterr().out
    assert shared.aliases()["champion"] == v1  # v2, refused, is skipped
    client = mlflow.MlflowClient()
    for version in (v1, v3):
        mv = client.get_model_version("radfm", version)
        assert f"from version {v3} to version {v1}" in mv.tags["promotion.rollback"]
        assert "[rollback]" in (mv.description or "")

    # Forward again by name: v3 was promoted once, so it may be restored.
    assert rollback(to=v3) == {"from": v1, "to": v3}
    assert shared.aliases()["champion"] == v3
