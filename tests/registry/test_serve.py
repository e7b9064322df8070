"""``mlflow models serve -m models:/radfm@champion`` answers REST requests on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from radfm.registry.promotion import Gate, promote
from radfm.registry.pyfunc import log_pyfunc
from radfm.registry.registry import register
from tests.mlflow_server import free_port
from tests.registry import test_registry as shared

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


def test_serve_champion_over_rest(local_registry: str, checkpoint_dir: Path, scans: list[Path],
                                  tmp_path: Path) -> None:
    info = log_pyfunc(checkpoint_dir, input_example_images=scans[:1], radbench_summary=summary(0.7, 0.6))
    register(info)
    assert promote(gate=Gate(required_tasks=["modality"], floors={"*": 0.5})).promoted

    port = free_port()
    # The scoring server execs `uvicorn` by name: the venv's bin must be on PATH (as when the venv is active).
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "PATH": path, "MLFLOW_TRACKING_URI": local_registry, "MLFLOW_DISABLE_TELEMETRY": "true"}
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/radfm@champion", "--env-manager",
           "local", "--host", "127.0.0.1", "-p", str(port), "-w", "1"]
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
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

            body = {"dataframe_split": {"columns": ["prompt", "images"],
                                        "data": [["Is there a nodule?", [str(scans[0].resolve())]]]},
                    "params": {"max_new_tokens": 4}}
            status, answer = _post(base + "/invocations", body)
            assert status == 200, answer
            assert len(answer["predictions"]) == 1
            prediction = answer["predictions"][0]
            text = prediction["answer"] if isinstance(prediction, dict) else prediction
            assert isinstance(text, str)

            # A missing image is a client error naming the file, and the server keeps serving.
            body["dataframe_split"]["data"][0][1] = [str(tmp_path / "missing.png")]
            status, error = _post(base + "/invocations", body)
            assert status >= 400 and "missing.png" in json.dumps(error)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
