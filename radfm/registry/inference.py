"""Answer one prompt about one or more images with a registered model (``models:/radfm@champion``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from radfm.data.errors import SampleError


class PredictInputError(ValueError):
    """An input image is missing or unreadable; the message names the file."""


def check_images(images: Sequence[str | Path]) -> list[str]:
    """Absolute paths of ``images``, after checking each exists and can be read as an image (before any model
    is loaded, so a typo costs milliseconds, not a model download)."""
    from radfm.data.readers import read_image

    out = []
    for image in images:
        if "://" in str(image) and not str(image).startswith("file://"):
            try:  # a remote URI (s3://): the reader fetches it
                read_image(str(image), "predict")
            except SampleError as exc:
                raise PredictInputError(f"image {image} cannot be read: {exc.reason}") from None
            out.append(str(image))
            continue
        path = Path(str(image).removeprefix("file://")).expanduser()
        if not path.exists():
            raise PredictInputError(f"image {image} does not exist")
        if not path.is_file() and not path.is_dir():
            raise PredictInputError(f"image {image} is neither a file nor a DICOM series folder")
        try:
            read_image(path, "predict")
        except SampleError as exc:
            raise PredictInputError(f"image {image} cannot be read: {exc.reason}") from None
        except (OSError, ValueError) as exc:
            raise PredictInputError(f"image {image} cannot be read: {exc}") from None
        out.append(str(path.resolve()))
    return out


def load(model_uri: str, tracking_uri: str | None = None) -> Any:
    """The pyfunc behind ``model_uri`` (``models:/<name>@<alias>``, ``models:/<name>/<version>``, a path)."""
    import mlflow

    from radfm.registry.registry import health_check

    previous = mlflow.get_tracking_uri()
    uri = tracking_uri or previous
    health_check(uri)
    mlflow.set_tracking_uri(uri)
    try:
        return mlflow.pyfunc.load_model(model_uri)
    finally:
        mlflow.set_tracking_uri(previous)


def predict(model_uri: str, prompt: str, images: Sequence[str | Path] = (), max_new_tokens: int = 64,
            tracking_uri: str | None = None, model: Any = None) -> str:
    """The model's answer to ``prompt`` with ``images`` placed before it (greedy decoding)."""
    import pandas as pd

    if not prompt or not prompt.strip():
        raise ValueError("the prompt is empty")
    paths = check_images(images)
    model = model or load(model_uri, tracking_uri)
    frame = pd.DataFrame({"prompt": [prompt], "images": [paths]})
    try:
        out = model.predict(frame, params={"max_new_tokens": int(max_new_tokens)})
    except SampleError as exc:
        raise PredictInputError(str(exc)) from None
    return str(list(out)[0])
