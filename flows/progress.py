"""radfm's progress and log lines in the Prefect UI.

- :func:`progress_artifact` is a :mod:`radfm.progress` sink: inside a flow or task run, each reporter that names
  a ``key`` (the vision warm-up, the fit) keeps one Prefect progress artifact up to date at the reporter's
  interval, its description the reporter's last line. Outside a run it does nothing (no API is started or called).
- :func:`send_radfm_logs_to_prefect` gives the ``radfm`` logger Prefect's API handler when Prefect set up its
  logging before ``flows`` could name ``radfm`` among its extra loggers (a worker's flow-run process imports
  Prefect first, then the flow's module).

Importing this module imports no Prefect; the functions import it when they run.
"""

from __future__ import annotations

import logging
from typing import Any

from radfm.progress import Snapshot, add_sink

# Artifact id per open reporter (Snapshot.id); an entry leaves when its reporter is done.
_artifacts: dict[int, Any] = {}


def progress_artifact(snap: Snapshot) -> None:
    """Create or update the progress artifact of ``snap``'s reporter (only keyed reporters, only in a run)."""
    if snap.key is None or snap.percent is None:
        return
    from prefect.context import FlowRunContext, TaskRunContext

    if TaskRunContext.get() is None and FlowRunContext.get() is None:
        _artifacts.pop(snap.id, None)
        return
    from prefect.artifacts import create_progress_artifact, update_progress_artifact

    artifact = _artifacts.get(snap.id)
    if artifact is None:
        artifact = create_progress_artifact(snap.percent, key=snap.key, description=snap.line())
        _artifacts[snap.id] = artifact
    else:
        update_progress_artifact(artifact, snap.percent, description=snap.line())
    if snap.done:
        _artifacts.pop(snap.id, None)


def send_radfm_logs_to_prefect() -> None:
    """When Prefect has set its logging up already, the ``radfm`` logger gets the handlers of Prefect's
    ``prefect.extra`` logger (what Prefect gives each of ``PREFECT_LOGGING_EXTRA_LOGGERS`` when it sets up),
    unless it has them. When it has not, it reads ``PREFECT_LOGGING_EXTRA_LOGGERS`` (set by ``flows``) then."""
    import sys

    configuration = sys.modules.get("prefect.logging.configuration")
    if configuration is None or not getattr(configuration, "PROCESS_LOGGING_CONFIG", None):
        return
    radfm = logging.getLogger("radfm")
    for handler in logging.getLogger("prefect.extra").handlers:
        if handler not in radfm.handlers:
            radfm.addHandler(handler)


def install() -> None:
    """Add :func:`progress_artifact` to radfm's progress sinks (idempotent)."""
    add_sink(progress_artifact)
