"""Progress of a real short training run (radfm.train.callbacks.TrainProgress, wired in conf/callbacks/default.yaml):
lines from the vision warm-up and the fit, each line on the console once (Lightning's included), no advertising."""

from __future__ import annotations

import logging
import sys
from collections import Counter

from omegaconf import OmegaConf

from radfm.train.callbacks import TrainProgress

WARMUP = ["callbacks=[default,vision_warmup]", "objective=[answer,label_head]", "objective.label_head.weight=1.0",
          "data.label_source=scene", "callbacks.vision_warmup.steps=4"]


def test_the_default_callbacks_report_progress_with_the_class_defaults(make_cfg):
    node = make_cfg().callbacks.progress
    assert node._target_ == "radfm.train.callbacks.TrainProgress"
    assert OmegaConf.to_container(node) == {"_target_": node._target_, "every_s": None, "bar": None}
    default = TrainProgress()
    assert default.every_s is None and default.bar is None  # the file states the class's defaults


def test_a_short_run_reports_warm_up_and_fit_and_prints_each_line_once(make_cfg, caplog, capfd):
    """The console as Prefect and Hydra set it up (a handler on the root logger): every line once, Lightning's
    too, and none of Lightning's advertising."""
    from radfm.train.train import train

    caplog.set_level(logging.INFO)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(console)
    # Lightning's own console handler (added when `lightning` is imported), on this test's stderr: were it left
    # beside the root's, each of its lines would show twice below.
    for handler in logging.getLogger("lightning").handlers:
        if type(handler) is logging.StreamHandler:
            handler.setStream(sys.stderr)
    cfg = make_cfg(*WARMUP, "callbacks.progress.every_s=0", "callbacks.progress.bar=false", "logger=none",
                   "trainer.val_check_interval=6")
    try:
        metrics = train(cfg)
    finally:
        root.removeHandler(console)
    assert metrics["global_step"] == 6 and metrics["warmup/steps"] == 4

    progress = [r.getMessage() for r in caplog.records if r.name == "radfm.progress"]
    warm = [m for m in progress if m.startswith("vision warm-up:")]
    fit = [m for m in progress if m.startswith("fit:")]
    assert [m.split(",")[0] for m in warm] == [f"vision warm-up: step {i}/4 ({25 * i}%)" for i in (1, 2, 3, 4, 4)]
    assert [m.split(",")[0] for m in fit] == [f"fit: step {i}/6 ({round(100 * i / 6)}%)" for i in range(1, 7)] + [
        "fit: step 6/6 (100%)"]
    for line in (warm[0], fit[0]):
        assert "loss " in line and " samples/s" in line and "ETA " in line, line
    assert "done in" in warm[-1] and "done in" in fit[-1]
    assert any(m.startswith("validation: batch") for m in progress)

    err = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    twice = [line for line, n in Counter(err).items() if n > 1]
    assert not twice, twice
    assert any("fit: step 6/6" in line for line in err)
    spoken = {r.getMessage() for r in caplog.records if r.name.startswith("lightning")}
    assert any("Seed set to" in m for m in spoken)
    for message in spoken:  # each of Lightning's lines once, whatever the handler's format
        assert sum(message in line for line in err) == 1, message
    assert not [line for line in err if "litlogger" in line or "litmodels" in line or "Tip:" in line]


def test_progress_settings_do_not_rename_the_run():
    """The run name hashes what the run computes; how often it prints progress is not part of that."""
    from radfm.train.compose import fingerprint

    base = {"seed": 0, "callbacks": {"progress": {"every_s": None}, "vision_warmup": {"steps": 3}}}
    other = {"seed": 0, "callbacks": {"progress": {"every_s": 5.0}, "vision_warmup": {"steps": 3}}}
    changed = {"seed": 0, "callbacks": {"progress": {"every_s": None}, "vision_warmup": {"steps": 4}}}
    assert fingerprint(base) == fingerprint(other) != fingerprint(changed)
