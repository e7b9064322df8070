"""One Prefect test harness (a real local API on a temporary database) for every flow test, and pipeline
parameters shrunk to seconds on a small MedMD-synth."""

from __future__ import annotations

from pathlib import Path

import pytest

# Small enough for seconds of training, large enough that every task family has test rows for RadBench and
# both answers of each yes/no question for the class-balance expectation.
FAST = [
    "experiment=demo_tiny", "data.synth.n_samples=48", "data.batch_size_2d=4", "data.batch_size_3d=2",
    "trainer.max_steps=4", "trainer.val_check_interval=2", "trainer.limit_val_batches=1",
    "callbacks.vision_warmup.steps=2",
    "callbacks.checkpoint_every_n_steps=2", "trainer.log_every_n_steps=1", "logger.log_system_metrics=false",
]


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def flow_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("flows")


@pytest.fixture(scope="session")
def pipeline_overrides(flow_home):
    """``overrides(*extra, data_dir=…)`` → the Hydra overrides of a fast pipeline run under ``flow_home``."""

    def make(*extra: str, data_dir: Path | None = None) -> list[str]:
        return [f"paths.home={flow_home}/home", f"paths.data_dir={data_dir or flow_home / 'data'}",
                f"paths.mlflow_uri=sqlite:///{flow_home}/mlflow.db", *FAST, *extra]

    return make
