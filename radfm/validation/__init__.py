"""Great Expectations suites for a manifest and the statistics of its images (``radfm validate DATA``).

Importing this package turns Great Expectations' analytics off (``GX_ANALYTICS_ENABLED=false``) unless the
user has set the variable: like the rest of radfm, validation works offline and never phones home.
"""

from __future__ import annotations

import os

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

from radfm.validation.cli import run_cli  # noqa: E402
from radfm.validation.config import ValidationConfig  # noqa: E402
from radfm.validation.report import ValidationFailed, ValidationReport  # noqa: E402
from radfm.validation.run import validate_dataset  # noqa: E402

__all__ = ["ValidationConfig", "ValidationFailed", "ValidationReport", "run_cli", "validate_dataset"]
