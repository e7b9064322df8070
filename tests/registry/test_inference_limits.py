"""Inference refuses what it cannot answer, before any model work, with one clear message: a prompt over the
model's context, too many images, an image whose header is over the readers' limits, ``max_new_tokens`` beyond
the context. Through the Python API (``radfm.registry.inference.predict``) and the served model (the pyfunc's
``predict``, and the scoring app ``mlflow models serve`` runs, called in-process: a refusal is an HTTP 400)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from radfm.registry.inference import (
    DEFAULT_MAX_IMAGES,
    MAX_IMAGES_ENV,
    ContextLimit,
    InputLimitError,
    PredictInputError,
    predict,
)
from radfm.registry.pyfunc import log_pyfunc
from tests.registry import test_registry as shared

# The fixtures live in test_registry (this task owns no conftest); binding them here makes pytest see them.
checkpoint_dir, scans = shared.checkpoint_dir, shared.scans

CONTEXT = 512  # the tiny preset's max_position_embeddings (radfm/model/presets.py)
NOWHERE = "models:/not-registered@champion"  # a refusal before loading never touches a registry


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, checkpoint_dir: Path) -> Iterator[Any]:
    """The tiny checkpoint logged as a pyfunc in a SQLite store and loaded the way the scoring server loads it."""
    tmp = tmp_path_factory.mktemp("limits")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp / 'mlflow.db'}")
    try:
        mlflow.set_experiment("radfm-limits")
        info = log_pyfunc(checkpoint_dir)
        yield mlflow.pyfunc.load_model(info.model_uri)
    finally:
        mlflow.set_tracking_uri(previous)


@pytest.fixture(scope="module")
def huge_header(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An 80-byte .npy whose header claims 32000×32000×1000 float32 voxels (~4 TB), and no data."""
    path = tmp_path_factory.mktemp("huge") / "claims_4tb.npy"
    with path.open("wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False,
                                                 "shape": (32000, 32000, 1000)})
    return path


def served_predict(model: Any, frame: pd.DataFrame, **params: Any) -> MlflowException:
    """The pyfunc's refusal of ``frame``; asserts it is the 400 that the scoring server sends."""
    with pytest.raises(MlflowException) as caught:
        model.predict(frame, params=params or None)
    err = caught.value
    assert err.error_code == "INVALID_PARAMETER_VALUE" and err.get_http_status_code() == 400, err.message
    assert len(err.message.splitlines()) == 1
    return err


# ---- the Python API -------------------------------------------------------------------------------------------
def test_api_refuses_a_2mb_prompt_in_milliseconds(served: Any, scans: list[Path]) -> None:
    prompt = "Is there a nodule in the left lung? " * 60_000  # 2.1 MB
    start = time.monotonic()
    with pytest.raises(InputLimitError, match=rf"^the prompt has 2,160,000 characters, more than the "
                                              rf"model's context of {CONTEXT} tokens can hold: shorten it"):
        predict("unused", prompt, [str(scans[0])], max_new_tokens=4, model=served)
    # not tokenised (seconds for 2 MB) and not run through the model (minutes)
    assert time.monotonic() - start < 5


def test_api_refuses_a_prompt_over_the_context_in_tokens(served: Any, scans: list[Path]) -> None:
    prompt = "nodule " * 600  # 4,200 characters: under the character bound, over the context once tokenised
    with pytest.raises(InputLimitError, match=rf"^the prompt needs [\d,]+ tokens with its 1 image\(s\), over "
                                              rf"the model's context of {CONTEXT} tokens: shorten it or send fewer"):
        predict("unused", prompt, [str(scans[0])], max_new_tokens=4, model=served)


def test_api_refuses_max_new_tokens_beyond_the_context(served: Any, scans: list[Path]) -> None:
    with pytest.raises(InputLimitError, match=rf"^max_new_tokens 100,000 is beyond the model's context of {CONTEXT} "
                                              rf"tokens \(the prompt counts too\): ask for at most {CONTEXT - 1}"):
        predict("unused", "Is there a nodule?", [str(scans[0])], max_new_tokens=100_000, model=served)
    # prompt + new tokens over the context: the message says how many new tokens would fit
    with pytest.raises(InputLimitError, match=r"^the prompt's \d+ tokens with its 1 image\(s\) \+ max_new_tokens 500 "
                                              r"exceed the model's context of 512 tokens: ask for at most \d+"):
        predict("unused", "Is there a nodule?", [str(scans[0])], max_new_tokens=500, model=served)
    # nonsense is refused before the model is even looked for
    with pytest.raises(InputLimitError, match="max_new_tokens must be at least 1, got 0"):
        predict(NOWHERE, "Is there a nodule?", [str(scans[0])], max_new_tokens=0)


