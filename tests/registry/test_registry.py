"""Pyfunc logging, registration, the promotion gate and inference against a real MLflow registry.

The fixtures here (a tiny saved checkpoint, two PNG scans, a local SQLite registry) are shared with test_serve."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest

from radfm.registry.inference import PredictInputError, predict
from radfm.registry.promotion import Gate, MissingMetricsError, history, promote
from radfm.registry.pyfunc import log_pyfunc, radbench_metrics
from radfm.registry.registry import register, register_checkpoint
from tests.mlflow_server import free_port


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory, tiny_cfg: Any) -> Path:
    import torch

    from radfm.model import factory
    from radfm.model.checkpoint import save_pretrained
    from radfm.model.tokenizer import RadFMTokenizer

    texts = ["Is there a nodule?", "Yes, a left nodule.", "No.", "Which modality is this image?", "CT", "MRI"]
    tokenizer = RadFMTokenizer.train_bpe(texts * 5, 300, tiny_cfg.num_image_tokens)
    cfg = copy.deepcopy(tiny_cfg)
    torch.manual_seed(0)
    model = factory.build_model(cfg, tokenizer).eval()
    return save_pretrained(model, tokenizer, tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="session")
def scans(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from PIL import Image

    root = tmp_path_factory.mktemp("scans")
    rng = np.random.default_rng(0)
    out = []
    for k in range(2):
        arr = (rng.random((64, 64)) * 255).astype(np.uint8)
        path = root / f"scan_{k}.png"
        Image.fromarray(arr).save(path)
        out.append(path)
    return out


def family_entry(model: float, n: int = 30, closed: bool = True, blind: float = 0.3,
                 ablated: float = 0.35) -> dict[str, Any]:
    """One family of a RadBench summary, shaped like radfm.eval.radbench.summarise's."""
    return {"model": {"n": float(n), "headline": model, "accuracy": model},
            "blind": {"n": float(n), "headline": blind, "accuracy": blind},
            "ablated": {"n": float(n), "headline": ablated, "accuracy": ablated},
            "beats_both": model > blind and model > ablated, "n": n, "closed": closed}


def summary(modality: float, vqa: float, beats: bool = True,
            families: dict[str, Any] | None = None) -> dict[str, Any]:
    """A RadBench summary shaped like radfm.eval.radbench.evaluate's, with chosen headlines. Its closed families
    beat both baselines when ``beats`` (what the default gate asks of every version); an open family never does
    (the gate holds only closed families to the baselines)."""

    def task(h: float) -> dict[str, Any]:
        return {"model": {"n": 10.0, "headline": h, "accuracy": h},
                "blind": {"n": 10.0, "headline": 0.3, "accuracy": 0.3},
                "ablated": {"n": 10.0, "headline": 0.35, "accuracy": 0.35},
                "beats_both": beats and h > 0.35}

    if families is None:
        families = {"modality/modality": family_entry(0.9 if beats else 0.35),
                    "vqa/size": family_entry(0.8 if beats else 0.3),
                    "report/report": family_entry(0.2, closed=False)}
    return {"tasks": {"modality": task(modality), "vqa": task(vqa)}, "families": families}


@pytest.fixture()
def local_registry(tmp_path: Path):
    """A fresh SQLite tracking store + registry under ``tmp_path`` set as MLflow's tracking URI."""
    import mlflow

    from radfm.registry.tracking import ensure_experiment

    previous = mlflow.get_tracking_uri()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    exp_id = ensure_experiment("radfm-registry-test", str(tmp_path / "artifacts"))
    mlflow.set_experiment(experiment_id=exp_id)
    yield uri
    if mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(previous)


GATE = Gate(required_tasks=["modality"], min_gain={"modality": 0.01}, max_regression={"*": 0.02},
            floors={"*": 0.5})


def aliases(name: str = "radfm") -> dict[str, str]:
    return {k: str(v) for k, v in mlflow.MlflowClient().get_registered_model(name).aliases.items()}


def new_version(checkpoint_dir: Path, scans: list[Path], modality: float, vqa: float, **kw) -> str:
    info = log_pyfunc(checkpoint_dir, input_example_images=scans[:1], radbench_summary=summary(modality, vqa, **kw))
    return str(register(info).version)


