"""``radfm eval --model`` takes what ``radfm predict`` takes: a registered or logged model (``models:/NAME@ALIAS``,
``models:/NAME/VERSION``, ``runs:/RUN_ID/model``) fetched from the tracking store, as well as a checkpoint folder.
Against a real SQLite tracking store and registry (tests/registry/test_registry.py's fixtures)."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest

from radfm.cli import main
from tests.registry import test_registry as shared

# The fixtures live in tests/registry/test_registry.py; binding them here makes pytest see them.
checkpoint_dir, scans, local_registry = shared.checkpoint_dir, shared.scans, shared.local_registry


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small MedMD-synth whose test split RadBench scores."""
    from radfm.data.synth import SynthConfig, generate

    root = tmp_path_factory.mktemp("eval-models")
    return generate(SynthConfig(n_samples=12, seed=3, image_size=32, depth=4), root)


def test_eval_takes_registry_and_run_uris(local_registry: str, checkpoint_dir: Path, scans: list[Path],
                                          bench: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """The same weights, tokenizer and transform through each kind of URI: the same scores and answers as the
    checkpoint folder the version was logged from; nothing of the download is left behind."""
    import tempfile

    version = shared.new_version(checkpoint_dir, scans, 0.9, 0.8)
    client = mlflow.MlflowClient()
    client.set_registered_model_alias("radfm", "champion", version)
    run_id = client.get_model_version("radfm", version).run_id
    monkeypatch.setenv("MLFLOW_TRACKING_URI", local_registry)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    # the image-ablated pass adds nothing to what is tested here: which weights are loaded
    common = ["--manifest", str(bench), "--no-embedding", "--no-ablate", "--limit", "6", "--batch-size", "8"]

    assert main(["eval", "--model", str(checkpoint_dir), "--out", str(tmp_path / "folder"), *common]) == 0
    expected = json.loads((tmp_path / "folder" / "summary.json").read_text())
    answers = (tmp_path / "folder" / "predictions.csv").read_text()
    for k, uri in enumerate(("models:/radfm@champion", f"models:/radfm/{version}", f"runs:/{run_id}/model")):
        out = tmp_path / f"uri{k}"
        code = main(["eval", "--model", uri, "--out", str(out), *common])
        assert code == 0, (uri, capsys.readouterr().err)
        assert json.loads((out / "summary.json").read_text()) == expected, uri
        assert (out / "predictions.csv").read_text() == answers, uri
    assert list((tmp_path / "tmp").iterdir()) == []  # the downloaded model went with the command


def test_eval_of_an_unknown_model_is_one_line(local_registry: str, checkpoint_dir: Path, scans: list[Path],
                                              bench: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    shared.new_version(checkpoint_dir, scans, 0.9, 0.8)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", local_registry)
    capsys.readouterr()  # MLflow's messages while the version was logged
    code = main(["eval", "--model", "models:/no-such-model@champion", "--manifest", str(bench), "--out",
                 str(tmp_path / "e"), "--no-embedding"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("radfm eval: error: ") and "no-such-model" in err[0], err
    assert "not a radfm checkpoint" not in err[0]