def test_api_refuses_too_many_images_before_loading(scans: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    images = [str(scans[0])] * (DEFAULT_MAX_IMAGES + 1)
    with pytest.raises(InputLimitError, match=rf"the request has 17 images, over the limit of 16 per request: "
                                              rf"send fewer \(or raise {MAX_IMAGES_ENV} where the model runs\)"):
        predict(NOWHERE, "Compare these.", images)
    monkeypatch.setenv(MAX_IMAGES_ENV, "2")
    with pytest.raises(InputLimitError, match="3 images, over the limit of 2 per request"):
        predict(NOWHERE, "Compare these.", images[:3])
    monkeypatch.setenv(MAX_IMAGES_ENV, "many")
    with pytest.raises(InputLimitError, match=f"{MAX_IMAGES_ENV}='many' must be a positive whole number"):
        predict(NOWHERE, "Compare these.", images[:1])


def test_api_refuses_an_oversized_image_header_before_loading(huge_header: Path, scans: list[Path]) -> None:
    start = time.monotonic()
    with pytest.raises(PredictInputError, match=rf"image {huge_header} cannot be read: header claims "
                                                r"32000×32000×1000 voxels .* over data.max_voxels"):
        predict(NOWHERE, "Is there a nodule?", [str(scans[0]), str(huge_header)])
    assert time.monotonic() - start < 5  # the header only: nothing of the claimed 4 TB is allocated


def test_api_still_answers_within_the_limits(served: Any, scans: list[Path]) -> None:
    answer = predict("unused", "Is there a nodule?", [str(scans[0]), str(scans[1])], max_new_tokens=2, model=served)
    assert isinstance(answer, str)


def test_context_boundary_is_exact(served: Any) -> None:
    """A prompt and its new tokens may fill the context exactly, not one token more."""
    py = served.unwrap_python_model()
    limit = ContextLimit.of(py.model.cfg, py.tokenizer)
    assert limit.context == CONTEXT
    used = len(py.tokenizer.format_prompt("Is there a nodule?", None, ["start"]).input_ids)
    limit.check(py.tokenizer, "Is there a nodule?", 1, CONTEXT - used, "row 0")
    with pytest.raises(InputLimitError, match=f"ask for at most {CONTEXT - used} new tokens"):
        limit.check(py.tokenizer, "Is there a nodule?", 1, CONTEXT - used + 1, "row 0")


# ---- the served model (the pyfunc) -----------------------------------------------------------------------------
def test_served_model_refuses_a_long_prompt_naming_the_row(served: Any, scans: list[Path]) -> None:
    frame = pd.DataFrame({"prompt": ["Is there a nodule?", "nodule " * 600],
                          "images": [[str(scans[0])], [str(scans[0])]]})
    err = served_predict(served, frame, max_new_tokens=2)
    assert err.message.startswith("row 1: the prompt needs") and f"context of {CONTEXT} tokens" in err.message


def test_served_model_refuses_too_many_images(served: Any, scans: list[Path]) -> None:
    frame = pd.DataFrame({"prompt": ["Compare these."], "images": [[str(scans[0])] * 17]})
    err = served_predict(served, frame)
    assert err.message.startswith("row 0 has 17 images, over the limit of 16 per request")


def test_served_model_refuses_an_oversized_image(served: Any, huge_header: Path) -> None:
    frame = pd.DataFrame({"prompt": ["Is there a nodule?"], "images": [[str(huge_header)]]})
    err = served_predict(served, frame)
    assert err.message.startswith(f"row 0: image {huge_header} cannot be read: header claims 32000×32000×1000")


def test_served_model_refuses_max_new_tokens_beyond_the_context(served: Any, scans: list[Path]) -> None:
    frame = pd.DataFrame({"prompt": ["Is there a nodule?"], "images": [[str(scans[0])]]})
    err = served_predict(served, frame, max_new_tokens=4096)
    assert err.message == (f"row 0: max_new_tokens 4,096 is beyond the model's context of {CONTEXT} tokens (the "
                           f"prompt counts too): ask for at most {CONTEXT - 1}")


def test_served_model_searches_beams_and_refuses_a_count_out_of_range(served: Any, scans: list[Path]) -> None:
    """``num_beams`` (a param of the signature) picks beam search; 0 or more than 8 is refused in one line, and
    from the Python API before any model is loaded."""
    frame = pd.DataFrame({"prompt": ["Is there a nodule?"], "images": [[str(scans[0])]]})
    assert [p.name for p in served.metadata.get_params_schema().params] == ["max_new_tokens", "num_beams"]
    greedy = served.predict(frame, params={"max_new_tokens": 4})
    assert served.predict(frame, params={"max_new_tokens": 4, "num_beams": 1}) == greedy
    beams = served.predict(frame, params={"max_new_tokens": 4, "num_beams": 3})
    assert len(beams) == 1 and isinstance(beams[0], str)
    for bad in (0, 9):
        err = served_predict(served, frame, max_new_tokens=4, num_beams=bad)
        assert err.message.endswith(f"params: num_beams must be from 1 (greedy) to 8, got {bad}"), err.message
    with pytest.raises(InputLimitError, match="^the request: num_beams must be from 1 .greedy. to 8, got 12$"):
        predict(NOWHERE, "Is there a nodule?", [str(scans[0])], max_new_tokens=4, num_beams=12)


def test_scoring_server_answers_a_refusal_with_400(served: Any, scans: list[Path]) -> None:
    """The app ``mlflow models serve`` runs, called in-process: a refused request is a 400 whose body names the
    row and the limit, and the next request is answered."""
    from fastapi.testclient import TestClient
    from mlflow.pyfunc import scoring_server

    client = TestClient(scoring_server.init(served))
    body = {"dataframe_split": {"columns": ["prompt", "images"],
                                "data": [["Is there a nodule? " * 2000, [str(scans[0])]]]},
            "params": {"max_new_tokens": 2}}
    resp = client.post("/invocations", json=body)
    assert resp.status_code == 400, resp.text
    error = resp.json()
    assert error["error_code"] == "INVALID_PARAMETER_VALUE"
    # MLflow puts "Failed to predict data '…'" before the pyfunc's message
    assert "row 0: the prompt has 38,000 characters" in error["message"]
    assert f"model's context of {CONTEXT} tokens" in error["message"]
    body["dataframe_split"]["data"][0][0] = "Is there a nodule?"
    resp = client.post("/invocations", json=body)
    assert resp.status_code == 200, resp.text
    assert len(resp.json()["predictions"]) == 1