def test_radbench_metrics_flattens_tasks() -> None:
    flat = radbench_metrics(summary(0.8, 0.6))
    assert flat["modality.model.headline"] == 0.8
    assert flat["vqa.blind.headline"] == 0.3
    assert flat["modality.beats_both"] == 1.0
    with pytest.raises(ValueError, match="no 'tasks'"):
        radbench_metrics({"families": {}})


def test_log_register_promote_lifecycle(local_registry: str, checkpoint_dir: Path, scans: list[Path]) -> None:
    info = log_pyfunc(checkpoint_dir, input_example_images=scans[:1], radbench_summary=summary(0.7, 0.6))
    logged = mlflow.get_logged_model(info.model_id)
    assert {m.key: m.value for m in logged.metrics}["modality.model.headline"] == 0.7
    assert info.signature.inputs.input_names() == ["prompt", "images"]
    v1 = register(info)
    assert str(v1.version) == "1" and "challenger" in v1.aliases
    assert v1.tags["radbench.modality.headline"] == "0.7" and v1.tags["radbench.modality.beats_both"] == "true"

    # First version: the floors decide.
    d1 = promote(gate=GATE)
    assert d1.promoted and d1.champion is None and "floors" in d1.reason
    assert aliases() == {"challenger": "1", "champion": "1"}
    # Re-promoting the champion: nothing new is written.
    before = mlflow.MlflowClient().get_model_version("radfm", "1")
    again = promote(gate=GATE)
    assert not again.promoted and again.reason == "already champion"
    after = mlflow.MlflowClient().get_model_version("radfm", "1")
    assert after.tags == before.tags and after.description == before.description

    # A better version is promoted.
    assert new_version(checkpoint_dir, scans, 0.8, 0.62) == "2"
    assert aliases() == {"challenger": "2", "champion": "1"}
    d2 = promote(gate=GATE)
    assert d2.promoted and d2.champion_version == "1", d2.reason
    assert aliases() == {"challenger": "2", "champion": "2"}

    # A regression on vqa is not promoted; the champion stays; the decision is readable from the registry.
    assert new_version(checkpoint_dir, scans, 0.9, 0.5) == "3"
    d3 = promote(gate=GATE)
    assert not d3.promoted and "vqa.headline regressed" in d3.reason
    assert aliases() == {"challenger": "3", "champion": "2"}
    v3 = mlflow.MlflowClient().get_model_version("radfm", "3")
    assert v3.tags["promotion.decision"] == "rejected"
    assert v3.tags["promotion.compared_to"] == "2"
    assert json.loads(v3.tags["promotion.champion_scores"])["vqa"]["headline"] == 0.62
    assert json.loads(v3.tags["promotion.challenger_scores"])["vqa"]["headline"] == 0.5
    assert "REJECTED" in v3.description

    # Retrying the rejected promotion repeats the decision without duplicating the record.
    d3b = promote(gate=GATE)
    assert d3b.reason == d3.reason and not d3b.promoted
    v3b = mlflow.MlflowClient().get_model_version("radfm", "3")
    assert v3b.description == v3.description and v3b.last_updated_timestamp == v3.last_updated_timestamp

    hist = history()
    assert [h["decision"] for h in hist] == ["promoted", "promoted", "rejected"]
    assert aliases()["champion"] == "2"

    # Inference through the champion alias.
    answer = predict("models:/radfm@champion", "Is there a nodule?", [str(p) for p in scans], max_new_tokens=4)
    assert isinstance(answer, str)


def test_required_task_must_beat_baselines(local_registry: str, checkpoint_dir: Path, scans: list[Path]) -> None:
    new_version(checkpoint_dir, scans, 0.7, 0.6, beats=False)
    d = promote(gate=GATE)
    assert not d.promoted and "does not beat both baselines" in d.reason
    assert "champion" not in aliases()


def test_floors_block_first_version(local_registry: str, checkpoint_dir: Path, scans: list[Path]) -> None:
    new_version(checkpoint_dir, scans, 0.45, 0.9)
    d = promote(gate=GATE)
    assert not d.promoted and "modality.headline 0.4500 is below the floor" in d.reason
    assert aliases() == {"challenger": "1"}


def test_version_without_radbench_is_never_promoted(local_registry: str, checkpoint_dir: Path,
                                                    scans: list[Path]) -> None:
    register(log_pyfunc(checkpoint_dir))
    with pytest.raises(MissingMetricsError, match="version 1 has no RadBench metrics"):
        promote(gate=GATE)
    assert aliases() == {"challenger": "1"}
    assert not any(k.startswith("promotion.") for k in mlflow.MlflowClient().get_model_version("radfm", "1").tags)


