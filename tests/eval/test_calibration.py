"""Yes/no calibration (radfm.eval.calibration): one offset fitted on validation rows moves the yes/no decision,
leaves the raw log-probabilities (and so every AUC) alone, and travels with the checkpoint."""

from __future__ import annotations

import pytest
import torch

from radfm.data.datamodule import RadFMDataset
from radfm.data.families import yes_index
from radfm.data.manifest import read_manifest
from radfm.data.synth import SynthConfig, generate
from radfm.data.transforms import TransformConfig
from radfm.eval.calibration import best_offset, fit_yes_no_offset
from radfm.eval.predict import predict
from radfm.model import factory
from radfm.model.checkpoint import load_pretrained, save_pretrained


def test_yes_index_recognises_yes_no_in_any_case_and_order():
    assert yes_index(["Yes", "No"]) == 0 and yes_index(["no.", "YES"]) == 1
    assert yes_index(["CT", "MRI"]) is None and yes_index(["yes", "no", "maybe"]) is None
    assert yes_index(None) is None and yes_index([]) is None


def test_best_offset_moves_the_decision_only_for_a_gain():
    # The model says yes too readily: every "no" row scores +0.5..+1.5, every "yes" row +2..+3.
    ratios = [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    truths = [False, False, False, True, True, True]
    offset, before, after = best_offset(ratios, truths)
    assert before == 0.5 and after == 1.0 and offset == pytest.approx(-1.75)
    # Already right at 0: no move (the nearest-to-0 best).
    assert best_offset([-1.0, -0.5, 0.5, 1.0], [False, False, True, True]) == (0.0, 1.0, 1.0)
    # One class: "all yes" and 0 tie at full accuracy; 0 wins.
    assert best_offset([0.3, 0.7], [True, True])[0] == 0.0
    with pytest.raises(ValueError):
        best_offset([], [])


@pytest.fixture(scope="module")
def yes_no_setup(tmp_path_factory, tiny_cfg):
    root = tmp_path_factory.mktemp("calibration")
    generate(SynthConfig(n_samples=60, seed=4), root)
    samples = read_manifest(root / "manifest.jsonl")
    tok = factory.build_tokenizer(tiny_cfg, [t for s in samples for t in (s.question, s.answer)])
    torch.manual_seed(0)
    model = factory.build_model(tiny_cfg, tok).eval()
    rows = [s for s in samples if yes_index(s.choices) is not None]
    assert len({s.answer.lower() for s in rows}) == 2 and len(rows) >= 6
    ds = RadFMDataset(rows, str(root), tok, TransformConfig(image_size=64, augment=False), train=False)
    return model, tok, rows, ds


def test_the_offset_moves_answers_but_not_the_logprobs(yes_no_setup):
    model, tok, rows, ds = yes_no_setup
    model.yes_no_offset = 0.0
    plain = predict(model, tok, rows, ds)
    for offset, answer in ((1e4, "yes"), (-1e4, "no")):
        model.yes_no_offset = offset
        moved = predict(model, tok, rows, ds)
        assert all(p.text.lower() == answer for p in moved)
        assert [p.logprobs for p in moved] == [p.logprobs for p in plain]
    model.yes_no_offset = 0.0


def test_fit_on_rows_reaches_the_best_validation_accuracy_and_is_saved(yes_no_setup, tmp_path):
    model, tok, rows, ds = yes_no_setup
    figures = fit_yes_no_offset(model, tok, rows, ds, min_rows=4)
    assert figures["calibration/yes_no_rows"] == len(rows)
    assert figures["calibration/yes_no_val_acc_after"] >= figures["calibration/yes_no_val_acc_before"]
    answers = predict(model, tok, rows, ds)
    accuracy = sum(p.text.lower() == s.answer.lower() for p, s in zip(answers, rows)) / len(rows)
    assert accuracy == pytest.approx(figures["calibration/yes_no_val_acc_after"])
    save_pretrained(model, tok, tmp_path / "ckpt")
    loaded, _ = load_pretrained(tmp_path / "ckpt")
    assert loaded.yes_no_offset == model.yes_no_offset == figures["calibration/yes_no_offset"]
    # Too few rows: nothing is fitted, and the model's offset is 0.
    assert fit_yes_no_offset(model, tok, rows, ds, min_rows=len(rows) + 1)["calibration/yes_no_offset"] == 0.0
    assert model.yes_no_offset == 0.0


def test_a_saved_checkpoint_is_calibrated_in_place_on_a_datamodules_validation_split(tmp_path, tiny_cfg):
    """What the Ray path does on the driver after the workers: load, fit, write the offset into radfm.json."""
    import json

    from radfm.data.cache import TensorCache
    from radfm.data.config import DataConfig
    from radfm.data.datamodule import RadFMDataModule
    from radfm.eval.calibration import calibrate_checkpoint

    root = tmp_path / "synth"
    generate(SynthConfig(n_samples=60, seed=4), root)
    samples = read_manifest(root / "manifest.jsonl")
    tok = factory.build_tokenizer(tiny_cfg, [t for s in samples for t in (s.question, s.answer)])
    torch.manual_seed(1)
    save_pretrained(factory.build_model(tiny_cfg, tok), tok, tmp_path / "ckpt")
    dm = RadFMDataModule(DataConfig(manifest=str(root / "manifest.jsonl"), root=str(root),
                                    transform=TransformConfig(image_size=64)), tok, cache=TensorCache(tmp_path / "c"))
    dm.setup()
    figures = calibrate_checkpoint(tmp_path / "ckpt", dm, min_rows=2)
    assert figures["calibration/yes_no_rows"] == sum(yes_index(s.choices) is not None for s in dm.splits["val"])
    meta = json.loads((tmp_path / "ckpt" / "radfm.json").read_text())
    assert meta["yes_no_offset"] == figures["calibration/yes_no_offset"]
    assert load_pretrained(tmp_path / "ckpt")[0].yes_no_offset == meta["yes_no_offset"]
