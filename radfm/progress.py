"""Progress of long work (the vision warm-up, the fit, ingest, MedMD-synth, RadBench): a Rich bar when stderr is
a terminal, otherwise a log line on the ``radfm.progress`` logger every ``every_s`` seconds with the step and
total, the loss, the rate and the ETA.

Why lines off a terminal: a bar redrawn with carriage returns is one endless line in a log file, a CI log or the
Prefect UI; a line every ~15 s reads everywhere and shows the job is alive.

Why it costs nothing per step: an update is a few additions and one clock read. A loss tensor is summed where it
lives and read as a number only when a line (or a bar refresh) is due, so a step never waits on the device
because of the reporter, and nothing runs a forward of its own.

Why a heartbeat: a line is written at an update, so a step longer than the interval (a batch of generated
answers on a loaded CPU) would leave the console silent for as long. A daemon thread, waking each second, writes
the open reporter's last known state ("…, still working") when no progress line has come for ``every_s``; it
reads plain numbers only, never a tensor.

Sinks (:func:`add_sink`) receive a :class:`Snapshot` at the start, at each interval and at the end: flows/ adds
one that keeps a Prefect progress artifact up to date (the library itself imports no Prefect).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

DEFAULT_EVERY_S = 15.0
EVERY_ENV = "RADFM_PROGRESS_EVERY_S"
# A bar redraws its loss and rate at most this often (a loss on a GPU is then read once a second, not per step).
BAR_REFRESH_S = 1.0
# How often the heartbeat looks for a silent reporter; reporters with a shorter interval get no heartbeat.
HEARTBEAT_TICK_S = 1.0

log = logging.getLogger("radfm.progress")
T = TypeVar("T")
_ids = itertools.count(1)
# (clock, time) of the last line any reporter logged. A reporter's first interval runs from there, not from its own
# start: a validation inside the fit, or RadBench after the training, would otherwise add its whole interval to
# the time since the previous line (two reporters, up to twice every_s of silence).
_last_line: list[tuple[Callable[[], float], float]] = []


def default_every_s() -> float:
    """Seconds between progress lines: ``$RADFM_PROGRESS_EVERY_S``, else :data:`DEFAULT_EVERY_S`."""
    raw = os.environ.get(EVERY_ENV, "").strip()
    if not raw:
        return DEFAULT_EVERY_S
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{EVERY_ENV}={raw!r} is not a number of seconds (e.g. 15)") from None
    if value < 0 or math.isnan(value):
        raise ValueError(f"{EVERY_ENV}={raw!r} must be >= 0 seconds")
    return value


def stderr_is_terminal() -> bool:
    """Whether a live bar can be drawn: stderr is a terminal that understands cursor movement."""
    try:
        return bool(sys.stderr.isatty()) and os.environ.get("TERM", "") != "dumb"
    except (AttributeError, ValueError):  # a replaced or closed stderr
        return False


def duration(seconds: float | None) -> str:
    """``75`` → ``1m15s``; ``3725`` → ``1h02m05s``; None → ``?``."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


@dataclass(frozen=True)
class Snapshot:
    """Where one piece of work stands. ``rate`` is ``item`` per second over the last interval (over the whole
    run when ``done``); ``loss`` the mean over the updates of that interval; ``key`` names a Prefect artifact."""

    id: int
    name: str
    step: int
    total: int | None
    unit: str
    item: str
    elapsed_s: float
    rate: float | None
    loss: float | None
    eta_s: float | None
    key: str | None = None
    done: bool = False
    busy: bool = False  # a heartbeat's: no update since the last line, the current step still running

    @property
    def percent(self) -> float | None:
        """0–100, or None without a total."""
        if not self.total:
            return None
        return max(0.0, min(100.0, 100.0 * self.step / self.total))

    def line(self) -> str:
        """``fit: step 120/350 (34%), loss 1.2345, 15.2 samples/s, elapsed 1m20s, ETA 2m33s``."""
        where = f"{self.unit} {self.step}/{self.total}" if self.total else f"{self.unit} {self.step}"
        if self.percent is not None:
            where += f" ({self.percent:.0f}%)"
        parts = [where]
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        if self.rate is not None:
            parts.append(f"{self.rate:.1f} {self.item}/s")
        if self.done:
            parts.append(f"done in {duration(self.elapsed_s)}")
        else:
            parts.append(f"elapsed {duration(self.elapsed_s)}")
            if self.eta_s is not None:
                parts.append(f"ETA {duration(self.eta_s)}")
        if self.busy:
            parts.append("still working")
        return f"{self.name}: " + ", ".join(parts)


Sink = Callable[[Snapshot], None]
_sinks: list[Sink] = []


def add_sink(sink: Sink) -> None:
    """Call ``sink(snapshot)`` at each reporter's start, interval and end (once per sink, however often added)."""
    if sink not in _sinks:
        _sinks.append(sink)


def remove_sink(sink: Sink) -> None:
    if sink in _sinks:
        _sinks.remove(sink)


