"""The user's path through the CLI: train → eval → register → promote → predict, on a small MedMD-synth."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "radfm.cli", *args], cwd=ROOT, capture_output=True, text=True,
                         env=env, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


# What a user should never have to read: advertising (Lightning), MLflow's warnings about how a model is logged
# (fixed at the source: the model is logged from code) and its download bar (off: radfm.QUIET_DEFAULTS).
NOISE = ("litlogger", "litmodels", "Tip:", "cloudpickle", "CloudPickle", "Add type hints", "Downloading artifacts")


def quiet(out: subprocess.CompletedProcess) -> None:
    text = out.stdout + out.stderr
    assert not [n for n in NOISE if n in text], text[-3000:]


def test_train_eval_register_promote_predict(tmp_path):
    home = tmp_path / "home"
    env = {**os.environ, "RADFM_HOME": str(home), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    data = tmp_path / "data"
    out = run("train", f"paths.data_dir={data}", "data.synth.n_samples=24", "trainer.max_steps=4",
              "trainer.val_check_interval=2", "trainer.limit_val_batches=1", "logger.log_system_metrics=false",
              "run_name=cli", f"hydra.run.dir={tmp_path}/run", env=env)
    quiet(out)
    # Hydra's console handler and Lightning's own both printed Lightning's lines: now each shows once.
    assert (out.stdout + out.stderr).count("GPU available") == 1, out.stderr[-3000:]
    model_dir = tmp_path / "run" / "model"
    assert (model_dir / "model.safetensors").exists()
    run("eval", "--model", str(model_dir), "--manifest", str(data / "medmd-synth" / "manifest.jsonl"),
        "--out", str(tmp_path / "eval"), "--no-embedding", "--batch-size", "8", env=env)
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["tasks"]
    out = run("register", "--checkpoint", str(model_dir), "--radbench", str(tmp_path / "eval"), env=env)
    assert "version 1 as challenger" in out.stdout
    quiet(out)
    gate = tmp_path / "gate.json"
    # A 4-step model on 24 samples cannot show it learns from the images (the built-in gate refuses it, see
    # tests/registry/test_gate.py): the documented way to promote it anyway is a gate file that says so.
    gate.write_text(json.dumps({"floors": {}, "baselines": False}))
    out = run("promote", "--gate", str(gate), env=env)
    assert "PROMOTED" in out.stdout
    image = next((data / "medmd-synth" / "images").glob("*.png"))
    # A 4-step model may answer with an empty string; the command itself must work end to end.
    run("predict", "--prompt", "What modality is used to take this image?", "--image", str(image), env=env)
    bad = subprocess.run([sys.executable, "-m", "radfm.cli", "predict", "--prompt", "Q?", "--image",
                          str(tmp_path / "missing.png")], cwd=ROOT, capture_output=True, text=True, env=env,
                         timeout=300)
    assert bad.returncode != 0 and "missing.png" in bad.stderr
