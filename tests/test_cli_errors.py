"""A known error on the command line is one line on stderr, ``radfm <command>: error: …``, and exit code 2;
``--debug`` or ``RADFM_DEBUG=1`` shows the traceback; an unexpected exception keeps its traceback and exits 1.

Every case runs the real command: ``python -m radfm.cli …`` in a child process where the whole stderr matters
(Hydra, the pipeline flow, the debug switches), ``radfm.cli.main`` with capsys where a model or registry is set
up in this process first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from radfm.cli import main
from radfm.cli_errors import describe, one_line, report, run_guarded
from tests.mlflow_server import free_port
from tests.registry import test_registry as shared

ROOT = Path(__file__).resolve().parents[1]
# The fixtures live in tests/registry/test_registry.py (no conftest of this task's); binding them here makes
# pytest see them.
checkpoint_dir, scans = shared.checkpoint_dir, shared.scans


def radfm(*args: str, env: dict[str, str] | None = None, module: str = "radfm.cli",
          timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m radfm.cli ARGS`` with RADFM_DEBUG unset unless ``env`` sets it."""
    full = {k: v for k, v in os.environ.items() if k not in ("RADFM_DEBUG", "HYDRA_FULL_ERROR")}
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                          env=full, timeout=timeout)


def one_error_line(err: str, command: str) -> str:
    """The whole of ``err`` is one line, ``radfm <command>: error: …``; returns it."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"radfm {command}: error: "), err
    return lines[0]


@pytest.fixture()
def broken_data(tmp_path: Path) -> Path:
    """A data root whose manifest names one PNG that is not a PNG."""
    root = tmp_path / "broken"
    (root / "images").mkdir(parents=True)
    (root / "images" / "a.png").write_bytes(b"not a png at all")
    row = {"id": "s1", "task": "modality", "split": "test", "question": "Which modality?", "answer": "CT",
           "images": [{"path": "images/a.png", "kind": "2d"}]}
    (root / "manifest.jsonl").write_text(json.dumps(row) + "\n")
    return root


@pytest.fixture(scope="module")
def refused_registry(tmp_path_factory: pytest.TempPathFactory, checkpoint_dir: Path) -> Iterator[str]:
    """A SQLite registry holding version 1 of ``radfm``, whose RadBench scores do not beat the baselines: the
    built-in gate refuses it."""
    import mlflow

    from radfm.registry.pyfunc import log_pyfunc
    from radfm.registry.registry import register
    from radfm.registry.tracking import ensure_experiment

    tmp = tmp_path_factory.mktemp("cli-registry")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        mlflow.set_experiment(experiment_id=ensure_experiment("radfm-cli-errors", str(tmp / "artifacts")))
        register(log_pyfunc(checkpoint_dir, radbench_summary=shared.summary(0.35, 0.3, beats=False)))
    finally:
        mlflow.set_tracking_uri(previous)
    yield uri


# ---- missing files -----------------------------------------------------------------------------------------------
def test_missing_manifest(checkpoint_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere" / "manifest.jsonl"
    assert main(["eval", "--model", str(checkpoint_dir), "--manifest", str(missing), "--out", str(tmp_path / "e"),
                 "--no-embedding"]) == 2
    line = one_error_line(capsys.readouterr().err, "eval")
    assert str(missing) in line and "No such file or directory: check the path" in line


def test_missing_checkpoint_and_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["register", "--checkpoint", str(tmp_path / "ckpt"), "--radbench", str(tmp_path / "rb")]) == 2
    line = one_error_line(capsys.readouterr().err, "register")
    assert f"RadBench summary {tmp_path / 'rb'} does not exist: run `radfm eval` first" in line


def test_missing_image_for_predict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The image is checked before the registry is looked at: no model, no registry needed to hear about it."""
    assert main(["predict", "--prompt", "Is there a nodule?", "--image", str(tmp_path / "missing.png")]) == 2
    line = one_error_line(capsys.readouterr().err, "predict")
    assert line.endswith(f"image {tmp_path / 'missing.png'} does not exist")


# ---- Hydra and config errors (radfm train's own entry) -------------------------------------------------------
def test_bad_hydra_override() -> None:
    out = radfm("train", "trainer.max_stepz=4")
    assert out.returncode == 2
    assert one_error_line(out.stderr, "train") == ("radfm train: error: Could not override 'trainer.max_stepz'. "
                                                   "To append to your config use +trainer.max_stepz=4")


def test_unknown_config_option_lists_the_choices() -> None:
    out = radfm("train", "model=tinyy")
    assert out.returncode == 2
    line = one_error_line(out.stderr, "train")
    assert "Could not find 'model/tinyy' (available options in 'model': base," in line and "tiny)" in line


