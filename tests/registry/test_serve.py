"""``mlflow models serve -m models:/radfm@champion`` answers REST requests on 127.0.0.1, from a directory outside
the checkout and with radfm importable only from the model's own code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from radfm.registry.model_spec import data_uri
from radfm.registry.promotion import Gate, promote
from radfm.registry.pyfunc import log_pyfunc
from radfm.registry.registry import register
from tests.mlflow_server import free_port
from tests.registry import test_registry as shared
from tests.registry.test_serve_inputs import nifti_bytes, png_bytes

# The fixtures live in test_registry (this task owns no conftest); binding them here makes pytest see them.
checkpoint_dir, scans, local_registry, summary = shared.checkpoint_dir, shared.scans, shared.local_registry, \
    shared.summary


def _post(url: str, body: dict, timeout: float = 120) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (loopback)
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


# Put first on PYTHONPATH of the server: radfm can then be imported only from an MLflow model's code/ folder, as on
# a machine where radfm is not installed (this venv has it installed in editable mode from the checkout).
HIDE_RADFM = """
import sys
from importlib.machinery import PathFinder


class _OnlyFromModelCode:
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name != "radfm":
            return None
        spec = PathFinder.find_spec(name, [p for p in sys.path if p.rstrip("/").endswith("/code")])
        if spec is None:
            raise ModuleNotFoundError("No module named 'radfm' outside a model's code/", name=name)
        return spec


sys.meta_path.insert(0, _OnlyFromModelCode)
"""


def _predictions(answer: dict) -> list[str]:
    out = [p["answer"] if isinstance(p, dict) else p for p in answer["predictions"]]
    assert all(isinstance(text, str) for text in out), answer
    return out


def test_serve_champion_over_rest_from_anywhere(local_registry: str, checkpoint_dir: Path, scans: list[Path],
                                                tmp_path: Path) -> None:
    """``mlflow models serve -m models:/radfm@champion`` started outside the checkout, where radfm cannot be
    imported but from the model itself, answers base64 PNG and NIfTI images and a server path over REST."""
    info = log_pyfunc(checkpoint_dir, radbench_summary=summary(0.7, 0.6))
    register(info)
    assert promote(gate=Gate(required_tasks=["modality"], floors={"*": 0.5})).promoted

    site, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    site.mkdir()
    elsewhere.mkdir()
    (site / "sitecustomize.py").write_text(HIDE_RADFM)
    # The scoring server execs `uvicorn` by name: the venv's bin must be on PATH (as when the venv is active).
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "PATH": path, "PYTHONPATH": str(site), "MLFLOW_TRACKING_URI": local_registry,
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    hidden = subprocess.run([sys.executable, "-c", "import radfm"], env=env, cwd=elsewhere, capture_output=True,
                            text=True)
    assert hidden.returncode != 0 and "outside a model's code/" in hidden.stderr, hidden.stderr

    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/radfm@champion", "--env-manager",
           "local", "--host", "127.0.0.1", "-p", str(port), "-w", "1"]
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=elsewhere,
                                start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 180
            while True:
                assert proc.poll() is None, f"server exited: {log_path.read_text()[-3000:]}"
                assert time.monotonic() < deadline, f"server not up in 180 s: {log_path.read_text()[-3000:]}"
                try:
                    with urllib.request.urlopen(base + "/ping", timeout=2) as resp:  # noqa: S310
                        if resp.status == 200:
                            break
                except OSError:
                    time.sleep(0.5)

            # The bytes themselves, as a client on another machine sends them: a PNG and a NIfTI made here.
            body = {"dataframe_split": {"columns": ["prompt", "images"],
                                        "data": [["Is there a nodule?", [data_uri(png_bytes(), "image/png")]],
                                                 ["Which modality is this?", [data_uri(nifti_bytes())]]]},
                    "params": {"max_new_tokens": 4}}
            status, answer = _post(base + "/invocations", body)
            assert status == 200, answer
            assert len(_predictions(answer)) == 2

            # A path on the server still works.
            body["dataframe_split"]["data"] = [["Is there a nodule?", [str(scans[0].resolve())]]]
            status, answer = _post(base + "/invocations", body)
            assert status == 200, answer
            assert len(_predictions(answer)) == 1

            # A missing image is a client error naming the file, and the server keeps serving.
            body["dataframe_split"]["data"][0][1] = [str(tmp_path / "missing.png")]
            status, error = _post(base + "/invocations", body)
            assert status == 400 and "missing.png" in json.dumps(error)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
