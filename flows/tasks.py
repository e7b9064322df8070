"""The pipeline's tasks: each is a thin, typed wrapper around one radfm library call.

Tasks whose work is expensive (validation, training, RadBench, registration) cache their result on their
inputs, persisted under ``PREFECT_HOME``: a run that failed at task N can be run again (or retried from the
Prefect UI) and tasks 1…N-1 come back as ``Cached`` instead of being redone. (The flow refreshes a cached
training or RadBench result whose files were deleted since: a cache key cannot look at outputs, because the
key is computed before the task runs and must be the same after it ran.) Every task returns the seconds
of its own work so the flow can report how much of its wall time the orchestration cost.

Lineage lands where people look in MLflow: RadBench writes its table into the training run's description,
registration writes the model card (:mod:`radfm.registry.model_card`) beside the checkpoint, into the run's
artifacts and into the registered version's description, and promotion fills in the card's gate decision.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from prefect import task
from prefect.context import TaskRunContext

from flows.params import DataSpec, EvalSpec

log = logging.getLogger(__name__)

# Bump when a task's result format changes: old cached results must not be read back.
CACHE_VERSION = "1"


def _digest(parameters: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parameters, sort_keys=True, default=str).encode()).hexdigest()


def inputs_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """Cache key: the task's name and its inputs (not the flow run: a new run with the same inputs hits)."""
    return f"{context.task.name}-{CACHE_VERSION}-{_digest(parameters)}"


def _transient(task_: Any, task_run: Any, state: Any) -> bool:
    """Retry only what a retry can fix: a service that did not answer, not a bad input."""
    try:
        state.result()
    except (ConnectionError, TimeoutError, OSError) as exc:
        return not isinstance(exc, (FileNotFoundError, PermissionError))
    except Exception as exc:  # MLflow wraps HTTP failures in MlflowException
        if type(exc).__name__ == "VersioningError":  # a DVC pull/push that the S3 endpoint did not answer
            return True
        return type(exc).__name__ == "MlflowException" and "RESOURCE_DOES_NOT_EXIST" not in str(exc)
    return False


@task(name="compose-config")
def compose_config(config_name: str, overrides: list[str]) -> dict[str, Any]:
    """The resolved Hydra config (plain data) that ``radfm train <overrides>`` would run."""
    from radfm.train.compose import compose, to_container

    return {"cfg": to_container(compose(overrides, config_name)), "seconds": 0.0}


@task(name="prepare-data", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=_transient)
def prepare_data(cfg: dict[str, Any], spec: DataSpec) -> dict[str, Any]:
    """Make the dataset exist (generate, import, or take the DVC-tracked folder: ``dvc pull`` first when a remote
    is configured) → ``{cfg, manifest, root, version}``, with the
    question profile written beside the manifest when it is missing or stale (before the data version is
    computed, so the version covers it).

    ``cfg`` comes back with ``data.root``/``data.manifest`` pointing at the prepared data.
    """
    from omegaconf import OmegaConf, open_dict

    from radfm.data.manifest import find_manifest
    from radfm.data.profile import ensure_profile
    from radfm.registry.tracking import compute_data_version
    from radfm.train.data_prep import ensure_dataset

    t0 = time.perf_counter()
    conf = OmegaConf.create(cfg)
    if spec.kind == "config":
        root = Path(str(conf.data.root))
        given = Path(str(conf.data.manifest))
        if not given.exists() and given == root / "manifest.jsonl" and (root / "manifests").is_dir():
            with open_dict(conf):  # the layout `radfm ingest` wrote before: one manifest under manifests/
                conf.data.manifest = str(find_manifest(root))
        manifest = ensure_dataset(conf.data)
    elif spec.kind == "dvc":
        from radfm.train.data_prep import prepare_tracked

        # `dvc pull` only when there is a remote; without one the workspace is the data (radfm.data.versioning).
        root, manifest = prepare_tracked(conf.data, spec.repo, spec.target, spec.manifest, spec.remote)
    else:
        root, manifest = _ingest(spec)
    if not manifest.is_file():
        raise FileNotFoundError(f"the prepared data has no manifest at {manifest} (set data.manifest)")
    ensure_profile(manifest)
    # One definition for every kind: the version of the DVC-tracked folder holding the data (data/ for
    # data/medmd-synth, as data.dvc records it), else of the data root itself.
    version = compute_data_version(str(root))
    if spec.version and version != spec.version:
        raise ValueError(f"the data at {root} has version {version}, not {spec.version}: check out the git "
                         "revision whose .dvc file has that version (and `radfm data pull`), then run again")
    with open_dict(conf):
        conf.data.root = str(root)
        conf.data.manifest = str(manifest)
        conf.data.version = version  # training records it instead of hashing the data again
    return {"cfg": OmegaConf.to_container(conf, resolve=True), "manifest": str(manifest), "root": str(root),
            "version": version, "seconds": time.perf_counter() - t0}