def test_override_syntax_error_quotes_the_override() -> None:
    out = radfm("train", "trainer.max_steps=[1")
    assert out.returncode == 2
    assert "cannot parse the override 'trainer.max_steps=[1'" in one_error_line(out.stderr, "train")


def test_config_value_the_builder_refuses(tmp_path: Path) -> None:
    """A ValueError the run builder raises about a config key; training's own log lines stay, the traceback goes."""
    out = radfm("train", "objective.answer.weight=0", "logger=none", f"paths.data_dir={tmp_path}",
                "data.synth.n_samples=24", timeout=600)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if "error:" in line]
    assert errors == ["radfm train: error: no objective with a weight > 0 in cfg.objective: e.g. objective=[answer]"]
    assert out.stderr.strip().splitlines()[-1] == errors[0]


# ---- bad samples ---------------------------------------------------------------------------------------------
def test_sample_error_from_a_broken_image(checkpoint_dir: Path, broken_data: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--model", str(checkpoint_dir), "--manifest", str(broken_data / "manifest.jsonl"),
                 "--out", str(tmp_path / "e"), "--no-embedding"]) == 2
    line = one_error_line(capsys.readouterr().err, "eval")
    assert line.startswith(f"radfm eval: error: sample s1: file {broken_data / 'images' / 'a.png'}: ")


def test_sample_error_in_training(broken_data: Path) -> None:
    out = radfm("train", "data=csv", f"data.root={broken_data}", "data.on_error=raise", "logger=none",
                timeout=600)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(f"radfm train: error: sample s1: file {broken_data / 'images' / 'a.png'}: ")


