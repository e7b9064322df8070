"""One data-version definition: the md5 of the DVC-tracked folder (``data/``, as ``data.dvc`` records it), for the
demo's runs (the Hydra data group), for the retrain deployment's DVC data (manifest inside the tracked folder) and
for ``radfm data version``; ``dvc pull`` only when a remote is configured; the retrain flow's skip rules."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from flows import tasks
from flows.params import DataSpec
from radfm.data import versioning
from radfm.data.synth import SynthConfig, generate

SMALL = ["experiment=demo_tiny", "data.synth.n_samples=12"]
MANIFEST = "medmd-synth/manifest.jsonl"


def compose(repo: Path, *extra: str) -> dict:
    from radfm.train.compose import compose as hydra_compose
    from radfm.train.compose import to_container

    return to_container(hydra_compose([*SMALL, f"paths.data_dir={repo / 'data'}", f"paths.home={repo / 'home'}",
                                       *extra]))


def dvc_spec(repo: Path, manifest: str = MANIFEST, **kw) -> DataSpec:
    return DataSpec(kind="dvc", repo=str(repo), target="data", manifest=manifest, **kw)


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    """A repository whose ``data.dvc`` records ``data/`` holding a small MedMD-synth (what ``dvc add`` writes)."""
    repo = tmp_path / "repo"
    generate(SynthConfig(n_samples=12, seed=0, variant="easy", image_size=64, depth=16), repo / "data" / "medmd-synth")
    md5 = versioning.content_hash(repo / "data")
    (repo / "data.dvc").write_text(f"outs:\n- md5: {md5}.dir\n  nfiles: 1\n  hash: md5\n  path: data\n")
    return repo


@pytest.fixture()
def no_pull(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """No remote is configured; a ``dvc pull`` would be a bug (there is nothing to pull from)."""
    calls: list[tuple] = []
    monkeypatch.setattr(versioning, "default_remote", lambda repo_root: None)
    monkeypatch.delenv("RADFM_DVC_REMOTE_URL", raising=False)
    monkeypatch.setattr(versioning, "pull", lambda *a, **kw: calls.append((a, kw)))
    return calls


def test_demo_retrain_and_cli_record_the_version_data_dvc_records(repo, no_pull, capsys):
    from radfm.cli import main

    recorded = versioning.recorded_version(repo, "data")
    demo = tasks.prepare_data.fn(compose(repo), DataSpec())  # what `radfm demo` runs (the Hydra data group)
    nightly = tasks.prepare_data.fn(compose(repo), dvc_spec(repo))  # what nightly-retrain runs
    assert demo["version"] == nightly["version"] == recorded
    assert demo["cfg"]["data"]["version"] == nightly["cfg"]["data"]["version"] == recorded
    # The manifest's folder is the data root: image paths resolve exactly as in the demo.
    assert Path(nightly["root"]) == repo / "data" / "medmd-synth" == Path(demo["root"])
    assert Path(nightly["manifest"]) == repo / "data" / MANIFEST
    assert no_pull == []
    capsys.readouterr()
    assert main(["data", "version", "--repo", str(repo)]) == 0
    assert capsys.readouterr().out.strip() == recorded


def test_a_changed_workspace_is_a_new_version_everywhere(repo, no_pull, caplog, capsys):
    from radfm.cli import main

    recorded = versioning.recorded_version(repo, "data")
    (repo / "data" / "medmd-synth" / "images" / "extra.txt").write_text("a new file under data/\n")
    with caplog.at_level(logging.WARNING, logger="radfm.data.versioning"):
        out = tasks.prepare_data.fn(compose(repo), dvc_spec(repo))
    assert out["version"] != recorded
    assert out["version"] == versioning.content_hash(repo / "data") == versioning.version_of(out["root"])
    assert "radfm data add" in caplog.text  # the workspace is ahead of data.dvc: say how to record it
    capsys.readouterr()
    assert main(["data", "version", "--repo", str(repo)]) == 0
    assert capsys.readouterr().out.strip() == out["version"]
    with pytest.raises(ValueError, match=f"not {recorded}"):  # a pinned version is checked against the workspace
        tasks.prepare_data.fn(compose(repo), dvc_spec(repo, version=recorded))


def test_a_configured_remote_is_pulled_first(repo, monkeypatch):
    calls = []
    monkeypatch.setattr(versioning, "default_remote", lambda repo_root: "storage")
    monkeypatch.setattr(versioning, "pull", lambda *a, **kw: calls.append((a, kw)))
    out = tasks.prepare_data.fn(compose(repo), dvc_spec(repo))
    assert calls == [((str(repo), "data"), {"remote": None})]
    assert out["version"] == versioning.recorded_version(repo, "data")


def test_without_data_or_remote_the_demo_data_is_made_else_a_clear_error(tmp_path, no_pull):
    repo = tmp_path / "clone"
    repo.mkdir()
    (repo / "data.dvc").write_text("outs:\n- md5: 0123.dir\n  path: data\n")  # a clone: data.dvc, no data/
    out = tasks.prepare_data.fn(compose(repo), dvc_spec(repo))  # the Hydra data group makes this manifest
    assert (repo / "data" / MANIFEST).is_file() and out["version"] == versioning.content_hash(repo / "data")
    with pytest.raises(FileNotFoundError, match="no DVC remote is configured"):
        tasks.prepare_data.fn(compose(repo), dvc_spec(repo, manifest="mine/manifest.jsonl"))
    assert no_pull == []


def test_version_of_a_data_set_no_dvc_file_tracks_is_its_own_digest(tmp_path):
    root = tmp_path / "data" / "mine"
    generate(SynthConfig(n_samples=4, seed=1, variant="easy", image_size=32, depth=4), root)
    assert versioning.tracked_target(root) is None
    assert versioning.version_of(root) == versioning.content_hash(root)
    (tmp_path / "data.dvc").write_text("outs:\n- md5: 0123.dir\n  path: data\n")
    assert versioning.tracked_target(root) == (tmp_path, "data")
    assert versioning.version_of(root) == versioning.content_hash(tmp_path / "data")


def test_retrain_skips_data_the_gate_already_refused(tmp_path):
    """Versions trained on a data version: only one the gate refused counts (one without a decision stopped before
    promotion, and the retrain must resume it)."""
    import mlflow

    from flows.retrain import refused_on_data

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert refused_on_data.fn("radfm-x", "v1", uri) is None  # no such model yet
    c.create_registered_model("radfm-x")
    for tags in ({"radfm.data_version": "v1", "promotion.decision": "rejected"},
                 {"radfm.data_version": "v2"},
                 {"radfm.data_version": "v1", "promotion.decision": "rejected"},
                 {"radfm.data_version": "v3", "promotion.decision": "promoted"}):
        c.create_model_version("radfm-x", source=str(tmp_path), tags=tags)
    assert refused_on_data.fn("radfm-x", "v1", uri) == "3"
    assert refused_on_data.fn("radfm-x", "v2", uri) is None
    assert refused_on_data.fn("radfm-x", "v3", uri) is None
