"""The `radfm` command end to end, as a user types it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "pneumoniamnist.npz"


def radfm(*args: str, cwd: Path = ROOT, env_home: Path | None = None) -> subprocess.CompletedProcess:
    import os

    env = dict(os.environ)
    if env_home is not None:
        env["RADFM_HOME"] = str(env_home)
    return subprocess.run([sys.executable, "-m", "radfm.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=300)


def test_model_info_base():
    out = radfm("model-info", "--preset", "base")
    assert out.returncode == 0, out.stderr
    assert "13.12B parameters" in out.stdout


def test_data_version_matches_data_dvc():
    import yaml

    out = radfm("data", "version")
    expected = yaml.safe_load((ROOT / "data.dvc").read_text())["outs"][0]["md5"].removesuffix(".dir")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected


def test_synth_then_ingest_table(tmp_path):
    out = radfm("synth", "--out", str(tmp_path / "synth"), "--n", "12", "--seed", "1")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(x) for x in (tmp_path / "synth" / "manifest.jsonl").read_text().splitlines()[1:]]
    table = tmp_path / "table.jsonl"
    table.write_text("\n".join(json.dumps({"id": f"r{i}", "image": r["images"][0]["path"], "question": r["question"],
                                           "answer": r["answer"], "task": r["task"]}) for i, r in
                               enumerate(rows[:10])) + "\n")
    out = radfm("ingest", "table", str(table), "--out", str(tmp_path / "mine"), "--image-root",
                str(tmp_path / "synth"))
    assert out.returncode == 0, out.stderr
    assert "10 samples written" in out.stdout


@pytest.mark.skipif(not SHARED.exists(), reason="../shared/data/pneumoniamnist.npz is not available here")
def test_ingest_medmnist_slice(tmp_path):
    out = radfm("ingest", "medmnist", str(SHARED), "--out", str(tmp_path / "pm"), "--max-per-split", "5")
    assert out.returncode == 0, out.stderr
    assert "15 samples written" in out.stdout


def test_bad_command_is_a_clear_error():
    out = radfm("ingest", "table", "/nonexistent.csv", "--out", "/tmp/x")
    assert out.returncode != 0
    assert "nonexistent.csv" in out.stderr