def _ingest(spec: DataSpec) -> tuple[Path, Path]:
    from radfm.data import importers
    from radfm.data.manifest import find_manifest

    if not (spec.importer and spec.source and spec.out):
        raise ValueError("data.kind=ingest needs data.importer (table|dicom|medmnist), data.source and data.out")
    out = Path(spec.out)
    if spec.importer == "table":
        importers.ingest_table(spec.source, out, on_error="raise")
    elif spec.importer == "medmnist":
        importers.ingest_medmnist(spec.source, out, on_error="raise")
    else:
        if not spec.reports:
            raise ValueError("data.importer=dicom needs data.reports (a CSV of reports)")
        importers.ingest_dicom_folder(spec.source, spec.reports, out, on_error="raise")
    manifest = Path(spec.manifest) if spec.manifest else find_manifest(out)
    return out, manifest


@task(name="validate-data", cache_key_fn=inputs_key)
def validate_data(root: str, manifest: str, version: str, config: str | None, images: bool,
                  out_dir: str) -> dict[str, Any]:
    """Great Expectations suites on the manifest (and image statistics); fails the flow on a failing
    expectation, naming it and its offending rows. ``version`` is part of the cache key: new data, new check."""
    from prefect.artifacts import create_markdown_artifact

    from radfm.validation import ValidationConfig, validate_dataset

    t0 = time.perf_counter()
    vcfg = ValidationConfig.from_yaml(config) if config else None
    report = validate_dataset(root, manifest=manifest, out_dir=out_dir, config=vcfg, images=images)
    lines = [f"# Data validation: {'passed' if report.success else 'FAILED'}", "",
             f"data version `{version}`; JSON `{report.json_path}`; Data Docs `{report.docs_path}`", ""]
    for f in report.failures:
        shown = ", ".join(str(o) for o in (f.get("offending") or [])[:10])
        lines.append(f"- **{f.get('expectation')}** on `{f.get('column')}`: {f.get('unexpected_count')} rows "
                     f"({shown})")
    create_markdown_artifact("\n".join(lines), key="data-validation", description="Great Expectations result")
    report.raise_for_failures()
    return {"json": str(report.json_path), "docs": str(report.docs_path), "seconds": time.perf_counter() - t0}


@task(name="train", cache_key_fn=inputs_key)
def train_model(cfg: dict[str, Any]) -> dict[str, Any]:
    """``radfm.train.train(cfg)`` (one Lightning process or Ray Train, as ``trainer`` says)."""
    from omegaconf import OmegaConf

    from radfm.train.train import run_dir_of, train

    t0 = time.perf_counter()
    conf = OmegaConf.create(cfg)
    metrics = train(conf)
    run_id = metrics.pop("run_id", None)
    return {"run_id": run_id, "run_dir": str(run_dir_of(conf)), "model_dir": str(run_dir_of(conf) / "model"),
            "metrics": {k: float(v) for k, v in metrics.items()}, "seconds": time.perf_counter() - t0}


