"""Each log line once, and no third-party noise: what a run prints is what the user needs to read.

- Lightning's lines printed twice: importing ``lightning`` puts a console handler (``INFO: …``) on the
  ``lightning`` logger, while ``lightning.pytorch`` propagates to the root logger whenever the root has a
  handler (Prefect's console, Hydra's job logging, pytest): every line reached both. With a root handler,
  :func:`quiet_third_party` removes Lightning's own handler, so its lines go through the root's, once, in the
  same format as everything else (and into Hydra's log file). Without one, Lightning's handler is the only
  printer and stays.
- Advertising: Lightning's "💡 Tip: … try installing litlogger / litmodels" lines are dropped by a filter on the
  one logger that emits them.
- Library deprecation warnings that the user cannot act on (Lightning calling a deprecated torch API) are
  ignored by message and module; other warnings are left alone.
- MLflow's "Downloading artifacts" bar (drawn when a model is loaded to check its input example) is switched
  off by MLflow's own variable, set in :data:`radfm.QUIET_DEFAULTS`.

The CLI (no Prefect, no Hydra) has no log handler at all: :func:`show_progress` gives ``radfm.progress`` one.
"""

from __future__ import annotations

import logging
import re
import sys
import warnings

# Messages from Lightning that advertise other products (lightning.pytorch.trainer.connectors).
ADVERTISING = re.compile(r"^\W*Tip: .*\b(litlogger|litmodels)\b", re.IGNORECASE | re.DOTALL)
ADVERTISING_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
# (message regex, category, module regex): deprecations inside libraries, not in radfm's code.
LIBRARY_DEPRECATIONS = (
    # torch deprecated LeafSpec; Lightning's pytree helper still builds one on every batch it moves.
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning, r"lightning\.pytorch\.utilities\._pytree"),
)
LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric")


class DropMessages(logging.Filter):
    """Drops the records whose message matches ``pattern``."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


def _is_lightning_console(handler: logging.Handler) -> bool:
    """The plain ``logging.StreamHandler()`` Lightning's packages add to their own logger at import (a subclass,
    a file handler or a handler with a filter is someone else's)."""
    return type(handler) is logging.StreamHandler and not handler.filters


def one_printer_for_lightning() -> None:
    """When the root logger has a handler, Lightning's loggers print through it alone (see the module doc)."""
    if not logging.getLogger().handlers:
        return
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if _is_lightning_console(h)]:
            logger.removeHandler(handler)
        logger.propagate = True


def quiet_third_party() -> None:
    """Each Lightning line once, its advertising dropped, the library deprecations above ignored; idempotent.
    Call it where a run starts, after the logging is configured (Hydra, Prefect) and before Lightning speaks."""
    one_printer_for_lightning()
    for name in ADVERTISING_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropMessages) for f in logger.filters):
            logger.addFilter(DropMessages(ADVERTISING))
    for message, category, module in LIBRARY_DEPRECATIONS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


def show_progress(stream: object | None = None) -> None:
    """Give ``radfm.progress`` a stderr handler when nothing else would print its lines (no root handler): the
    ``radfm`` commands configure no logging, and Python's last-resort handler shows only warnings."""
    progress = logging.getLogger("radfm.progress")
    if logging.getLogger().handlers or progress.handlers:
        return
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    progress.addHandler(handler)
    progress.setLevel(logging.INFO)
