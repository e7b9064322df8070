"""Prefect flows and deployments: thin, typed tasks that call the radfm library.

Importing ``flows`` keeps Prefect's own files (its ephemeral API database, persisted task results) under
``RADFM_HOME`` unless ``PREFECT_HOME`` is set, and turns telemetry off: this must run before Prefect is imported.
"""

from __future__ import annotations

import os

import radfm  # noqa: F401  (offline defaults: telemetry off for MLflow, Prefect, DVC, Ray)
from radfm.paths import radfm_home

os.environ.setdefault("PREFECT_HOME", str(radfm_home() / "prefect"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Persisted results are what lets a failed run resume from the failed task instead of retraining.
os.environ.setdefault("PREFECT_RESULTS_PERSIST_BY_DEFAULT", "true")
# Prefect's ephemeral API (no PREFECT_API_URL) must answer within 20 s by default; on a fresh RADFM_HOME its
# database is created first, and on a loaded 2-core VM that start once took longer ("Timed out while attempting
# to connect to ephemeral Prefect API server"), failing `make demo` before its first task.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
# One Prefect log line per event is enough; Lightning/MLflow loggers already print theirs.
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
