"""`data=csv`, a user's table with no labels column, trains with its recipe (conf/recipe/custom_data.yaml): targets
from the table's own answers through its profile, the label and patch heads, a vision warm-up; parts of the
recipe can be left out on the command line."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from radfm.data.importers import ingest_table

QUICK = ["callbacks.vision_warmup.min_steps=0", "callbacks.vision_warmup.steps=3", "data.num_workers=0",
         "logger=none", "trainer.max_steps=2", "trainer.val_check_interval=2"]


@pytest.fixture(scope="module")
def table_root(tmp_path_factory) -> Path:
    """A plain table: id, image, split, question, answer (modality, a yes/no question in two phrasings, a note)."""
    src = tmp_path_factory.mktemp("table")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(24):
        split = "train" if i < 16 else ("val" if i < 20 else "test")
        name = f"img/{i:02d}.png"
        (src / "img").mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(src / name)
        rows.append([f"c{i}-m", name, split, "What is the modality?", ["CT", "X-ray"][i % 2]])
        rows.append([f"c{i}-y", name, split, ["Is there a nodule?", "Does this image show a nodule?"][i % 2],
                     ["yes", "no"][(i // 2) % 2]])
        rows.append([f"c{i}-r", name, split, "Describe the findings.",
                     ["A nodule in the right lung.", "No acute abnormality."][(i // 2) % 2]])
    with (src / "cases.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "image", "split", "question", "answer"])
        w.writerows(rows)
    out = src / "data"
    ingest_table(src / "cases.csv", out)
    return out


def test_data_csv_trains_a_plain_table_with_its_recipe(make_cfg, table_root):
    from radfm.train.train import train

    cfg = make_cfg("data=csv", f"data.root={table_root}", *QUICK, synth=False)
    assert list(cfg.objective) == ["answer", "label_head", "patch_head"] and cfg.data.label_source == "answers"
    assert cfg.data.balance == "family"
    assert cfg.callbacks.vision_warmup.epochs > 0
    metrics = train(cfg)
    assert metrics["warmup/steps"] == 3.0 and metrics["global_step"] == 2
    assert np.isfinite(metrics["train/label_loss"]) and np.isfinite(metrics["train/patch_loss"])


def test_parts_of_the_recipe_can_be_left_out(make_cfg, table_root):
    from radfm.train.builder import build_objectives

    cfg = make_cfg("data=csv", f"data.root={table_root}", "objective=[answer]", "callbacks=[default]", *QUICK,
                   synth=False)
    assert [o.name for o in build_objectives(cfg)] == ["answer"]


def test_a_run_fits_a_yes_no_offset_on_validation_and_saves_it(make_cfg, table_root):
    import json

    from radfm.model.checkpoint import load_pretrained
    from radfm.train.train import run_dir_of, train

    cfg = make_cfg("data=csv", f"data.root={table_root}", *QUICK, "calibration.yes_no=true",
                   "calibration.min_rows=2", synth=False)
    metrics = train(cfg)
    assert metrics["calibration/yes_no_rows"] == 4.0  # the 4 validation images' yes/no questions
    model_dir = run_dir_of(cfg) / "model"
    meta = json.loads((model_dir / "radfm.json").read_text())
    assert meta["yes_no_offset"] == metrics["calibration/yes_no_offset"]
    assert load_pretrained(model_dir)[0].yes_no_offset == metrics["calibration/yes_no_offset"]
