"""radfm: a reproducible platform for a generalist radiology foundation model (RadFM-style).

Importing the package turns off telemetry, hub downloads and cloud-metadata probes for every service it drives,
unless the user has set the variable already: the library must work offline and never phone home. It also turns
off MLflow's download bar (:data:`QUIET_DEFAULTS`), the same way.
"""

from __future__ import annotations

import os

__version__ = "0.1.0"

OFFLINE_DEFAULTS: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    # boto's credential chain ends in a probe of the cloud metadata address (169.254.169.254): off, so a missing
    # S3 key is reported at once (radfm.data.remote) and nothing is sent off the machine to look for one
    "AWS_EC2_METADATA_DISABLED": "true",
    "GRADIO_ANALYTICS_ENABLED": "False",  # `radfm app`: Gradio reports usage to its servers unless told not to
}

# Output a log reader cannot use, off unless the user sets it: MLflow draws a "Downloading artifacts" bar each time
# it loads a model (registration loads it to check the input example); radfm.progress reports the long work.
QUIET_DEFAULTS: dict[str, str] = {
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}

for _key, _value in {**OFFLINE_DEFAULTS, **QUIET_DEFAULTS}.items():
    os.environ.setdefault(_key, _value)