class _Board:
    """The one Rich live display shared by the reporters open at once (Rich draws one live display per console:
    the fit's bar and a validation's bar inside it are two tasks of one display)."""

    progress: Any = None
    open = 0

    @classmethod
    def add(cls, name: str, total: int | None) -> Any:
        if cls.progress is None:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            cls.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"),
                                    TimeRemainingColumn(), console=Console(stderr=True))
            cls.progress.start()
        cls.open += 1
        return cls.progress.add_task(name, total=total, info="")

    @classmethod
    def done(cls) -> None:
        cls.open -= 1
        if cls.open <= 0 and cls.progress is not None:
            cls.progress.stop()  # the finished bars stay on screen; the next reporter starts a new display
            cls.progress, cls.open = None, 0


class ProgressReporter:
    """Reports one piece of work of ``total`` ``unit``s (None: unknown) as it advances.

    ``update(step)`` (or ``update()`` to advance by one) after each step, with the ``items`` it handled (samples,
    rows; default: the steps advanced) and its ``loss`` (a float or a tensor, never read per step). ``bar``: None
    draws a Rich bar when stderr is a terminal, else logs lines; True/False forces one. ``every_s`` (None:
    :func:`default_every_s`) spaces the lines and the sinks' calls; 0 reports every update. ``start`` is the
    step already done (a resumed fit), so the rate and ETA count only this run's steps. ``clock`` is injectable
    for tests. Use it as a context manager, or call :meth:`close` (the final line and the sinks' last call).
    """

    def __init__(self, name: str, total: int | None = None, *, unit: str = "step", item: str = "samples",
                 every_s: float | None = None, bar: bool | None = None, key: str | None = None, start: int = 0,
                 clock: Callable[[], float] = time.monotonic, logger: logging.Logger | None = None) -> None:
        self.every_s = default_every_s() if every_s is None else float(every_s)
        if self.every_s < 0 or math.isnan(self.every_s):
            raise ValueError(f"progress every_s = {every_s} must be >= 0 seconds")
        self.name, self.unit, self.item, self.key = name, unit, item, key
        self.total = int(total) if total is not None and math.isfinite(total) and total > 0 else None
        self.id = next(_ids)
        self._clock, self._log = clock, logger or log
        self._t0 = self._last = self._last_bar = clock()
        if _last_line and _last_line[0][0] is clock:
            self._last = min(self._t0, _last_line[0][1])
        self.step = self._start = int(start)
        self._items = self._items_all = 0
        self._loss: Any = None
        self._loss_n = 0
        self._last_loss: float | None = None
        self._lines = 0
        self.closed = False
        self._task: Any = None
        if stderr_is_terminal() if bar is None else bar:
            try:
                self._task = _Board.add(name, self.total)
            except Exception:  # noqa: BLE001 - no Rich, or a console it cannot draw on: log lines instead
                self._task = None
        if self._task is None and clock is time.monotonic and self.every_s >= HEARTBEAT_TICK_S:
            _Heartbeat.watch(self)
        self._to_sinks(self._snapshot(self._t0, done=False))

    @property
    def bar(self) -> bool:
        """Whether this reporter draws a bar (else it logs lines)."""
        return self._task is not None

    def __enter__(self) -> ProgressReporter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close(failed=exc_type is not None)

    def update(self, step: int | None = None, *, advance: int = 1, items: int | None = None,
               loss: Any = None) -> None:
        """Record a step: ``step`` (absolute) or ``advance`` steps more; ``items`` handled (default: the steps
        advanced); its ``loss``. Logs a line / refreshes the bar when one is due."""
        before = self.step
        self.step = before + advance if step is None else int(step)
        n = (self.step - before) if items is None else int(items)
        self._items += n
        self._items_all += n
        if loss is not None:
            value = loss.detach() if hasattr(loss, "detach") else loss
            self._loss = value if self._loss is None else self._loss + value  # on the loss's device: no sync
            self._loss_n += 1
        now = self._clock()
        if self._task is not None:
            _Board.progress.update(self._task, completed=self.step)
            if now - self._last_bar >= min(BAR_REFRESH_S, self.every_s):
                self._refresh_bar(now)
        if now - self._last >= self.every_s:
            self._report(now)

    def close(self, failed: bool = False) -> None:
        """The final line (when the work took at least one interval, or a line was logged; not when it
        ``failed``: the error is the line that matters) and the sinks' last call; then the bar is finished.
        Closing twice does nothing."""
        if self.closed:
            return
        self.closed = True
        _Heartbeat.forget(self)
        now = self._clock()
        snap = self._snapshot(now, done=True)
        if self._task is not None:
            _Board.progress.update(self._task, completed=self.step, info=self._info(snap))
            _Board.done()
        elif not failed and (self._lines or now - self._t0 >= self.every_s):
            self._line(snap, now)
        self._to_sinks(snap)

    # ------------------------------------------------------------------------------------------------ inside

    def _snapshot(self, now: float, done: bool) -> Snapshot:
        elapsed = now - self._t0
        if done:
            rate = self._items_all / elapsed if elapsed > 0 and self._items_all else None
        else:
            window = now - max(self._last, self._t0)
            rate = self._items / window if window > 0 and self._items else None
        # The done line carries the last interval's loss (its own updates' when it had some).
        loss = float(self._loss) / self._loss_n if self._loss_n else self._last_loss if done else None
        ran = self.step - self._start
        eta = None
        if self.total is not None and ran > 0 and elapsed > 0:
            eta = max(0, self.total - self.step) * elapsed / ran
        return Snapshot(self.id, self.name, self.step, self.total, self.unit, self.item, elapsed, rate, loss, eta,
                        self.key, done)

    def _report(self, now: float) -> None:
        snap = self._snapshot(now, done=False)
        self._last, self._last_loss = now, snap.loss if snap.loss is not None else self._last_loss
        self._items, self._loss, self._loss_n = 0, None, 0
        if self._task is None:
            self._line(snap, now)
            self._lines += 1
        else:
            self._last_bar = now
            _Board.progress.update(self._task, info=self._info(snap))
        self._to_sinks(snap)

    def _line(self, snap: Snapshot, now: float) -> None:
        self._log.info(snap.line())
        _last_line[:] = [(self._clock, now)]

    def heartbeat(self, now: float) -> bool:
        """Log the last known state ("still working") when no progress line has come for ``every_s`` (the
        heartbeat thread calls it; it reads plain numbers only). Returns whether it logged."""
        last = max(self._last, _last_line[0][1] if _last_line and _last_line[0][0] is self._clock else -math.inf)
        if self.closed or self._task is not None or now - last < self.every_s:
            return False
        elapsed, ran = now - self._t0, self.step - self._start
        eta = max(0, self.total - self.step) * elapsed / ran if self.total is not None and ran > 0 else None
        self._line(Snapshot(self.id, self.name, self.step, self.total, self.unit, self.item, elapsed, None,
                            self._last_loss, eta, self.key, busy=True), now)
        self._lines += 1
        return True

    def _refresh_bar(self, now: float) -> None:
        """The bar's loss and rate over the current interval so far (its counters reset in :meth:`_report`)."""
        self._last_bar = now
        loss = float(self._loss) / self._loss_n if self._loss_n else None
        start = max(self._last, self._t0)
        rate = self._items / (now - start) if now > start and self._items else None
        parts = [] if loss is None else [f"loss {loss:.4f}"]
        if rate is not None:
            parts.append(f"{rate:.1f} {self.item}/s")
        _Board.progress.update(self._task, info=" ".join(parts))

    @staticmethod
    def _info(snap: Snapshot) -> str:
        parts = [] if snap.loss is None else [f"loss {snap.loss:.4f}"]
        if snap.rate is not None:
            parts.append(f"{snap.rate:.1f} {snap.item}/s")
        return " ".join(parts)

    def _to_sinks(self, snap: Snapshot) -> None:
        for sink in list(_sinks):
            try:
                sink(snap)
            except Exception as exc:  # noqa: BLE001 - a UI that cannot be updated must never stop the work
                self._log.debug("progress sink %r failed: %s", sink, exc)


