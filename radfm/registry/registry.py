"""Register a logged radfm pyfunc as a new version of the registered model and make it the ``challenger``.

The version's RadBench scores are copied to version tags (``radbench.<task>.<metric>`` for the model's own
metrics, ``radbench.<task>.blind_headline`` / ``ablated_headline`` / ``beats_both`` for the baselines), and per
question family ``radbench.family.<task>/<family>.headline`` / ``.blind_headline`` / ``.ablated_headline`` /
``.beats_both`` / ``.n`` (test rows) / ``.closed``, so the promotion gate reads them from the registry alone.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from radfm.registry.tracking import check_server

log = logging.getLogger(__name__)

DEFAULT_NAME = "radfm"
CHALLENGER = "challenger"
CHAMPION = "champion"
TAG_PREFIX = "radbench."


class RegistryError(RuntimeError):
    """The registry cannot do what was asked (unreachable, unknown model/version/alias)."""


def client(tracking_uri: str | None = None) -> Any:
    """An ``MlflowClient`` for ``tracking_uri`` (registry on the same store), after a fast health probe."""
    import mlflow

    uri = tracking_uri or mlflow.get_tracking_uri()
    health_check(uri)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def require_store(uri: str) -> None:
    """Refuse a SQLite tracking store that does not exist: MLflow would create an empty one (logging its table
    migrations) and then report the model as unknown, which hides the real problem."""
    if not uri.startswith("sqlite:///") or ":memory:" in uri:
        return
    path = Path(uri.removeprefix("sqlite:///"))
    if not path.is_file():
        raise RegistryError(f"no MLflow registry at {path}: register a model first (`radfm register --checkpoint "
                            "DIR --radbench DIR`), or set MLFLOW_TRACKING_URI to the tracking server that holds it")


def health_check(tracking_uri: str | None, timeout: float = 3.0) -> None:
    """Raise :class:`ConnectionError` within ``timeout`` seconds when an http(s) tracking server is down."""
    check_server(tracking_uri or "", timeout=timeout)


FAMILY_PREFIX = TAG_PREFIX + "family."


def _system_tag(prefix: str, system: str, metric: str, value: float) -> tuple[str, str] | None:
    if system == "model":
        return f"{prefix}.{metric}", repr(float(value))
    if metric == "headline":
        return f"{prefix}.{system}_headline", repr(float(value))
    return None


def radbench_tags(metrics: dict[str, float]) -> dict[str, str]:
    """Flat LoggedModel metrics (``<task>.<system>.<metric>``, ``<task>.beats_both``, and per family
    ``family.<task>/<family>.{<system>.headline, beats_both, n, closed}``) → version tags."""
    tags: dict[str, str] = {}
    for key, value in metrics.items():
        parts = key.split(".")
        if parts[0] == "family" and len(parts) in (3, 4):
            prefix = f"{FAMILY_PREFIX}{parts[1]}"
            if len(parts) == 4:
                pair = _system_tag(prefix, parts[2], parts[3], value)
                if pair:
                    tags[pair[0]] = pair[1]
            elif parts[2] in ("beats_both", "closed"):
                tags[f"{prefix}.{parts[2]}"] = "true" if value else "false"
            elif parts[2] == "n":
                tags[f"{prefix}.n"] = str(int(value))
        elif len(parts) == 2 and parts[1] == "beats_both":
            tags[f"{TAG_PREFIX}{parts[0]}.beats_both"] = "true" if value else "false"
        elif len(parts) == 3:
            pair = _system_tag(f"{TAG_PREFIX}{parts[0]}", parts[1], parts[2], value)
            if pair:
                tags[pair[0]] = pair[1]
    return tags


def read_scores(tags: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Version tags → ``{task: {metric: float, "beats_both": bool}}`` (empty when the version has none)."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in tags.items():
        m = re.fullmatch(re.escape(TAG_PREFIX) + r"(.+)\.([^.]+)", key)
        if not m or key.startswith(FAMILY_PREFIX):
            continue
        task, metric = m.groups()
        out.setdefault(task, {})[metric] = value == "true" if metric == "beats_both" else float(value)
    return out


def read_family_scores(tags: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Version tags → ``{"<task>/<family>": {"headline", "blind_headline", "ablated_headline": float,
    "beats_both", "closed": bool, "n": int}}`` (empty when the version has no family scores)."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in tags.items():
        m = re.fullmatch(re.escape(FAMILY_PREFIX) + r"(.+)\.([^.]+)", key)
        if not m:
            continue
        fam, metric = m.groups()
        if metric in ("beats_both", "closed"):
            out.setdefault(fam, {})[metric] = value == "true"
        else:
            out.setdefault(fam, {})[metric] = int(float(value)) if metric == "n" else float(value)
    return out


def _model_id(model_info_or_uri: Any) -> str:
    model_id = getattr(model_info_or_uri, "model_id", None)
    if model_id:
        return str(model_id)
    uri = str(model_info_or_uri)
    m = re.fullmatch(r"models:/(m-[0-9a-f]+)", uri)
    if m:
        return m.group(1)
    if re.fullmatch(r"m-[0-9a-f]+", uri):
        return uri
    raise ValueError(f"cannot register {uri!r}: pass the ModelInfo from log_pyfunc or 'models:/<model_id>'")


def register(model_info_or_uri: Any, name: str = DEFAULT_NAME, tracking_uri: str | None = None,
             description: str | None = None) -> Any:
    """Register the LoggedModel as a new version of ``name``; it becomes the ``challenger`` → ``ModelVersion``."""
    from mlflow.exceptions import MlflowException

    c = client(tracking_uri)
    model_id = _model_id(model_info_or_uri)
    try:
        logged = c.get_logged_model(model_id)
    except MlflowException as exc:
        raise RegistryError(f"no logged model {model_id} in {c.tracking_uri}: {exc.message}") from None
    metrics = {m.key: m.value for m in (logged.metrics or [])}
    tags = radbench_tags(metrics)
    if not tags:
        log.warning("logged model %s has no RadBench metrics: it can be registered but never promoted", model_id)
    tags["radfm.model_id"] = model_id
    if logged.source_run_id:
        # The training run's lineage travels with the version: the retrain flow compares data versions.
        run_tags = c.get_run(logged.source_run_id).data.tags
        tags.update({k: run_tags[k] for k in ("radfm.data_version", "radfm.git_commit") if run_tags.get(k)})
    try:
        c.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    mv = c.create_model_version(name, source=f"models:/{model_id}", run_id=logged.source_run_id, tags=tags,
                                description=description, model_id=model_id)
    c.set_registered_model_alias(name, CHALLENGER, mv.version)
    log.info("registered %s version %s (%s) as %s", name, mv.version, model_id, CHALLENGER)
    return c.get_model_version(name, mv.version)


def version_by_alias(c: Any, name: str, alias: str) -> Any | None:
    """The version behind ``alias``, or None when the alias (or the model) does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return c.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI``, else the SQLite store under RADFM_HOME (what training logs to by default)."""
    import os

    from radfm.paths import radfm_home

    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{radfm_home() / 'mlflow.db'}"


def register_checkpoint(checkpoint_dir: str | Path, radbench_summary: dict[str, Any] | str | Path | None,
                        name: str = DEFAULT_NAME, tracking_uri: str | None = None, experiment: str = "radfm",
                        input_example_images: Sequence[str | Path] | None = None) -> Any:
    """Log ``checkpoint_dir`` as a pyfunc LoggedModel with its RadBench summary (a dict or ``summary.json``)
    and register it as the new ``challenger`` of ``name`` → ``ModelVersion``. What ``radfm register`` does.
    ``input_example_images`` is accepted for older callers and unused (:func:`~radfm.registry.pyfunc.log_pyfunc`
    logs an example made in memory)."""
    import mlflow

    from radfm.paths import home_path
    from radfm.registry.pyfunc import log_pyfunc
    from radfm.registry.tracking import ensure_experiment

    summary = radbench_summary
    if isinstance(summary, (str, Path)):
        path = Path(summary)
        if path.is_dir():
            path = path / "summary.json"
        if not path.is_file():
            raise FileNotFoundError(f"RadBench summary {path} does not exist: run `radfm eval` first")
        summary = json.loads(path.read_text())
    uri = tracking_uri or default_tracking_uri()
    health_check(uri)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        remote = uri.startswith(("http://", "https://"))
        exp_id = ensure_experiment(experiment, None if remote else str(home_path("mlartifacts")))
        if mlflow.active_run() is None:
            with mlflow.start_run(experiment_id=exp_id, run_name="radfm-register"):
                info = log_pyfunc(checkpoint_dir, input_example_images=input_example_images,
                                  radbench_summary=summary)
        else:
            info = log_pyfunc(checkpoint_dir, input_example_images=input_example_images, radbench_summary=summary)
        return register(info, name=name, tracking_uri=uri)
    finally:
        mlflow.set_tracking_uri(previous)


def trained_data_version(name: str = DEFAULT_NAME, alias: str = "champion",
                         tracking_uri: str | None = None) -> str | None:
    """The data version (``radfm.data_version`` of the training run) behind ``name@alias``; None when there is
    no such version. A version whose run never recorded one raises: retraining decisions need it."""
    c = client(tracking_uri)
    mv = version_by_alias(c, name, alias)
    if mv is None:
        return None
    if mv.tags and mv.tags.get("radfm.data_version"):
        return str(mv.tags["radfm.data_version"])
    if not mv.run_id:
        raise RegistryError(f"{name}@{alias} (version {mv.version}) has no source run: its data version is unknown")
    version = c.get_run(mv.run_id).data.tags.get("radfm.data_version")
    if not version:
        raise RegistryError(f"the run {mv.run_id} of {name}@{alias} (version {mv.version}) recorded no "
                            "radfm.data_version tag: it was not trained by `radfm train`")
    return str(version)
