"""The progress reporter (radfm.progress): off a terminal a line every ``every_s`` seconds with the step, the
loss, the rate and the ETA, on a fake clock; a loss is read only when a line is due; sinks hear the start, each
interval and the end; a short job says nothing and a failed one no "done" line; the CLI shows the lines."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from radfm.progress import ProgressReporter, Snapshot, add_sink, default_every_s, duration, remove_sink, track

ROOT = Path(__file__).resolve().parents[1]


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "radfm.progress"]


def test_lines_come_at_the_interval_with_step_loss_rate_and_eta(caplog):
    caplog.set_level(logging.INFO, logger="radfm.progress")
    clock = Clock()
    reporter = ProgressReporter("fit", 60, every_s=15, bar=False, clock=clock)
    for step in range(1, 61):
        clock.now += 1.0  # one step a second, 4 samples each
        reporter.update(step, items=4, loss=float(step))
    reporter.close()
    got = lines(caplog)
    assert got == [
        # steps 1…15: mean loss 8, 60 samples in 15 s; 45 steps left at 1 s each
        "fit: step 15/60 (25%), loss 8.0000, 4.0 samples/s, elapsed 15s, ETA 45s",
        "fit: step 30/60 (50%), loss 23.0000, 4.0 samples/s, elapsed 30s, ETA 30s",
        "fit: step 45/60 (75%), loss 38.0000, 4.0 samples/s, elapsed 45s, ETA 15s",
        "fit: step 60/60 (100%), loss 53.0000, 4.0 samples/s, elapsed 1m00s, ETA 0s",
        "fit: step 60/60 (100%), loss 53.0000, 4.0 samples/s, done in 1m00s",
    ]


def test_nothing_between_intervals_and_a_resumed_run_counts_only_its_own_steps(caplog):
    caplog.set_level(logging.INFO, logger="radfm.progress")
    clock = Clock()
    reporter = ProgressReporter("fit", 200, every_s=10, bar=False, clock=clock, start=100)
    for step in range(101, 110):
        clock.now += 1.0
        reporter.update(step)
    assert lines(caplog) == []  # 9 s: not due yet
    clock.now += 1.0
    reporter.update(110)
    # 10 steps in 10 s since the resume: 90 left take 90 s (not 100 done in 10 s)
    assert lines(caplog) == ["fit: step 110/200 (55%), 1.0 samples/s, elapsed 10s, ETA 1m30s"]


def test_a_reporter_opened_inside_another_keeps_the_lines_spaced(caplog):
    """A validation inside the fit: its first line is due an interval after the fit's last line, not after its
    own start (else up to two intervals of silence)."""
    caplog.set_level(logging.INFO, logger="radfm.progress")
    clock = Clock()
    fit = ProgressReporter("fit", 100, every_s=15, bar=False, clock=clock)
    for step in range(1, 26):
        clock.now += 1.0
        fit.update(step)  # a line at step 15; 10 s later the validation starts
    with ProgressReporter("validation", 10, unit="batch", every_s=15, bar=False, clock=clock) as val:
        clock.now += 5.0
        val.update()
        assert lines(caplog)[-1] == "validation: batch 1/10 (10%), 0.2 samples/s, elapsed 5s, ETA 45s"


def test_a_step_longer_than_the_interval_gets_a_heartbeat_line(caplog):
    """The heartbeat thread's call, on a fake clock: the last known state, marked as still working, once per
    interval of silence."""
    caplog.set_level(logging.INFO, logger="radfm.progress")
    clock = Clock()
    with ProgressReporter("RadBench model", 200, unit="row", item="rows", every_s=15, bar=False,
                          clock=clock) as reporter:
        clock.now += 15.0
        reporter.update(advance=100, loss=0.5)  # a line: 100 rows in 15 s
        clock.now += 10.0
        assert not reporter.heartbeat(clock.now)  # 10 s of silence: not yet
        clock.now += 5.0
        assert reporter.heartbeat(clock.now)
        assert not reporter.heartbeat(clock.now + 1.0)  # once per interval
    assert lines(caplog)[:2] == [
        "RadBench model: row 100/200 (50%), loss 0.5000, 6.7 rows/s, elapsed 15s, ETA 15s",
        "RadBench model: row 100/200 (50%), loss 0.5000, elapsed 30s, ETA 30s, still working",
    ]


def test_the_heartbeat_thread_speaks_for_a_silent_reporter_and_ends_with_it(caplog, monkeypatch):
    import time

    from radfm import progress

    caplog.set_level(logging.INFO, logger="radfm.progress")
    monkeypatch.setattr(progress, "HEARTBEAT_TICK_S", 0.02)
    with ProgressReporter("fit", 10, every_s=0.1, bar=False) as reporter:
        reporter.update()
        deadline = time.monotonic() + 10
        while not any(line.endswith("still working") for line in lines(caplog)):
            assert time.monotonic() < deadline, lines(caplog)
            time.sleep(0.02)
    deadline = time.monotonic() + 10
    while progress._Heartbeat.thread is not None:  # nothing open: the thread ends
        assert time.monotonic() < deadline
        time.sleep(0.02)


class CountingLoss:
    """A stand-in for a loss tensor that counts how often it is read as a number (a device sync on a GPU)."""

    reads = 0

    def __init__(self, value: float) -> None:
        self.value = value

    def detach(self) -> CountingLoss:
        return self

    def __add__(self, other: CountingLoss) -> CountingLoss:
        return CountingLoss(self.value + other.value)

    def __float__(self) -> float:
        CountingLoss.reads += 1
        return self.value


def test_a_loss_tensor_is_read_only_when_a_line_is_due(caplog):
    caplog.set_level(logging.INFO, logger="radfm.progress")
    clock = Clock()
    CountingLoss.reads = 0
    with ProgressReporter("fit", 300, every_s=15, bar=False, clock=clock) as reporter:
        for step in range(1, 301):
            clock.now += 0.5
            reporter.update(step, loss=CountingLoss(2.0))
    assert len(lines(caplog)) == 10 + 1  # 150 s: a line every 15 s, then the done line
    assert CountingLoss.reads == 10  # once per interval line, never per step (the done line reuses the last)
    assert "loss 2.0000" in lines(caplog)[0]


def test_sinks_hear_the_start_each_interval_and_the_end():
    clock = Clock()
    heard: list[Snapshot] = []
    add_sink(heard.append)
    add_sink(heard.append)  # once, however often added
    try:
        with ProgressReporter("warm-up", 4, every_s=2, bar=False, clock=clock, key="radfm-x") as reporter:
            for step in range(1, 5):
                clock.now += 1.0
                reporter.update(step)
    finally:
        remove_sink(heard.append)
    assert [(s.step, s.done) for s in heard] == [(0, False), (2, False), (4, False), (4, True)]
    assert {s.key for s in heard} == {"radfm-x"} and heard[-1].percent == 100.0


def test_a_failing_sink_never_stops_the_work():
    def broken(snap: Snapshot) -> None:
        raise RuntimeError("the UI is down")

    add_sink(broken)
    try:
        with ProgressReporter("fit", 2, every_s=0, bar=False) as reporter:
            reporter.update()
            reporter.update()
    finally:
        remove_sink(broken)
    assert reporter.step == 2 and reporter.closed


def test_a_short_job_says_nothing_and_a_failed_one_no_done_line(caplog):
    caplog.set_level(logging.INFO, logger="radfm.progress")
    clock = Clock()
    with ProgressReporter("ingest t", None, unit="row", item="rows", every_s=15, bar=False, clock=clock) as r:
        clock.now += 3
        r.update()
    assert lines(caplog) == []
    with pytest.raises(ValueError), ProgressReporter("fit", 10, every_s=15, bar=False, clock=clock) as r:
        clock.now += 20
        r.update()
        raise ValueError("bad sample")
    assert lines(caplog) == ["fit: step 1/10 (10%), 0.1 samples/s, elapsed 20s, ETA 3m00s"]  # no "done in"


def test_without_a_total_a_line_has_the_count_and_rate_but_no_eta(caplog):
    caplog.set_level(logging.INFO, logger="radfm.progress")
    clock = Clock()
    reporter = ProgressReporter("ingest t", None, unit="row", item="rows", every_s=5, bar=False, clock=clock)
    clock.now += 5
    reporter.update(50)
    assert lines(caplog) == ["ingest t: row 50, 10.0 rows/s, elapsed 5s"]


def test_track_reports_one_step_per_item(caplog):
    caplog.set_level(logging.INFO, logger="radfm.progress")
    assert list(track(["a", "b", "c"], "synth", every_s=0, bar=False, unit="image", item="images")) == ["a", "b", "c"]
    got = lines(caplog)
    assert [line.split(",")[0] for line in got] == ["synth: image 1/3 (33%)", "synth: image 2/3 (67%)",
                                                     "synth: image 3/3 (100%)", "synth: image 3/3 (100%)"]
    assert "done in" in got[-1]


def test_a_bar_logs_no_lines(caplog):
    caplog.set_level(logging.INFO, logger="radfm.progress")
    with ProgressReporter("fit", 3, every_s=0, bar=True) as reporter:
        assert reporter.bar
        for _ in range(3):
            reporter.update(loss=1.0)
    assert lines(caplog) == []


def test_every_s_comes_from_the_environment_and_bad_values_are_refused(monkeypatch):
    monkeypatch.delenv("RADFM_PROGRESS_EVERY_S", raising=False)
    assert 10 <= default_every_s() <= 30
    monkeypatch.setenv("RADFM_PROGRESS_EVERY_S", "5")
    assert ProgressReporter("x", bar=False).every_s == 5.0
    monkeypatch.setenv("RADFM_PROGRESS_EVERY_S", "soon")
    with pytest.raises(ValueError, match="RADFM_PROGRESS_EVERY_S"):
        default_every_s()
    with pytest.raises(ValueError, match=">= 0"):
        ProgressReporter("x", every_s=-1, bar=False)


def test_durations_read_as_hours_minutes_seconds():
    assert [duration(s) for s in (0, 59.6, 75, 3725, None)] == ["0s", "1m00s", "1m15s", "1h02m05s", "?"]


def test_the_command_line_shows_progress_lines_on_stderr():
    """The ``radfm`` commands configure no logging: show_progress gives radfm.progress a handler of its own."""
    code = ("from radfm.logs import show_progress; show_progress(); show_progress()\n"
            "from radfm.progress import ProgressReporter\n"
            "with ProgressReporter('ingest t', 2, unit='row', item='rows', every_s=0, bar=False) as r:\n"
            "    r.update(); r.update()\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "TERM": "dumb"})
    assert out.returncode == 0, out.stderr
    got = [line for line in out.stderr.splitlines() if "ingest t:" in line]
    assert len(got) == 3 and "row 2/2 (100%)" in got[-1] and "done in" in got[-1]
