"""Answer one prompt about one or more images with a registered model (``models:/radfm@champion``).

Every request is checked against the limits of :mod:`radfm.registry.limits` before any model work: the image
count and headers before the model is loaded, the context by the model's pyfunc before it preprocesses or
generates (the same checks, and words, as the served model; a 2 MB prompt once ran for minutes).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from radfm.data.errors import SampleError
from radfm.registry.limits import (
    DEFAULT_MAX_IMAGES,
    MAX_IMAGES_ENV,
    ContextLimit,
    InputLimitError,
    PredictInputError,
    check_image_count,
    check_max_new_tokens,
    check_num_beams,
    max_images,
    probe,
)

# The errors and limits of a request are importable from here too: this is the module users call.
__all__ = ["DEFAULT_MAX_IMAGES", "MAX_IMAGES_ENV", "ContextLimit", "InputLimitError", "PredictInputError",
           "check_image_count", "check_images", "check_inputs", "check_max_new_tokens", "check_num_beams", "load",
           "max_images", "predict", "probe"]


def check_images(images: Sequence[str | Path]) -> list[str]:
    """Absolute paths of ``images``, after checking their count and each one's header (existence, format, the
    readers' size limits) before any model is loaded, so a typo or a 4 TB header costs milliseconds."""
    check_image_count(len(images))
    out = []
    for image in images:
        if "://" in str(image) and not str(image).startswith("file://"):
            probe(str(image))  # a remote URI (s3://): the reader fetches it
            out.append(str(image))
            continue
        path = Path(str(image).removeprefix("file://")).expanduser()
        if not path.exists():
            raise PredictInputError(f"image {image} does not exist")
        if not path.is_file() and not path.is_dir():
            raise PredictInputError(f"image {image} is neither a file nor a DICOM series folder")
        try:
            probe(path)
        except PredictInputError:
            raise
        except (OSError, ValueError) as exc:
            raise PredictInputError(f"image {image} cannot be read: {exc}") from None
        out.append(str(path.resolve()))
    return out


def check_inputs(prompt: str, images: Sequence[str | Path] = (), max_new_tokens: int = 64) -> list[str]:
    """The checks that need no model: a non-empty prompt, ``max_new_tokens`` ≥ 1, the image count and headers
    → the images' absolute paths. The context is checked where the model is (:meth:`ContextLimit.check`)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise PredictInputError("the prompt is empty")
    check_max_new_tokens(max_new_tokens)
    return check_images(images)


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
            tracking_uri: str | None = None, model: Any = None, num_beams: int = 1) -> str:
    """The model's answer to ``prompt`` with ``images`` placed before it (greedy decoding, or beam search over
    ``num_beams``).

    Raises :class:`PredictInputError` (:class:`InputLimitError` for a limit) naming the input and what to do:
    the image count and headers before the model is loaded, the context before any model work.
    """
    import pandas as pd
    from mlflow.exceptions import MlflowException

    paths = check_inputs(prompt, images, max_new_tokens)
    check_num_beams(num_beams)
    model = model or load(model_uri, tracking_uri)
    frame = pd.DataFrame({"prompt": [prompt], "images": [paths]})
    try:
        out = model.predict(frame, params={"max_new_tokens": int(max_new_tokens), "num_beams": int(num_beams)})
    except SampleError as exc:
        raise PredictInputError(str(exc)) from None
    except MlflowException as exc:
        if exc.error_code != "INVALID_PARAMETER_VALUE":
            raise
        # the pyfunc's refusal of this request: the message the served model sends as a 400, less its row number
        # (a call here is one request of one row)
        cls = InputLimitError if getattr(exc, "limit", False) else PredictInputError
        raise cls(str(exc.message).removeprefix("row 0: ")) from None
    return str(list(out)[0])