@task(name="check-tracking", retries=3, retry_delay_seconds=[2, 5, 15], retry_condition_fn=_transient)
def check_tracking(tracking_uri: str) -> dict[str, Any]:
    """A short probe of an http(s) tracking server before any work that needs it (MLflow's own client retries
    for minutes before it reports a dead server)."""
    from radfm.registry.registry import health_check

    t0 = time.perf_counter()
    health_check(tracking_uri)
    return {"seconds": time.perf_counter() - t0}


@task(name="radbench", cache_key_fn=inputs_key)
def radbench(trained: dict[str, Any], manifest: str, root: str, spec: EvalSpec,
             tracking_uri: str | None, validation_dir: str | None = None) -> dict[str, Any]:
    """RadBench on the test split beside the blind and image-ablated baselines; files and metrics go to the
    training run in MLflow (when it has one), with the data validation report that cleared the data."""
    from radfm.eval.radbench import evaluate_checkpoint, log_to_mlflow

    t0 = time.perf_counter()
    out_dir = Path(trained["run_dir"]) / "radbench"
    summary = evaluate_checkpoint(trained["model_dir"], manifest, out_dir, data_root=root, **spec.model_dump())
    if trained.get("run_id") and tracking_uri:
        import mlflow

        from radfm.registry.model_card import run_description

        mlflow.set_tracking_uri(tracking_uri)
        with mlflow.start_run(run_id=trained["run_id"]) as run:
            log_to_mlflow(summary, out_dir)
            if validation_dir and Path(validation_dir).is_dir():
                mlflow.log_artifacts(validation_dir, "validation")
            # The run page's description: what the run is judged by, without opening an artifact.
            mlflow.set_tag("mlflow.note.content",
                           run_description(summary, run.data.tags.get("radfm.data_version")))
    return {"dir": str(out_dir), "summary": summary, "seconds": time.perf_counter() - t0}


@task(name="register", cache_key_fn=inputs_key, retries=2, retry_delay_seconds=[2, 10],
      retry_condition_fn=_transient)
def register_model(trained: dict[str, Any], radbench_dir: str, name: str, tracking_uri: str,
                   example_image: str | None) -> dict[str, Any]:
    """Log the checkpoint as a pyfunc LoggedModel in the training run (RadBench metrics against its model id),
    register it as the ``challenger`` and publish its model card (the version's description, ``MODEL_CARD.md``
    beside the checkpoint and in the run). Cached on its inputs: a resumed run never registers twice."""
    import mlflow

    from radfm.registry.registry import register_checkpoint

    t0 = time.perf_counter()
    examples = [example_image] if example_image else None
    mlflow.set_tracking_uri(tracking_uri)
    if trained.get("run_id"):
        with mlflow.start_run(run_id=trained["run_id"]):
            mv = register_checkpoint(trained["model_dir"], radbench_dir, name=name, tracking_uri=tracking_uri,
                                     input_example_images=examples)
    else:
        mv = register_checkpoint(trained["model_dir"], radbench_dir, name=name, tracking_uri=tracking_uri,
                                 input_example_images=examples)
    try:
        card: str | None = publish_model_card(trained, radbench_dir, name, mv, tracking_uri)
    except Exception as exc:  # noqa: BLE001 - a retry of this task would register the model a second time
        log.warning("%s version %s is registered, but its model card could not be published (%s: %s); the "
                    "registry's tags and the run's artifacts still hold its lineage", name, mv.version,
                    type(exc).__name__, exc)
        card = None
    model_id = (mv.tags or {}).get("radfm.model_id")
    return {"name": name, "version": str(mv.version), "model_id": model_id, "run_id": mv.run_id, "card": card,
            "seconds": time.perf_counter() - t0}


def pipeline_parameters() -> tuple[dict[str, Any], dict[str, Any]] | None:
    """``(parameters, defaults)`` of the radfm-pipeline flow run this task runs in, as plain data (None outside
    one): what the model card's reproduce command is made of."""
    from prefect.context import FlowRunContext

    from flows.params import PipelineParams

    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow is None or ctx.flow.name != "radfm-pipeline":
        return None
    raw = (ctx.parameters or {}).get("params")  # absent when the flow ran with its default parameters
    params = raw if isinstance(raw, PipelineParams) else PipelineParams.model_validate(raw or {})
    return params.model_dump(mode="json"), PipelineParams().model_dump(mode="json")


