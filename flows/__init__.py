"""Prefect flows and deployments: thin, typed tasks that call the radfm library.

Importing ``flows`` keeps Prefect's own files (its ephemeral API database, persisted task results) under
``RADFM_HOME`` unless ``PREFECT_HOME`` is set, and turns telemetry off: this must run before Prefect is imported.
It also names ``radfm`` among Prefect's extra loggers (radfm's lines, progress included, reach the run's logs in
the Prefect UI) and keeps a progress artifact of training up to date (:mod:`flows.progress`).
"""

from __future__ import annotations

import logging
import os

import radfm  # noqa: F401  (offline defaults: telemetry off for MLflow, Prefect, DVC, Ray)
from flows import progress as _progress
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
# radfm's lines (training progress, the warm-up, RadBench …) in the Prefect UI: Prefect sends the loggers it names
# as "extra" to its API, inside a run. A user's own list is kept, with radfm added.
_extra = [name.strip() for name in os.environ.get("PREFECT_LOGGING_EXTRA_LOGGERS", "").split(",") if name.strip()]
if "radfm" not in _extra:
    os.environ["PREFECT_LOGGING_EXTRA_LOGGERS"] = ",".join([*_extra, "radfm"])
# The same radfm code also runs outside any flow run in a process that imported flows (tests, `flows.serve`):
# Prefect would warn once per line that it has no run to send it to.
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
# Prefect's root logger shows WARNING and up; radfm's INFO lines (progress, stages) are what an operator watches.
if logging.getLogger("radfm").level == logging.NOTSET:
    logging.getLogger("radfm").setLevel(logging.INFO)
_progress.send_radfm_logs_to_prefect()  # Prefect imported first (a worker's flow-run process): attach now
_progress.install()  # training progress as a Prefect progress artifact, inside a run
