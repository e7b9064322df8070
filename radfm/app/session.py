"""The model behind ``radfm app``: loaded as ``radfm predict`` loads it, answering as it answers, plus the
image-ablated answer RadBench computes.

- The answer is :func:`radfm.registry.inference.predict` on the loaded pyfunc: the same input checks
  (:mod:`radfm.registry.limits`), preprocessing and greedy decoding as ``radfm predict`` and the served model.
- The image-ablated answer is RadBench's ``ablated`` system (:func:`radfm.eval.predict.predict` with
  ``ablate=True``): every image replaced by zeros of its preprocessed shape, so the question keeps its image
  tokens and only what they show is gone. It is asked after the answer, whose checks it therefore shares.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from radfm.registry.limits import PredictInputError


@dataclass(frozen=True)
class Answers:
    """The model's answer and its image-ablated answer to one question about one image or scan."""

    answer: str
    ablated: str


class _CheckpointPyfunc:
    """A checkpoint folder (``save_pretrained``) behind the interface of a loaded MLflow pyfunc: ``predict(frame,
    params)`` and ``unwrap_python_model()``, answered by the very :class:`RadFMPyfunc` the registry logs."""

    def __init__(self, checkpoint_dir: Path) -> None:
        from radfm.registry.pyfunc import RadFMPyfunc

        self.python_model = RadFMPyfunc()
        self.python_model.load_context(SimpleNamespace(artifacts={"checkpoint": str(checkpoint_dir)}))

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> list[str]:
        return self.python_model.predict(None, data, params)

    def unwrap_python_model(self) -> Any:
        return self.python_model


class AppModel:
    """A loaded model (``uri`` names it) and what the app asks of it: :meth:`ask`."""

    def __init__(self, uri: str, pyfunc: Any) -> None:
        self.uri = uri
        self.pyfunc = pyfunc
        inner = pyfunc.unwrap_python_model()
        self.model, self.tokenizer = inner.model, inner.tokenizer
        self.checkpoint_dir = str(inner.checkpoint_dir)

    @classmethod
    def load(cls, uri: str, tracking_uri: str | None = None) -> AppModel:
        """``models:/…`` or ``runs:/…`` from ``tracking_uri`` (None: ``radfm predict``'s store), a logged model's
        folder (it has an ``MLmodel``) or a checkpoint folder."""
        from radfm.registry.inference import load
        from radfm.registry.registry import default_tracking_uri, require_store

        if uri.startswith(("models:/", "runs:/")):
            tracking_uri = tracking_uri or default_tracking_uri()
            require_store(tracking_uri)
            return cls(uri, load(uri, tracking_uri))
        from radfm.model.checkpoint import CONFIG, WEIGHTS

        path = Path(uri).expanduser()
        if (path / "MLmodel").is_file():
            return cls(uri, load(str(path.resolve()), tracking_uri or default_tracking_uri()))
        if (path / CONFIG).is_file() and (path / WEIGHTS).is_file():
            return cls(uri, _CheckpointPyfunc(path.resolve()))
        what = "does not exist" if not path.exists() else f"holds neither an MLmodel nor {CONFIG} + {WEIGHTS}"
        raise FileNotFoundError(f"model {uri} {what}: name models:/NAME@ALIAS, models:/NAME/VERSION, "
                                "runs:/RUN_ID/model, a logged model's folder or a radfm checkpoint folder")

    def answer(self, question: str, image: str | Path, max_new_tokens: int) -> str:
        """The model's answer, exactly as ``radfm predict --prompt QUESTION --image IMAGE`` gives it."""
        from radfm.registry.inference import predict

        return predict(self.uri, question, [image], max_new_tokens=max_new_tokens, model=self.pyfunc)

    def ablated(self, question: str, image: str | Path, max_new_tokens: int) -> str:
        """RadBench's image-ablated answer to ``question`` about ``image`` (see the module docstring)."""
        from radfm.data.datamodule import RadFMDataset
        from radfm.data.manifest import ImageRef, Sample
        from radfm.data.readers import probe_image
        from radfm.data.transforms import checkpoint_transform
        from radfm.eval.predict import predict

        path = Path(image)
        kind = "3d" if probe_image(path).is_3d else "2d"
        # An open question (no choices): RadBench generates its answer, as the app's answer is generated. The
        # answer field only satisfies the manifest's schema; predict never reads it.
        sample = Sample(id="app", task="vqa", split="test", question=question, answer="?",
                        images=[ImageRef(path=path.name, kind=kind, position="start")])
        transform = checkpoint_transform(self.checkpoint_dir, self.model.cfg.vision.image_size)
        ds = RadFMDataset([sample], path.parent, self.tokenizer, transform, train=False)
        return predict(self.model, self.tokenizer, [sample], ds, batch_size=1, max_new_tokens=max_new_tokens,
                       ablate=True)[0].text

    def ask(self, question: str, image: str | Path, max_new_tokens: int) -> Answers:
        """Both answers; :class:`PredictInputError` (an :class:`InputLimitError` for a limit) names what to fix."""
        answer = self.answer(question, image, max_new_tokens)  # checks the inputs and the context first
        return Answers(answer, self.ablated(question, image, max_new_tokens))


__all__ = ["AppModel", "Answers", "PredictInputError"]