class _Heartbeat:
    """The daemon thread that calls :meth:`ProgressReporter.heartbeat` of the newest open reporter each
    :data:`HEARTBEAT_TICK_S` (the newest: a validation inside the fit speaks for both). It ends when no reporter is
    open and starts again with the next."""

    lock = threading.Lock()
    reporters: list[weakref.ref[ProgressReporter]] = []
    thread: threading.Thread | None = None

    @classmethod
    def watch(cls, reporter: ProgressReporter) -> None:
        with cls.lock:
            cls.reporters.append(weakref.ref(reporter))
            if cls.thread is None:
                cls.thread = threading.Thread(target=cls._run, name="radfm-progress-heartbeat", daemon=True)
                cls.thread.start()

    @classmethod
    def forget(cls, reporter: ProgressReporter) -> None:
        with cls.lock:
            cls.reporters = [r for r in cls.reporters if r() is not None and r() is not reporter]

    @classmethod
    def _run(cls) -> None:
        while True:
            time.sleep(HEARTBEAT_TICK_S)
            with cls.lock:
                cls.reporters = [r for r in cls.reporters if r() is not None]
                newest = cls.reporters[-1]() if cls.reporters else None
                if newest is None:
                    cls.thread = None
                    return
            # A progress line must never take the thread (and every later heartbeat) down with it.
            with contextlib.suppress(Exception):
                newest.heartbeat(time.monotonic())


def track(iterable: Iterable[T], name: str, total: int | None = None, **options: Any) -> Iterator[T]:
    """Yield from ``iterable``, reporting one step per item (``options``: :class:`ProgressReporter`'s)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with ProgressReporter(name, total, **options) as progress:
        for value in iterable:
            yield value
            progress.update()