def test_unknown_task_in_gate(local_registry: str, checkpoint_dir: Path, scans: list[Path]) -> None:
    new_version(checkpoint_dir, scans, 0.7, 0.6)
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['segmentation'\]"):
        promote(gate=Gate(required_tasks=["segmentation"]))
    assert aliases() == {"challenger": "1"}
    with pytest.raises(ValueError, match="unknown gate field"):
        Gate.from_dict({"required_task": ["modality"]})


def test_empty_radbench_summary_is_rejected(local_registry: str, checkpoint_dir: Path) -> None:
    with pytest.raises(ValueError, match="no 'tasks'"):
        log_pyfunc(checkpoint_dir, radbench_summary={"tasks": {}})


def test_unreachable_registry_fails_fast(checkpoint_dir: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(ConnectionError, match="not reachable"):
        promote(gate=GATE, tracking_uri=dead)
    with pytest.raises(ConnectionError, match="not reachable"):
        register("models:/m-0123abcd", tracking_uri=dead)
    assert time.monotonic() - start < 10


def test_predict_rejects_missing_and_corrupt_images(tmp_path: Path, scans: list[Path]) -> None:
    missing = tmp_path / "nope.nii.gz"
    with pytest.raises(PredictInputError, match="nope.nii.gz does not exist"):
        predict("models:/radfm@champion", "Is there a nodule?", [str(scans[0]), str(missing)])
    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(PredictInputError, match="broken.png cannot be read"):
        predict("models:/radfm@champion", "Is there a nodule?", [str(corrupt)])


def test_pyfunc_accepts_json_lists_and_arrays(local_registry: str, checkpoint_dir: Path,
                                              scans: list[Path]) -> None:
    info = log_pyfunc(checkpoint_dir)
    model = mlflow.pyfunc.load_model(info.model_uri).unwrap_python_model()
    model.load_context(type("Ctx", (), {"artifacts": {"checkpoint": str(checkpoint_dir)}})())
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"prompt": ["Is there a nodule?", "Which modality?"],
                          "images": [json.dumps([str(scans[0])]), [rng.random((64, 64, 4)).astype("float32")]]})
    out = model.predict(None, frame, params={"max_new_tokens": 3})
    assert len(out) == 2 and all(isinstance(a, str) for a in out)


def test_round_trip_over_http(mlflow_server, checkpoint_dir: Path, scans: list[Path]) -> None:
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(mlflow_server.uri)
    try:
        mlflow.set_experiment("radfm-registry-http")
        info = log_pyfunc(checkpoint_dir, input_example_images=scans[:1], radbench_summary=summary(0.7, 0.6))
        mv = register(info, name="radfm-http", tracking_uri=mlflow_server.uri)
        d = promote("radfm-http", gate=GATE, tracking_uri=mlflow_server.uri)
        assert d.promoted
        assert aliases("radfm-http") == {"challenger": str(mv.version), "champion": str(mv.version)}
        answer = predict("models:/radfm-http@champion", "Is there a nodule?", [str(scans[0])], max_new_tokens=3,
                         tracking_uri=mlflow_server.uri)
        assert isinstance(answer, str)
    finally:
        mlflow.set_tracking_uri(previous)


def test_register_checkpoint_from_summary_file(tmp_path: Path, checkpoint_dir: Path, scans: list[Path]) -> None:
    uri = f"sqlite:///{tmp_path / 'cli.db'}"
    path = tmp_path / "radbench" / "summary.json"
    path.parent.mkdir()
    path.write_text(json.dumps(summary(0.7, 0.6)))
    mv = register_checkpoint(checkpoint_dir, path.parent, name="radfm-cli", tracking_uri=uri)
    assert mv.aliases == ["challenger"] and mv.tags["radbench.vqa.headline"] == "0.6"
    assert promote("radfm-cli", gate=GATE, tracking_uri=uri).promoted
    answer = predict("models:/radfm-cli@champion", "Is there a nodule?", [str(scans[1])], max_new_tokens=2,
                     tracking_uri=uri)
    assert isinstance(answer, str)
    with pytest.raises(FileNotFoundError, match="run `radfm eval` first"):
        register_checkpoint(checkpoint_dir, tmp_path / "nope.json", tracking_uri=uri)
