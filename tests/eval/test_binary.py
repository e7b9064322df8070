"""Yes/no scoring as a classifier: hand-computed thresholds, accuracies and AUC; scores agree with predict()."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from radfm.data.datamodule import RadFMDataset
from radfm.data.manifest import Sample
from radfm.data.transforms import TransformConfig
from radfm.eval.binary import (
    BinaryScores,
    accuracy_at,
    binary_metrics,
    binary_samples,
    choose_threshold,
    score_binary,
)
from radfm.eval.predict import predict


def bs(scores, labels):
    return BinaryScores([f"s{i}" for i in range(len(scores))], np.array(scores), np.array(labels))


# val: scores -2, -1, 0.5, 1, 3 with labels 0, 1, 0, 1, 1. Candidates -3, -1.5, -0.25, 0.75, 2, 4 give
# accuracies 3/5, 4/5, 3/5, 4/5, 3/5, 2/5: the two best are -1.5 and 0.75, and 0.75 lies nearer 0.
VAL = bs([-2.0, -1.0, 0.5, 1.0, 3.0], [0, 1, 0, 1, 1])


def test_threshold_maximises_validation_accuracy_and_prefers_the_one_nearest_zero():
    assert choose_threshold(VAL) == pytest.approx(0.75)
    assert accuracy_at(VAL, 0.75) == pytest.approx(0.8)
    assert accuracy_at(VAL, -1.5) == pytest.approx(0.8)
    assert accuracy_at(VAL, 0.0) == pytest.approx(0.6)  # 0.5 rule: -2 → no ✓, -1 → no ✗, 0.5/1/3 → yes ✗✓✓


def test_threshold_extremes_all_one_class():
    # Every sample positive: predicting all positive (threshold below the lowest score) is the only perfect rule.
    assert choose_threshold(bs([0.3, 1.0], [1, 1])) == pytest.approx(-0.7)
    assert choose_threshold(bs([0.3, 1.0], [0, 0])) == pytest.approx(2.0)


def test_threshold_is_inclusive():
    s = bs([0.0, 0.0], [1, 1])
    assert accuracy_at(s, 0.0) == 1.0  # score 0 ⇔ p(yes) = 0.5 counts as yes
    assert s.prob.tolist() == [0.5, 0.5]


def test_metrics_on_hand_computed_test_split():
    # test scores -0.5, 0.2, 0.9, 2.0 with labels 0, 0, 1, 1: at 0 → 0,1,1,1 (3/4); at 0.75 → 0,0,1,1 (4/4)
    test = bs([-0.5, 0.2, 0.9, 2.0], [0, 0, 1, 1])
    m = binary_metrics(VAL, test)
    assert m["acc@0.5"] == pytest.approx(0.75)
    assert m["acc@val_threshold"] == pytest.approx(1.0)
    assert m["threshold"] == pytest.approx(0.75)
    assert m["threshold_prob"] == pytest.approx(1 / (1 + math.exp(-0.75)))
    assert m["auc"] == pytest.approx(1.0)
    # val AUC: positives -1, 1, 3 against negatives -2, 0.5 win 1 + 2 + 2 of the 6 pairs
    assert m["val_auc"] == pytest.approx(5 / 6)
    assert m["n_test"] == 4 and m["n_test_positive"] == 2


def test_auc_counts_misordered_pairs():
    # positives 0.35, 0.8 vs negatives 0.1, 0.4: 0.35 < 0.4 is the one lost pair of four
    m = binary_metrics(VAL, bs([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]))
    assert m["auc"] == pytest.approx(0.75)


def test_bad_scores_are_rejected():
    with pytest.raises(ValueError, match="finite"):
        bs([float("-inf"), 0.0], [0, 1])
    with pytest.raises(ValueError, match="0/1"):
        bs([0.0, 1.0], [0, 2])
    with pytest.raises(ValueError, match="no samples"):
        choose_threshold(bs([], []))


def _sample(i: int, answer: str, choices=("yes", "no")) -> Sample:
    return Sample(id=f"x{i}", task="diagnosis", split="test", question="Is there pneumonia in this chest X-ray?",
                  answer=answer, images=[{"path": f"img{i}.png", "kind": "2d"}], choices=list(choices))


def test_binary_samples_keeps_yes_no_rows_only():
    rows = [_sample(0, "yes"), _sample(1, "no"), _sample(2, "normal", ("normal", "pneumonia"))]
    assert [s.id for s in binary_samples(rows)] == ["x0", "x1"]
    with pytest.raises(ValueError, match="yes/no"):
        binary_samples(rows[2:])


def test_scores_are_the_log_odds_predict_ranks_by(tmp_path, tiny_cfg, tiny_tokenizer, tiny_model):
    from PIL import Image

    rng = np.random.default_rng(0)
    samples = []
    for i, ans in enumerate(["yes", "no", "yes"]):
        Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(tmp_path / f"img{i}.png")
        samples.append(_sample(i, ans))
    ds = RadFMDataset(samples, tmp_path, tiny_tokenizer, TransformConfig(image_size=64), train=False)
    torch.manual_seed(0)
    scores = score_binary(tiny_model, tiny_tokenizer, samples, ds, batch_size=2)  # 2 batches: 2 + 1 samples
    assert scores.label.tolist() == [1, 0, 1]
    preds = predict(tiny_model, tiny_tokenizer, samples, ds, batch_size=4)
    expected = [math.log(p.probs["yes"]) - math.log(p.probs["no"]) for p in preds]
    assert scores.score == pytest.approx(expected, abs=1e-4)
    assert np.unique(scores.score).size == 3  # the images change the score: not a constant


def test_view_image_shifts_rotates_and_keeps_shape():
    from radfm.eval.binary import TTA_VIEWS, view_image

    x = torch.zeros(1, 8, 8, 1)
    x[0, 3, 4, 0] = 1.0  # row 3, column 4
    assert view_image(x, TTA_VIEWS[0]) is x
    right = view_image(x, (0.0, 1.0, 0.0, 1.0))  # +1 px along width
    assert right.shape == x.shape
    assert right[0, 3, 5, 0] == pytest.approx(1.0) and right[0, 3, 4, 0] == pytest.approx(0.0)
    down = view_image(x, (0.0, 0.0, 1.0, 1.0))  # +1 px along height
    assert down[0, 4, 4, 0] == pytest.approx(1.0)
    flat = torch.full((3, 8, 8, 2), 0.7)
    for view in TTA_VIEWS:  # borders repeat the edge: a constant image stays constant under every view
        assert torch.allclose(view_image(flat, view), flat, atol=1e-6)


def test_tta_averages_the_scores_of_the_views(tmp_path, tiny_cfg, tiny_tokenizer, tiny_model):
    from PIL import Image

    from radfm.eval.binary import TTA_VIEWS, _ViewDataset

    rng = np.random.default_rng(1)
    samples = []
    for i, ans in enumerate(["yes", "no"]):
        Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(tmp_path / f"img{i}.png")
        samples.append(_sample(i, ans))
    ds = RadFMDataset(samples, tmp_path, tiny_tokenizer, TransformConfig(image_size=64), train=False)
    plain = score_binary(tiny_model, tiny_tokenizer, samples, ds, batch_size=2)
    assert score_binary(tiny_model, tiny_tokenizer, samples, ds, batch_size=2, tta=1).score == pytest.approx(
        plain.score)
    per_view = [plain.score] + [score_binary(tiny_model, tiny_tokenizer, samples, _ViewDataset(ds, v),
                                             batch_size=2).score for v in TTA_VIEWS[1:3]]
    tta = score_binary(tiny_model, tiny_tokenizer, samples, ds, batch_size=2, tta=3)
    assert tta.score == pytest.approx(np.mean(per_view, axis=0), abs=1e-5)
    assert not np.allclose(per_view[0], per_view[1])  # a view changes the input the model sees
    with pytest.raises(ValueError, match="tta"):
        score_binary(tiny_model, tiny_tokenizer, samples, ds, tta=0)
