"""radfm in the Prefect UI: ``radfm`` is among Prefect's extra loggers (its lines reach a run's logs, whichever
of flows and Prefect was imported first), and a keyed progress reporter keeps one Prefect progress artifact up to
date inside a run and creates none outside one."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import flows  # noqa: F401  (Prefect's settings and radfm's progress sink, before Prefect is imported)
from flows.progress import progress_artifact
from radfm.progress import ProgressReporter

ROOT = Path(__file__).resolve().parents[2]
PROBE = ("import logging; from prefect.settings import PREFECT_LOGGING_EXTRA_LOGGERS as s; import prefect.main; "
         "from prefect.logging.handlers import APILogHandler; r = logging.getLogger('radfm'); "
         "print(','.join(s.value() or []), any(isinstance(h, APILogHandler) for h in r.handlers), "
         "r.getEffectiveLevel())")


def _python(code: str, **env: str) -> list[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_LOGGING")}
    full.update(env)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=full,
                         timeout=300, check=True)
    return out.stdout.split()


def test_radfm_is_among_prefects_extra_loggers():
    # flows first (`python -m flows.pipeline`): Prefect reads the setting; INFO lines pass Prefect's root level.
    assert _python("import flows; " + PROBE) == ["radfm", "True", str(logging.INFO)]
    # A user's own list is kept, radfm added.
    listed = _python("import flows; " + PROBE, PREFECT_LOGGING_EXTRA_LOGGERS="myapp")[0]
    assert set(listed.split(",")) == {"myapp", "radfm"}  # Prefect keeps them as a set
    # Prefect first (a worker's flow-run process loads the flow's module after Prefect has read its settings):
    # radfm gets Prefect's API handler all the same.
    assert _python("import prefect.main; import flows; " + PROBE)[-2:] == ["True", str(logging.INFO)]


async def _artifacts(key: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async with get_client() as client:
        return await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))


async def _logs(flow_run_id) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async with get_client() as client:
        logs = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return [entry.message for entry in logs]


def test_progress_is_a_prefect_artifact_and_radfm_lines_reach_the_run(prefect_harness):
    from prefect import flow, task

    @task
    def work() -> None:
        with ProgressReporter("fit", 4, every_s=0, bar=False, key="radfm-test-fit") as reporter:
            for step in range(1, 5):
                reporter.update(step, loss=0.5)
        logging.getLogger("radfm.test").info("a line from radfm")

    @flow
    def trained() -> None:
        work()

    state = trained(return_state=True)
    assert state.is_completed()
    artifacts = asyncio.run(_artifacts("radfm-test-fit"))
    assert len(artifacts) == 1, artifacts  # one artifact, updated in place
    assert artifacts[0].type == "progress" and float(artifacts[0].data) == 100.0
    assert "fit: step 4/4 (100%)" in artifacts[0].description
    assert artifacts[0].flow_run_id == state.state_details.flow_run_id

    deadline = time.monotonic() + 30  # Prefect sends logs in batches, every 2 s
    while "a line from radfm" not in (logs := asyncio.run(_logs(state.state_details.flow_run_id))):
        assert time.monotonic() < deadline, logs
        time.sleep(1)


def test_outside_a_run_the_artifact_sink_does_nothing(prefect_harness):
    from radfm import progress

    assert progress_artifact in progress._sinks  # installed by `import flows`: it hears every update below
    with ProgressReporter("fit", 2, every_s=0, bar=False, key="radfm-test-outside") as reporter:
        reporter.update()
        reporter.update()
    assert asyncio.run(_artifacts("radfm-test-outside")) == []
