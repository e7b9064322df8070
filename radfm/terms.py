"""The shipped clinical term list (one term per line, ``#`` comments). Imports nothing heavy, so the model
factory (tokenizer corpus), training (loss up-weighting) and evaluation (term precision/recall) share it."""

from __future__ import annotations

from pathlib import Path

TERMS_FILE = Path(__file__).resolve().parent / "resources" / "radiology_terms.txt"


def load_terms(path: str | Path | None = None) -> list[str]:
    lines = Path(path or TERMS_FILE).read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
