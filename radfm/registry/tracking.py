"""MLflow tracking of a training run: config, data version, git commit, counts, metrics, artifacts.

One run per training (or one child run per sweep trial under the sweep's parent run). The default store is a
SQLite file and an artifact folder under RADFM_HOME; a remote ``mlflow server`` URI works the same way.

The data set is the run's MLflow dataset input (what the run page lists under "Datasets"): its name, the DVC
data version as its digest, where it lives said without this machine's paths, and a summary of its question
profile. Only aggregates go there, never a row: a manifest may carry patient identifiers.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import urllib.request
import warnings
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

# Set by the sweep callback (radfm.train.sweep) for the jobs of a Hydra multirun: each job's run becomes a child
# of the sweep's parent run even when that parent is not the active run of this process (or of any process).
PARENT_RUN_ENV = "RADFM_MLFLOW_PARENT_RUN_ID"
# Families listed one by one in the dataset's profile (a table of free-text questions can have thousands; the
# whole profile is the run's data/profile.json artifact).
MAX_PROFILE_FAMILIES = 500


def git_commit(cwd: str | Path | None = None) -> str:
    """The checkout's commit (with ``-dirty`` when the tree has uncommitted changes), or ``unknown``."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def check_server(uri: str, timeout: float = 3.0) -> None:
    """Fail fast on a dead tracking server (MLflow's own client retries for minutes before it says so)."""
    if not uri.startswith(("http://", "https://")):
        return
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (the user's own server)
            if resp.status != 200:
                raise ConnectionError(f"MLflow server {uri} answered {resp.status} on /health")
    except OSError as exc:
        raise ConnectionError(f"MLflow tracking server {uri} is not reachable ({exc}); start it with "
                              "`radfm services up` or unset MLFLOW_TRACKING_URI") from None


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def ensure_experiment(name: str, artifact_location: str | None) -> str:
    import mlflow

    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = Path(artifact_location).resolve().as_uri() if artifact_location and "://" not in \
        artifact_location else artifact_location
    return mlflow.create_experiment(name, artifact_location=location)


class RunTracker:
    """Owns the MLflow run of one training; ``enabled=False`` keeps the same calls as no-ops."""

    def __init__(self, enabled: bool, tracking_uri: str | None = None, experiment: str = "radfm",
                 artifact_location: str | None = None, run_name: str | None = None,
                 log_system_metrics: bool = False, data_root: str | None = None,
                 parent_run_id: str | None = None, tags: dict[str, str] | None = None,
                 data_version: str | None = None) -> None:
        self.enabled = enabled
        self.tracking_uri = tracking_uri
        self.run_id: str | None = None
        # A caller that has just hashed the data (the pipeline) passes the version: hashing a large dataset
        # twice per run is pure I/O.
        self.data_version = data_version or (compute_data_version(data_root) if data_root else "unknown")
        if not enabled:
            return
        import mlflow

        check_server(tracking_uri or "")
        mlflow.set_tracking_uri(tracking_uri)
        remote = (tracking_uri or "").startswith(("http://", "https://"))
        if remote and artifact_location and "://" not in artifact_location:
            # A server stores artifacts itself (mlflow-artifacts:/); a local folder here would bypass it.
            artifact_location = None
        exp_id = ensure_experiment(experiment, artifact_location)
        nested = mlflow.active_run() is not None
        # An active run is the parent (MLflow nests under it); otherwise the sweep's parent, if one is named.
        parent = None if nested else _existing_parent(parent_run_id or os.environ.get(PARENT_RUN_ENV))
        run = mlflow.start_run(experiment_id=exp_id, run_name=run_name, nested=nested, parent_run_id=parent,
                               tags=tags or None, log_system_metrics=log_system_metrics)
        self.run_id = run.info.run_id

    @classmethod
    def from_cfg(cls, cfg: DictConfig, run_dir: Path) -> RunTracker:
        lg = cfg.logger
        return cls(lg.name == "mlflow", tracking_uri=lg.get("tracking_uri"),
                   experiment=lg.get("experiment_name", "radfm"), artifact_location=lg.get("artifact_location"),
                   run_name=str(cfg.run_name), log_system_metrics=bool(lg.get("log_system_metrics", False)),
                   data_root=str(cfg.data.root), tags=sweep_job_tags(), data_version=cfg.data.get("version"))

    def lightning_logger(self) -> Any:
        if not self.enabled:
            return False
        from lightning.pytorch.loggers import MLFlowLogger

        return MLFlowLogger(tracking_uri=self.tracking_uri, run_id=self.run_id, log_model=False)

    def log_start(self, cfg: DictConfig, module: Any, datamodule: Any, manifest: Path) -> None:
        if not self.enabled:
            return
        import mlflow

        resolved = OmegaConf.to_container(cfg, resolve=True)
        mlflow.log_dict(resolved, "config/resolved.yaml")
        params = {f"cfg.{k}": str(v)[:500] for k, v in flatten(resolved).items()
                  if not k.startswith(("paths.", "hydra."))}
        for chunk in _chunks(params, 90):
            mlflow.log_params(chunk)
        counts = module.param_counts
        mlflow.set_tags({
            "radfm.data_version": self.data_version,
            "radfm.git_commit": git_commit(),
            "radfm.model_preset": module.model_cfg.name,
            "radfm.manifest": str(manifest),
            "radfm.params_total": counts["total"],
            "radfm.params_trainable": counts["trainable"],
        })
        mlflow.log_metrics({"params_total": counts["total"], "params_trainable": counts["trainable"],
                            "data_quarantined": len(datamodule.quarantine)})
        from radfm.data.profile import load_profile

        profile = load_profile(manifest)  # the question families the data described itself with
        if profile is not None:
            mlflow.log_dict(profile, "data/profile.json")
        log_dataset_input(manifest, self.data_version, name=str(cfg.data.get("name") or ""),
                          data_root=cfg.data.get("root"), profile=profile)

    def fail(self) -> None:
        """End this run as FAILED (training raised): the next run in the process must not nest under it."""
        if not self.enabled:
            return
        import mlflow

        active = mlflow.active_run()
        if active is not None and active.info.run_id == self.run_id:
            mlflow.end_run(status="FAILED")

    def log_end(self, metrics: dict[str, float], model_dir: Path, callbacks: list[Any]) -> None:
        if not self.enabled:
            return
        import mlflow

        mlflow.log_metrics({f"final/{k.replace('/', '_')}": v for k, v in metrics.items()})
        mlflow.log_artifacts(str(model_dir), "model")
        best = [c.best_model_path for c in callbacks if getattr(c, "monitor", None) and c.best_model_path]
        if best:
            mlflow.set_tag("radfm.best_checkpoint", best[0])
        mlflow.end_run()


def sweep_job_tags() -> dict[str, str]:
    """Tags that identify a Hydra multirun job (its number and overrides), so the sweep can find its run."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return {}
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return {}
    return {"radfm.sweep.job_num": str(hc.job.num),
            "radfm.sweep.overrides": " ".join(hc.overrides.task)[:5000]}


def _existing_parent(run_id: str | None) -> str | None:
    """``run_id`` if that run exists in the current tracking store; a stale id only costs the link, not the run."""
    if not run_id:
        return None
    import mlflow

    try:
        deleted = mlflow.MlflowClient().get_run(run_id).info.lifecycle_stage == "deleted"
    except mlflow.exceptions.MlflowException as exc:
        deleted, why = True, str(exc)
    else:
        why = "deleted"
    if deleted:
        log.warning("%s=%s names no live run in %s (%s); this run is not nested under it", PARENT_RUN_ENV,
                    run_id, mlflow.get_tracking_uri(), why)
        return None
    return run_id


def dataset_source_uri(manifest: str | Path, data_root: str | Path | None = None) -> str:
    """Where the manifest lives, in words that hold on another machine (never an absolute path of this one).

    A remote URI (``s3://…``) is kept. A local manifest is named relative to the DVC-tracked folder that holds
    it (``data/medmd-synth/manifest.jsonl`` inside the repository whose ``data.dvc`` tracks ``data/``), else
    relative to RADFM_HOME (``$RADFM_HOME/…``), else by the data root's own name and the path inside it.
    """
    text = str(manifest)
    if "://" in text:
        return text
    # Lexical, not resolve(): a data folder linked in from elsewhere is still named where the run found it.
    path = _absolute(text)
    for folder in path.parents:
        if folder.parent == folder:
            break
        if (folder.parent / f"{folder.name}.dvc").is_file():  # `dvc add folder` wrote folder.dvc beside it
            return path.relative_to(folder.parent).as_posix()
    try:
        return "$RADFM_HOME/" + path.relative_to(_absolute(os.environ.get("RADFM_HOME", ".radfm"))).as_posix()
    except ValueError:
        pass
    root = _absolute(data_root) if data_root else path.parent
    try:
        return (Path(root.name) / path.relative_to(root)).as_posix()
    except ValueError:  # a manifest outside its data root: its folder's name and its own
        return (Path(path.parent.name) / path.name).as_posix()


def _absolute(path: str | Path) -> Path:
    return Path(os.path.abspath(Path(str(path)).expanduser()))


def profile_summary(profile: dict[str, Any] | None) -> dict[str, Any]:
    """The question profile in aggregates: rows per split, families per kind, and per family its kind, row
    counts and number of choices. No row, no answer text: what goes to the tracking store and the model card."""
    if not profile:
        return {}
    families = profile.get("families", [])
    kinds: dict[str, int] = {}
    for f in families:
        kinds[f.get("kind", "open")] = kinds.get(f.get("kind", "open"), 0) + 1
    return {"rows": dict(profile.get("rows", {})), "families": len(families), "kinds": kinds,
            "per_family": [{"name": f.get("name"), "kind": f.get("kind"), "rows": dict(f.get("rows", {})),
                            "choices": len(f.get("choices") or []), "report_like": bool(f.get("report_like"))}
                           for f in families[:MAX_PROFILE_FAMILIES]],
            "messages": len(profile.get("messages", [])) + sum(len(f.get("messages", [])) for f in families)}


def log_dataset_input(manifest: str | Path, data_version: str, name: str = "", data_root: str | Path | None = None,
                      profile: dict[str, Any] | None = None, context: str = "training") -> None:
    """Log the data set as an MLflow dataset input of the active run: ``name`` (default: the data root's
    folder), the data version as digest, :func:`dataset_source_uri` as source, :func:`profile_summary` as
    profile."""
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    class ProfiledDataset(MetaDataset):
        """A MetaDataset with a profile (MetaDataset has none, so the UI would show no profile)."""

        def __init__(self, *args: Any, profile: dict[str, Any], **kwargs: Any) -> None:
            self._profile = profile
            super().__init__(*args, **kwargs)

        @property
        def profile(self) -> dict[str, Any]:
            return self._profile

        def to_dict(self) -> dict[str, str]:
            return {**super().to_dict(), "profile": json.dumps(self._profile)}

    uri = dataset_source_uri(manifest, data_root)
    with warnings.catch_warnings():
        # MLflow registers the local-file source twice (schemes "" and "file") and warns that it had to choose.
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        source = resolve_dataset_source(uri)
    root_name = Path(str(data_root)).name if data_root else Path(str(manifest)).parent.name
    # MLflow caps a digest at 36 characters; DVC's md5 is 32.
    dataset = ProfiledDataset(source, name=name or root_name, digest=str(data_version)[:36],
                              profile=profile_summary(profile))
    mlflow.log_input(dataset, context=context)


def compute_data_version(data_root: str) -> str:
    """The data version of a run on ``data_root`` (:func:`radfm.data.versioning.version_of`: DVC's md5 of the
    tracked folder that holds it, ``data/`` for the default data, as ``data.dvc`` records it); ``missing`` when
    there is no such folder."""
    from radfm.data.versioning import version_of

    if not Path(data_root).exists():
        return "missing"
    return version_of(data_root)


def _chunks(d: dict[str, Any], n: int) -> list[dict[str, Any]]:
    items = list(d.items())
    return [dict(items[i:i + n]) for i in range(0, len(items), n)]
