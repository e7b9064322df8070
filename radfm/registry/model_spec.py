"""What a logged radfm model carries besides its weights, so that it serves wherever MLflow runs: its code (the
radfm package and the models-from-code file), its pip requirements, its typed signature and a portable input
example.

radfm travels as the model's code (``code_paths``), not as a wheel in its artifacts: MLflow puts a model's code
directory first on ``sys.path`` whenever it loads the model — ``mlflow models serve --env-manager local`` (which
installs nothing), ``virtualenv``/``uv``/``conda`` and ``mlflow.pyfunc.load_model`` alike — so what answers is
always the code that was logged. A wheel listed in the requirements is installed only by the env managers that
install requirements (never by ``local``, where whatever radfm the environment holds would answer instead, or
nothing), building one needs a build step at every registration, and pip resolves a relative wheel path in
requirements.txt against its own working directory. Nothing here needs the network.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_MAX_NEW_TOKENS = 64
# Executed by MLflow when it logs and when it loads the model (models-from-code): it sets a RadFMPyfunc.
CODE_FILE = Path(__file__).with_name("served_model.py")
# The distributions radfm imports to load a checkpoint and answer a request: radfm.model, the readers of every
# format a request may carry (PNG/JPEG through Pillow, NIfTI, DICOM, NRRD/MHA through SimpleITK), s3:// through
# fsspec/s3fs (botocore: radfm.data.remote reads its errors), radfm.registry. tests/registry/test_serve_inputs.py
# checks it against what a real predict imports.
# radfm itself is not listed: it travels as the model's code, and a `radfm` line would send pip to the package
# index for an unrelated project of that name.
SERVING_PACKAGES = ("mlflow", "torch", "transformers", "tokenizers", "safetensors", "einops", "numpy", "pandas",
                    "nibabel", "pydicom", "pillow", "simpleitk", "fsspec", "s3fs", "botocore")
EXAMPLE_PROMPT = "Which modality is this image?"
# Logging runs the example through the model (MLflow checks that it serves): a few tokens keep that cheap.
EXAMPLE_MAX_NEW_TOKENS = 8


def package_dir() -> Path:
    """The radfm package directory of this process (its whole tree goes into the model's ``code/``)."""
    import radfm

    return Path(radfm.__file__).resolve().parent


def requirements() -> list[str]:
    """``<name>==<version>`` of :data:`SERVING_PACKAGES` as installed here, without a local build tag (``+cpu``
    resolves only on the index that built it); a package not installed here is listed without a version."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in SERVING_PACKAGES:
        try:  # PEP 440: the local label is everything after '+'
            out.append(f"{pkg}=={version(pkg).split('+')[0]}")
        except PackageNotFoundError:
            out.append(pkg)
    return out


def signature() -> Any:
    """The model's typed interface (``ModelSignature``), as the REST input and the MLflow UI show it.

    Inputs: ``prompt`` (string, required): the question or instruction; ``images`` (array of strings, required,
    may be empty): each a base64 ``data:`` URI, an ``s3://`` URI or a path on the server
    (:mod:`radfm.registry.request_images`). Param ``max_new_tokens`` (long, default 64); ``num_beams``
    (long, default 1: greedy; up to 8 for beam search). Output: ``answer``
    (string), one per row.
    """
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema
    from mlflow.types.schema import Array

    inputs = Schema([ColSpec(DataType.string, "prompt"), ColSpec(Array(DataType.string), "images")])
    outputs = Schema([ColSpec(DataType.string, "answer")])
    params = ParamSchema([ParamSpec("max_new_tokens", DataType.long, DEFAULT_MAX_NEW_TOKENS),
                          ParamSpec("num_beams", DataType.long, 1)])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def example_png(size: int = 32) -> bytes:
    """A small grey PNG made in memory: a disc of tissue with a bright spot, never a patient's image."""
    from PIL import Image

    yy, xx = np.mgrid[0:size, 0:size] / size
    img = 90.0 * (((yy - 0.5) ** 2 + (xx - 0.5) ** 2) < 0.16) + 150.0 * (((yy - 0.4) ** 2 + (xx - 0.6) ** 2) < 0.005)
    buf = io.BytesIO()
    Image.fromarray(img.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def data_uri(data: bytes, media_type: str = "") -> str:
    """``data:<media type>;base64,<data>``: how a request carries an image's bytes."""
    return f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"


def input_example(prompt: str = EXAMPLE_PROMPT) -> tuple[Any, dict[str, int]]:
    """``(DataFrame[prompt, images], params)``: one row with :func:`example_png` as a base64 data URI. Nothing
    in it names a file, so it serves on any machine; no image of the training data goes into the artifacts."""
    import pandas as pd

    frame = pd.DataFrame({"prompt": [prompt], "images": [[data_uri(example_png(), "image/png")]]})
    return frame, {"max_new_tokens": EXAMPLE_MAX_NEW_TOKENS}
