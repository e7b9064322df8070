"""Fixtures for the data tests: the moto S3 server lives in tests/s3.py (shared with the rest of the suite)."""

from __future__ import annotations

import sys
from pathlib import Path

try:
    from tests.s3 import moto_server  # noqa: F401
except ModuleNotFoundError:  # `pytest` run without the project root on sys.path (`python -m pytest` has it)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.s3 import moto_server  # noqa: F401
