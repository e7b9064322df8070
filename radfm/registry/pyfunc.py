"""The trained model as an MLflow pyfunc: a DataFrame of prompts + images in, one text answer per row out.

Logged from code (:mod:`radfm.registry.served_model`) as an MLflow 3 ``LoggedModel`` whose artifact is the
checkpoint directory of :func:`radfm.model.checkpoint.save_pretrained`, with radfm itself as its code and what
else it needs to serve elsewhere (:mod:`radfm.registry.model_spec`); the RadBench metrics are logged against its
model id so the registry version made from it, the run and the benchmark stay joined.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import tempfile
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from radfm.registry.model_spec import DEFAULT_MAX_NEW_TOKENS, EXAMPLE_PROMPT

log = logging.getLogger(__name__)

SUMMARY_ARTIFACT = "radbench/summary.json"
TAG_PREFIX = "radbench."


class RadFMPyfunc(mlflow.pyfunc.PythonModel):
    """``predict(DataFrame[prompt: str, images: list[str | array]], params={max_new_tokens, num_beams})`` →
    ``list[str]``. Every image of a row is placed at the start of its prompt; decoding is greedy, or beam search
    with ``num_beams`` > 1.

    An image is a base64 ``data:`` URI (PNG, JPEG, NIfTI, DICOM), an ``s3://`` URI, a path on the server, or (from
    Python) an array: :mod:`radfm.registry.request_images`. Every row is checked before any is answered
    (:mod:`radfm.registry.limits`: the context, the image count, each image's bytes before it is decoded or
    fetched, each image's header): a refused request is an ``MlflowException`` with ``INVALID_PARAMETER_VALUE``
    naming the row, the image and the reason, which ``mlflow models serve`` answers with HTTP 400.
    """

    def load_context(self, context: Any) -> None:
        from radfm.model.checkpoint import load_pretrained

        self.model, self.tokenizer = load_pretrained(context.artifacts["checkpoint"])
        self.checkpoint_dir = context.artifacts["checkpoint"]

    # The input is annotated with a type MLflow derives no schema from (signature() is explicit): without any
    # annotation MLflow warns on every import that predict has no type hints.
    def predict(self, context, model_input: pd.DataFrame, params=None):  # noqa: ANN001, ANN201
        from mlflow.exceptions import MlflowException

        from radfm.data.errors import SampleError
        from radfm.registry.limits import InputLimitError, PredictInputError

        try:
            return self._answer(_as_frame(model_input), params or {})
        except (PredictInputError, SampleError) as exc:
            # the client's input, not the server: a 400 whose body names the row and the limit or the file
            err = MlflowException.invalid_parameter_value(str(exc))
            err.limit = isinstance(exc, InputLimitError)  # lets radfm.registry.inference.predict keep the kind
            raise err from None

    def _answer(self, df: pd.DataFrame, params: dict[str, Any]) -> list[str]:
        import torch

        from radfm.data.errors import SampleError
        from radfm.data.transforms import checkpoint_transform, preprocess
        from radfm.registry.limits import (
            ContextLimit,
            PredictInputError,
            check_image_count,
            check_max_new_tokens,
            check_num_beams,
        )
        from radfm.registry.request_images import check_sizes, image_items, materialise

        limit = getattr(self, "_limit", None) or ContextLimit.of(self.model.cfg, self.tokenizer)
        self._limit = limit
        default_tokens = params.get("max_new_tokens")
        default_tokens = DEFAULT_MAX_NEW_TOKENS if default_tokens is None else default_tokens
        beams = params.get("num_beams")
        beams = check_num_beams(1 if beams is None else beams, "params")
        tcfg = checkpoint_transform(getattr(self, "checkpoint_dir", ""), self.model.cfg.vision.image_size)
        rows = []
        for row_no, row in enumerate(df.to_dict("records")):  # every row checked before any image is decoded
            where = f"row {row_no}"
            prompt = row.get("prompt")
            if not isinstance(prompt, str) or not prompt.strip():
                raise PredictInputError(f"{where}: 'prompt' must be a non-empty string, got {_short(prompt)}")
            tokens = row.get("max_new_tokens")
            tokens = default_tokens if tokens is None or (isinstance(tokens, float) and math.isnan(tokens)) \
                else tokens
            tokens = check_max_new_tokens(tokens, where, limit.context)
            items = image_items(row.get("images"), row_no)
            check_image_count(len(items), where)
            check_sizes(items, row_no)
            enc = limit.check(self.tokenizer, prompt, len(items), tokens, where)
            rows.append((where, items, enc, tokens))
        with tempfile.TemporaryDirectory(prefix="radfm-pyfunc-") as tmp, ExitStack() as fetched:
            requests = []
            for row_no, (where, items, enc, tokens) in enumerate(rows):  # every image probed before model work
                row_dir = Path(tmp) / f"row_{row_no}"
                row_dir.mkdir()
                requests.append((where, materialise(items, row_no, row_dir, fetched), enc, tokens))
            answers: list[str] = []
            for where, images, enc, tokens in requests:
                pixels = []
                for im in images:
                    try:
                        pixels.append(preprocess(im.path, tcfg, sample_id=where))
                    except SampleError as exc:  # name the image as the client sent it, not its temporary file
                        raise PredictInputError(f"{where}: image {im.label} cannot be read: {exc.reason}") from None
                batch = self.tokenizer.pad([enc], side="left")
                with torch.no_grad():
                    new = self.model.generate(batch["input_ids"], batch["attention_mask"], pixels or None,
                                              max_new_tokens=tokens, eos_token_id=self.tokenizer.eos_id,
                                              pad_token_id=self.tokenizer.pad_id, num_beams=beams)
                answers.append(self.tokenizer.decode(new[0].tolist()))
        return answers


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _as_frame(model_input: Any) -> pd.DataFrame:
    from radfm.registry.limits import PredictInputError

    if isinstance(model_input, pd.DataFrame):
        return model_input
    if isinstance(model_input, dict):
        return pd.DataFrame([model_input] if isinstance(model_input.get("prompt"), str) else model_input)
    if isinstance(model_input, list):
        return pd.DataFrame(model_input)
    raise PredictInputError(f"radfm pyfunc input must be a DataFrame with 'prompt' and 'images', got "
                            f"{type(model_input).__name__}")


def family_name(key: str) -> str:
    """A RadBench family key (``<task>/<family>``) as an MLflow-legal name part without ``.``: characters MLflow
    refuses (and dots, the separator of the metric and tag names) become ``_``; a long family is cut and keeps a
    short hash."""
    task, _, fam = key.partition("/")
    safe = re.sub(r"[^\w\- ]+", "_", fam).strip(" _") or "_"
    if len(safe) > 120:
        safe = safe[:110] + "-" + hashlib.sha1(fam.encode()).hexdigest()[:8]
    return re.sub(r"[^\w-]", "_", task) + "/" + safe if fam else safe


def _numbers(prefix: str, entry: dict[str, Any], out: dict[str, float], systems_metrics: bool = True) -> None:
    for system, metrics in entry.items():
        if isinstance(metrics, dict):
            for key, value in metrics.items():
                if not systems_metrics and key != "headline":
                    continue
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    out[f"{prefix}.{system}.{key}"] = float(value)
    if "beats_both" in entry:
        out[f"{prefix}.beats_both"] = float(bool(entry["beats_both"]))


def radbench_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """``{"<task>.<system>.<metric>": value, "<task>.beats_both": 0/1}`` from a RadBench summary's tasks, and
    per family ``family.<task>/<family>.<system>.headline``, ``….beats_both``, ``….n`` (test rows) and
    ``….closed`` (1 when its rows are closed questions; for a summary written before ``closed`` existed: when
    its model scores have ``macro_f1``, which only closed rows get)."""
    tasks = summary.get("tasks") if isinstance(summary, dict) else None
    if not tasks:
        raise ValueError("the RadBench summary has no 'tasks': pass the dict returned by radfm.eval.radbench."
                         "evaluate (or its summary.json)")
    out: dict[str, float] = {}
    for task, entry in tasks.items():
        _numbers(task, entry, out)
    for key, entry in (summary.get("families") or {}).items():
        prefix = f"family.{family_name(key)}"
        _numbers(prefix, entry, out, systems_metrics=False)
        model = entry.get("model") or {}
        out[f"{prefix}.n"] = float(entry.get("n", model.get("n", 0)))
        out[f"{prefix}.closed"] = float(bool(entry.get("closed", "macro_f1" in model)))
    return out


def log_pyfunc(checkpoint_dir: str | Path, name: str = "model",
               input_example_images: Sequence[str | Path] | None = None,
               radbench_summary: dict[str, Any] | None = None,
               prompt_example: str = EXAMPLE_PROMPT) -> Any:
    """Log the checkpoint as a pyfunc ``LoggedModel`` (in the active run, or a new one) → ``ModelInfo``.

    The model is logged from code (:mod:`radfm.registry.served_model`) with the radfm package in its ``code/``,
    complete pip requirements, a typed signature and a base64 PNG input example (:mod:`radfm.registry.model_spec`),
    so it serves from any directory and, with its requirements installed, on any machine. Logging runs the
    example through the model once (MLflow's check that it serves).

    ``radbench_summary`` is logged as metrics of the model id (``<task>.<system>.<metric>``), as model params
    and tags, and as ``radbench/summary.json`` in the run's artifacts; :func:`radfm.registry.registry.register`
    copies the headlines to the registry version. ``input_example_images`` is accepted for older callers and not
    used: the example is an image made in memory, so that no image of the data goes into the model's artifacts.
    """
    from radfm.model.checkpoint import CONFIG, TOKENIZER, WEIGHTS
    from radfm.registry.model_spec import CODE_FILE, input_example, package_dir, requirements, signature

    del input_example_images  # see the docstring: a data image must not travel with the model
    ckpt = Path(checkpoint_dir).resolve()
    for part in (WEIGHTS, CONFIG, TOKENIZER):
        if not (ckpt / part).exists():
            raise FileNotFoundError(f"{ckpt} is not a radfm checkpoint directory: {part} is missing "
                                    "(write one with radfm.model.checkpoint.save_pretrained)")
    flat = radbench_metrics(radbench_summary) if radbench_summary is not None else {}
    started = mlflow.active_run() is None
    run = mlflow.start_run(run_name="radfm-model") if started else mlflow.active_run()
    try:
        tags = {"radfm.model": "pyfunc", "radfm.has_radbench": str(bool(flat)).lower()}
        info = mlflow.pyfunc.log_model(
            name=name, python_model=str(CODE_FILE), code_paths=[str(package_dir())],
            artifacts={"checkpoint": str(ckpt)}, signature=signature(), input_example=input_example(prompt_example),
            tags=tags, pip_requirements=requirements(),
        )
        if flat:
            mlflow.log_metrics(flat, model_id=info.model_id, run_id=run.info.run_id)
            mlflow.log_dict(radbench_summary, SUMMARY_ARTIFACT, run_id=run.info.run_id)
            mlflow.set_logged_model_tags(info.model_id, {f"{TAG_PREFIX}summary_artifact":
                                                         f"runs:/{run.info.run_id}/{SUMMARY_ARTIFACT}"})
    finally:
        if started:
            mlflow.end_run()
    return info