def publish_model_card(trained: dict[str, Any], radbench_dir: str, name: str, mv: Any, tracking_uri: str) -> str:
    """Render the model card of the registered version ``mv``, write it beside the checkpoint, log it to the
    version's run and make it the version's description → the card file's path."""
    from radfm.registry.model_card import (
        CARD_FILE,
        card_inputs,
        description,
        render,
        reproduce_command,
        write_card,
    )
    from radfm.registry.registry import client

    c = client(tracking_uri)
    summary = json.loads((Path(radbench_dir) / "summary.json").read_text())
    inputs = card_inputs(c, name, mv, summary, trained["model_dir"], run_id=trained.get("run_id"))
    flow_params = pipeline_parameters()
    if flow_params is not None:
        inputs.command, inputs.command_notes = reproduce_command(*flow_params, inputs.data_version)
    card = render(inputs)
    path = write_card(card, trained["model_dir"])
    if mv.run_id:
        c.log_text(mv.run_id, card, CARD_FILE)
    c.update_model_version(name, mv.version, description=description(inputs))
    return str(path)


def record_gate_decision(name: str, version: str, decision: dict[str, Any], tracking_uri: str,
                         model_dir: str | None = None) -> None:
    """Write the promotion gate's decision into the version's model card: its description, the run's
    ``MODEL_CARD.md`` and, when ``model_dir`` is given, the one beside the checkpoint. A version without a card
    (registered by `radfm register`) keeps its description as it is."""
    from radfm.registry.model_card import (
        CARD_FILE,
        GATE_HEADING,
        description_with_gate,
        gate_markdown,
        run_artifact_text,
        with_gate,
        write_card,
    )
    from radfm.registry.registry import client

    if decision.get("reason") == "already champion":  # no new decision: the card keeps the one that made it so
        return
    c = client(tracking_uri)
    mv = c.get_model_version(name, version)
    before = mv.description or ""
    if GATE_HEADING not in before:
        return
    after = description_with_gate(before, decision)
    if after != before:
        c.update_model_version(name, mv.version, description=after)
    body = gate_markdown(decision)
    logged = run_artifact_text(c, mv.run_id, CARD_FILE) if mv.run_id else None
    if logged and GATE_HEADING in logged:
        c.log_text(mv.run_id, with_gate(logged, body), CARD_FILE)
    local = Path(model_dir) / CARD_FILE if model_dir else None
    if local is not None and local.is_file():
        write_card(with_gate(local.read_text(), body), local.parent)


@task(name="promote", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=_transient)
def promote_model(name: str, version: str, gate: str | None, tracking_uri: str,
                  model_dir: str | None = None) -> dict[str, Any]:
    """Move ``champion`` to ``version`` when it passes the gate against the current champion (idempotent), and
    write the decision into the version's model card (also the copy in ``model_dir``, when given)."""
    from radfm.registry.promotion import Gate, promote

    t0 = time.perf_counter()
    gate_obj = None
    if gate:
        path = Path(gate)
        if not path.is_file():
            raise FileNotFoundError(f"promotion gate {path} does not exist (write one, or leave `gate` unset for "
                                    "the built-in gate)")
        import yaml

        text = path.read_text()
        gate_obj = Gate.from_dict(json.loads(text) if path.suffix == ".json" else yaml.safe_load(text))
    decision = promote(name, version=version, gate=gate_obj, tracking_uri=tracking_uri)
    try:
        record_gate_decision(name, version, decision.to_dict(), tracking_uri, model_dir)
    except Exception as exc:  # noqa: BLE001 - the decision is recorded (version tags); a retry would find none new
        log.warning("the gate's decision on %s version %s is in its promotion.* tags but not in its model card "
                    "(%s: %s)", name, version, type(exc).__name__, exc)
    return {**decision.to_dict(), "seconds": time.perf_counter() - t0}
