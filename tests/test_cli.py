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


def test_data_version_matches_data_dvc(tmp_path):
    """A fresh clone (data.dvc, no data/ yet): `radfm data version` is what data.dvc records."""
    import shutil

    import yaml

    shutil.copy(ROOT / "data.dvc", tmp_path / "data.dvc")
    out = radfm("data", "version", "--repo", str(tmp_path))
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
    assert (tmp_path / "mine" / "manifest.jsonl").is_file() and not (tmp_path / "mine" / "manifests").exists()
    assert (tmp_path / "mine" / "manifest.profile.json").is_file() and "question profile:" in out.stdout


@pytest.mark.skipif(not SHARED.exists(), reason="../shared/data/pneumoniamnist.npz is not available here")
def test_ingest_medmnist_slice(tmp_path):
    out = radfm("ingest", "medmnist", str(SHARED), "--out", str(tmp_path / "pm"), "--max-per-split", "5")
    assert out.returncode == 0, out.stderr
    assert "15 samples written" in out.stdout


def test_bad_command_is_a_clear_error():
    out = radfm("ingest", "table", "/nonexistent.csv", "--out", "/tmp/x")
    assert out.returncode != 0
    assert "nonexistent.csv" in out.stderr


def _cases_table(tmp_path: Path, n: int = 40) -> Path:
    """A user's table: real PNGs, a modality question, two phrasings of a yes/no question, free-text notes."""
    import numpy as np
    from PIL import Image

    src = tmp_path / "src"
    (src / "img").mkdir(parents=True)
    lines = ["id,image,split,question,answer"]
    for i in range(n):
        rng = np.random.default_rng(i)
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(src / "img" / f"{i}.png")
        split = "train" if i % 5 < 3 else ("val" if i % 5 == 3 else "test")
        ask = "Is there pneumonia?" if i % 2 else "Is pneumonia present in this X-ray?"
        lines += [f"c{i}-m,img/{i}.png,{split},What is the modality?,{'CT' if i % 2 else 'X-ray'}",
                  f"c{i}-p,img/{i}.png,{split},{ask},{'Yes.' if i % 3 else 'no'}",
                  f"c{i}-n,img/{i}.png,{split},Describe the image.,Case {i}: a {i} mm opacity in the left lung."]
    (src / "cases.csv").write_text("\n".join(lines) + "\n")
    return src / "cases.csv"


def test_ingest_writes_manifest_and_profile_and_validate_prints_it(tmp_path, capsys):
    from radfm.cli import main

    data = tmp_path / "mine"
    assert main(["ingest", "table", str(_cases_table(tmp_path)), "--out", str(data)]) == 0
    out = capsys.readouterr().out
    assert (data / "manifest.jsonl").is_file() and (data / "manifest.profile.json").is_file()
    assert "120 samples written" in out and "1 closed, 1 yes/no, 1 open" in out

    code = main(["validate", str(data), "--out", str(tmp_path / "report"), "--no-images"])
    out = capsys.readouterr().out
    assert code in (0, 1), out
    table = out[out.index("question families:"):]
    assert "1 closed, 1 yes/no, 1 open" in table.splitlines()[0]
    rows = {line.split("  ")[0].strip(): line.split() for line in table.splitlines()[2:5]}
    assert rows["what is the modality"][-6:] == ["closed", "24", "8", "8", "CT,", "X-ray"]
    assert rows["is there pneumonia"][-6:] == ["yesno", "24", "8", "8", "no,", "yes"]
    assert rows["describe the image"][-5:] == ["open", "24", "8", "8", "-"]
    assert "differ from their choice in case or punctuation" in table
    assert f"profile: {data / 'manifest.profile.json'}" in table


def test_readers_find_one_manifest_under_manifests_and_refuse_two(tmp_path, capsys):
    import shutil

    from radfm.cli import main

    data = tmp_path / "mine"
    assert main(["ingest", "table", str(_cases_table(tmp_path, 10)), "--out", str(data)]) == 0
    (data / "manifests").mkdir()
    shutil.move(data / "manifest.jsonl", data / "manifests" / "cases.jsonl")
    capsys.readouterr()
    assert main(["validate", str(data), "--out", str(tmp_path / "r1"), "--no-images"]) in (0, 1)
    out = capsys.readouterr().out
    assert "question families:" in out and "computed now, not written" in out
    shutil.copy(data / "manifests" / "cases.jsonl", data / "manifests" / "other.jsonl")
    assert main(["validate", str(data), "--out", str(tmp_path / "r2")]) == 2
    out = capsys.readouterr().out
    assert "2 manifests (cases.jsonl, other.jsonl)" in out and len(out.strip().splitlines()) == 1


def test_ingest_error_is_one_line(tmp_path, capsys):
    from radfm.cli import main

    (tmp_path / "t.csv").write_text("id,image,question,answer\nr1,missing.png,Q?,A\n")
    assert main(["ingest", "table", str(tmp_path / "t.csv"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "sample r1" in err and "missing.png" in err and "not found" in err