def test_validate_reports_a_broken_image_as_a_failed_expectation(broken_data: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """``radfm validate`` does not stop at a bad image: it names it among the failed expectations, exit 1."""
    assert main(["validate", str(broken_data), "--out", str(tmp_path / "report")]) == 1
    out = capsys.readouterr()
    assert "FAIL images/image_readable" in out.out and "images/a.png" in out.out and "(samples: s1)" in out.out
    assert "Traceback" not in out.err


# ---- registry -------------------------------------------------------------------------------------------------
def test_promote_with_no_registry(tmp_path: Path) -> None:
    db = tmp_path / "never-created.db"
    out = radfm("promote", env={"MLFLOW_TRACKING_URI": f"sqlite:///{db}"})
    assert out.returncode == 2
    line = one_error_line(out.stderr, "promote")
    assert f"no MLflow registry at {db}: register a model first" in line
    assert not db.exists()  # nothing created on the way


def test_promote_unknown_model(refused_registry: str, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", refused_registry)
    assert main(["promote", "--name", "no-such-model"]) == 2
    line = one_error_line(capsys.readouterr().err, "promote")
    assert "registered model 'no-such-model' has no 'challenger' alias: register a version first" in line


def test_predict_unknown_model(refused_registry: str, scans: list[Path], monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", refused_registry)
    assert main(["predict", "--model", "models:/no-such-model@champion", "--prompt", "Is there a nodule?",
                 "--image", str(scans[0])]) == 2
    line = one_error_line(capsys.readouterr().err, "predict")
    assert "no-such-model" in line and "not found" in line and "MLFLOW_TRACKING_URI" in line


def test_unreachable_tracking_server(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", dead)
    assert main(["promote"]) == 2
    line = one_error_line(capsys.readouterr().err, "promote")
    assert f"MLflow tracking server {dead} is not reachable" in line and "radfm services up" in line


def test_refused_gate_keeps_exit_2(refused_registry: str, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A refusal is the gate's decision, not an error: exit 2 and one line saying REFUSED and why."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", refused_registry)
    assert main(["promote"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("radfm promote: REFUSED radfm version 1 (champion stays unset): ")


def test_predict_over_the_context(refused_registry: str, scans: list[Path], monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", refused_registry)
    assert main(["predict", "--model", "models:/radfm/1", "--prompt", "nodule " * 600, "--image",
                 str(scans[0])]) == 2
    line = one_error_line(capsys.readouterr().err, "predict")
    assert "the prompt needs" in line and "over the model's context of 512 tokens: shorten it" in line


def test_predict_too_many_images(scans: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", "--prompt", "Compare.", *sum((["--image", str(scans[0])] for _ in range(17)), [])]) == 2
    assert "17 images, over the limit of 16 per request" in one_error_line(capsys.readouterr().err, "predict")


def test_a_beam_count_out_of_range_before_any_model(scans: list[Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """``--num-beams`` is checked before a registry or a checkpoint is looked at (neither exists here)."""
    assert main(["predict", "--prompt", "Is there a nodule?", "--image", str(scans[0]), "--num-beams", "9"]) == 2
    assert one_error_line(capsys.readouterr().err, "predict").endswith(
        "--num-beams: num_beams must be from 1 (greedy) to 8, got 9")
    assert main(["eval", "--model", str(tmp_path / "none"), "--manifest", str(tmp_path / "m.jsonl"), "--out",
                 str(tmp_path / "e"), "--num-beams", "0"]) == 2
    assert one_error_line(capsys.readouterr().err, "eval").endswith("num_beams must be at least 1 (1: greedy), got 0")


# ---- the pipeline flow's command line --------------------------------------------------------------------------
def test_pipeline_bad_override_has_no_traceback() -> None:
    """Prefect logs the failure of the task and the flow (one line each, tracebacks kept in the run's logs);
    the command ends with the one error line and exit 2."""
    out = radfm("pipeline", "experiment=demo_tiny", "trainer.max_stepz=1", timeout=600)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if ": error: " in line]
    assert errors == ["radfm pipeline: error: Could not override 'trainer.max_stepz'. To append to your config use "
                      "+trainer.max_stepz=1"]


# ---- --debug, RADFM_DEBUG, bugs ---------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["--debug before", "--debug after", "RADFM_DEBUG=1"])
def test_debug_shows_the_traceback(how: str, tmp_path: Path) -> None:
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'none.db'}"}
    args = ["promote"]
    if how == "--debug before":
        args = ["--debug", *args]
    elif how == "--debug after":
        args = [*args, "--debug"]
    else:
        env["RADFM_DEBUG"] = "1"
    out = radfm(*args, env=env)
    assert out.returncode == 2
    assert out.stderr.startswith("Traceback (most recent call last):")
    assert out.stderr.strip().splitlines()[-1].startswith("radfm.registry.registry.RegistryError: no MLflow registry")


@pytest.mark.parametrize("how", ["--debug", "RADFM_DEBUG=1", "HYDRA_FULL_ERROR=1"])
def test_debug_shows_the_traceback_of_train(how: str) -> None:
    env = {how.split("=")[0]: "1"} if "=" in how else {}
    args = ["--debug", "train", "trainer.max_stepz=4"] if how == "--debug" else ["train", "trainer.max_stepz=4"]
    out = radfm(*args, env=env)
    assert out.returncode == 2
    assert "Traceback (most recent call last):" in out.stderr
    assert "hydra.errors.ConfigCompositionException: Could not override 'trainer.max_stepz'." in out.stderr


def test_an_unexpected_exception_is_a_bug(capsys: pytest.CaptureFixture[str]) -> None:
    def broken() -> int:
        counts: dict[str, int] = {}
        return counts["missing"]  # a KeyError: nobody's input, a bug

    assert run_guarded("radfm demo", broken) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):") and "KeyError: 'missing'" in err
    assert err.strip().splitlines()[-1] == ("radfm demo: internal error (KeyError): this is a bug; please report "
                                           "it with the traceback above")


def test_messages_are_one_line() -> None:
    assert one_line("Could not override 'x'.\nTo append to your config use +x=1") == \
        "Could not override 'x'. To append to your config use +x=1"
    long = "validation failed: 3 expectation(s)\n" + "\n".join(f"  row {i} is wrong" for i in range(20))
    assert one_line(long) == "validation failed: 3 expectation(s) (--debug for details)"
    assert len(one_line("x" * 5000)) < 1100
    err = FileNotFoundError(2, "No such file or directory", "/data/manifest.jsonl")
    assert describe(err) == "/data/manifest.jsonl: No such file or directory: check the path"
    err = PermissionError(13, "Permission denied", "/data/out")
    assert describe(err) == "/data/out: Permission denied: check its permissions or choose another location"


def test_validation_failed_is_one_line_naming_the_report(tmp_path: Path, broken_data: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """What the pipeline's validation stage raises for a dataset that fails its suites."""
    from radfm.validation import ValidationFailed, validate_dataset

    result = validate_dataset(broken_data, out_dir=tmp_path / "report")
    with pytest.raises(ValidationFailed) as caught:
        result.raise_for_failures()
    assert report("radfm pipeline", caught.value) == 2
    line = one_error_line(capsys.readouterr().err, "pipeline")
    assert line.startswith("radfm pipeline: error: validation failed: ")
    assert f"report {tmp_path / 'report'}" in line and line.endswith("(--debug for details)")
