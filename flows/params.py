"""Typed parameters of the flows (pydantic: Prefect validates them and shows them in the UI)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class DataSpec(BaseModel):
    """Where the training data comes from.

    - ``config``: whatever the Hydra ``data`` group says (MedMD-synth is generated, MedMNIST imported, a custom
      manifest used as is);
    - ``dvc``: the folder ``target`` that ``<target>.dvc`` tracks in the DVC repository ``repo``, with the data
      set's ``manifest`` inside it (``medmd-synth/manifest.jsonl``; its folder is the data root). With a DVC remote
      (``remote``, the repository's default or ``RADFM_DVC_REMOTE_URL``) it is ``dvc pull``-ed first; without one
      (the embedded default) the workspace is used as it is, and MedMD-synth is generated when it is missing.
      ``version`` pins the expected md5 and fails on anything else;
    - ``ingest``: run an importer (``table``, ``dicom`` or ``medmnist``) from ``source`` into ``out`` first.

    Whatever the kind, the run's data version is that of the DVC-tracked folder holding the data (``data/``, as
    ``data.dvc`` records it and ``radfm data version`` prints it), else of the data root itself
    (:func:`radfm.data.versioning.version_of`).
    """

    kind: Literal["config", "dvc", "ingest"] = "config"
    repo: str = "."
    target: str = "data"
    version: str | None = None
    remote: str | None = None
    importer: Literal["table", "dicom", "medmnist"] | None = None
    source: str | None = None
    out: str | None = None
    reports: str | None = None
    manifest: str | None = Field(None, description="dvc: the manifest's path inside the tracked folder (default: "
                                 "<target>/manifest.jsonl); ingest: its path (default: <out>/manifest.jsonl)")


class EvalSpec(BaseModel):
    """RadBench options (see ``radfm eval``)."""

    split: str = "test"
    batch_size: int = 64  # see radfm.eval.radbench.EvalConfig
    limit: int | None = None
    ablate: bool = True
    embedding: bool = True
    max_new_tokens: int = 128
    num_beams: int = Field(1, ge=1)  # open answers: greedy (1), or beam search


class PipelineParams(BaseModel):
    """Everything one pipeline run needs: the Hydra config name + overrides, and the flow's own options."""

    config_name: str = "train"
    overrides: list[str] = Field(default_factory=lambda: ["experiment=demo_tiny"])
    data: DataSpec = Field(default_factory=DataSpec)
    validation_config: str | None = Field(None, description="YAML of thresholds (default conf/validation/default.yaml)")
    validate_images: bool = True
    eval: EvalSpec = Field(default_factory=EvalSpec)
    registry: bool = Field(True, description="log the model to MLflow and register it as the challenger")
    model_name: str = "radfm"
    gate: str | None = Field(None, description="promotion gate YAML/JSON (default: the built-in gate)")
    promote: bool = True
    refresh: bool = Field(False, description="ignore results cached by earlier runs with the same inputs")
