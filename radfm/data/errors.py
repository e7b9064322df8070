"""Bad input never disappears: it raises a :class:`SampleError` naming the sample, the file and the reason,
or, with ``on_error="quarantine"``, is written to a quarantine report so counts in = out + quarantined."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

ON_ERROR = ("raise", "quarantine")


class SampleError(ValueError):
    """One sample could not be used. ``str()`` names the sample, the file and the reason."""

    def __init__(self, sample_id: str | None, file: str | None, reason: str) -> None:
        self.sample_id = sample_id
        self.file = file
        self.reason = reason
        super().__init__(f"sample {sample_id or '?'}: file {file or '-'}: {reason}")


@dataclass
class Rejected:
    sample_id: str | None
    file: str | None
    reason: str
    stage: str = ""


@dataclass
class Quarantine:
    """Collects rejected samples; ``write`` puts them in a JSONL report."""

    items: list[Rejected] = field(default_factory=list)

    def add(self, err: SampleError, stage: str = "") -> None:
        self.items.append(Rejected(err.sample_id, err.file, err.reason, stage))

    def __len__(self) -> int:
        return len(self.items)

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as f:
            for item in self.items:
                f.write(json.dumps(asdict(item)) + "\n")
        return path


def check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
