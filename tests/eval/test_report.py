"""The RadBench HTML report: failures first in the gallery with all three answers, one chart per kind of metric,
counts that read on their cells. Built from a real summary (radbench.summarise) of hand-made predictions."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from radfm.data.manifest import Sample
from radfm.eval.predict import Prediction
from radfm.eval.radbench import summarise
from radfm.eval.report import (
    METRIC_KINDS,
    confusion_figure,
    gallery_order,
    kind_figure,
    metric_points,
    text_colour,
    write_html_report,
)

MODALITY = ["CT", "MRI", "X-ray"]


def _rows() -> tuple[list[Sample], dict[str, list[Prediction]]]:
    """Twelve test rows of three tasks (closed modality, yes/no diagnosis, report) and the three systems'
    answers. The model is wrong on m1, d2 and on two reports, r1 and r3 (not word for word its reference)."""
    samples: list[Sample] = []
    model: list[str] = []
    for i in range(4):
        truth = MODALITY[i % 3]
        samples.append(Sample(id=f"m{i}", task="modality", split="test", question="Which modality?",
                              answer=truth, choices=MODALITY))
        model.append(truth if i != 1 else "MRI" if truth != "MRI" else "CT")
    for i in range(4):
        truth = "yes" if i % 2 else "no"
        samples.append(Sample(id=f"d{i}", task="diagnosis", split="test", question="Is there a nodule?",
                              answer=truth, choices=["no", "yes"]))
        model.append(truth if i != 2 else ("no" if truth == "yes" else "yes"))
    for i in range(4):
        samples.append(Sample(id=f"r{i}", task="report", split="test", question="Describe the scan.",
                              answer=f"A {i + 1} cm nodule in the left lung."))
        model.append("A nodule in the left lung." if i % 2 else samples[-1].answer)
    systems = {
        "model": [Prediction(t, {"yes": float(t == "yes"), "no": float(t == "no")} if s.task == "diagnosis"
                             else {}) for s, t in zip(samples, model)],
        "blind": [Prediction(f"blind-{s.id}", {"yes": 0.5, "no": 0.5} if s.task == "diagnosis" else {})
                  for s in samples],
        "ablated": [Prediction(f"ablated-{s.id}", {"yes": 0.4, "no": 0.6} if s.task == "diagnosis" else {})
                    for s in samples],
    }
    return samples, systems


WRONG = {"m1", "d2", "r1", "r3"}


def test_gallery_shows_failures_first_tasks_taking_turns() -> None:
    samples, systems = _rows()
    order = [samples[i].id for i in gallery_order(samples, systems["model"], 12)]
    assert set(order[:len(WRONG)]) == WRONG and set(order[len(WRONG):]) == {s.id for s in samples} - WRONG
    assert order[:len(WRONG)] == ["m1", "d2", "r1", "r3"]  # one of each task, then the rest of a task
    assert order[len(WRONG):len(WRONG) + 3] == ["m0", "d0", "r0"]
    assert [samples[i].id for i in gallery_order(samples, systems["model"], 3)] == ["m1", "d2", "r1"]


def _gallery(html: str) -> list[list[str]]:
    """The cells of each gallery row, tags stripped."""
    rows = re.findall(r'<tr class="gallery">(.*?)</tr>', html)
    return [[re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td>(.*?)</td>", r)] for r in rows]


def test_report_gallery_has_the_three_answers_failures_first(tmp_path: Path) -> None:
    samples, systems = _rows()
    summary = summarise(samples, systems, embedding=False)
    html = write_html_report(tmp_path, samples, systems, summary, str(tmp_path)).read_text()
    header = re.search(r"<h2>Examples[^<]*</h2><table[^>]*><tr>(.*?)</tr>", html).group(1)
    assert re.findall(r"<th>(.*?)</th>", header)[-4:] == ["model right", "model", "blind", "image-ablated"]
    rows = _gallery(html)
    assert len(rows) == len(samples)
    by_id = {s.id: s for s in samples}
    ids = [next(s.id for s in samples if f"blind-{s.id}" == r[-2]) for r in rows]
    assert set(ids[:len(WRONG)]) == WRONG
    for cells, sid in zip(rows, ids):
        i = samples.index(by_id[sid])
        assert cells[-3:] == [systems["model"][i].text, f"blind-{sid}", f"ablated-{sid}"]
        assert cells[-4] == ("NO" if sid in WRONG else "yes")


def test_gallery_without_the_ablated_baseline(tmp_path: Path) -> None:
    samples, systems = _rows()
    del systems["ablated"]  # radfm eval --no-ablate
    summary = summarise(samples, systems, embedding=False)
    html = write_html_report(tmp_path, samples, systems, summary, str(tmp_path)).read_text()
    assert all(r[-1] == "-" and r[-2].startswith("blind-") for r in _gallery(html))


def test_one_chart_per_kind_of_metric(tmp_path: Path) -> None:
    samples, systems = _rows()
    summary = summarise(samples, systems, embedding=False)
    points = metric_points(summary)
    # accuracy and F1 of closed families, AUC of the yes/no family, ROUGE/BLEU of reports: each its own chart
    assert list(points) == ["accuracy", "F1", "AUC", "text overlap (ROUGE-L, BLEU)"]
    assert [m for _, m in points["AUC"]] == ["auc"]
    assert {m for _, m in points["accuracy"]} == {"accuracy"}
    assert {m for _, m in points["F1"]} == {"macro_f1"}
    assert {m for _, m in points["text overlap (ROUGE-L, BLEU)"]} == {"rougeL", "bleu1", "bleu4"}
    for kind, pts in points.items():
        assert {m for _, m in pts} <= set(METRIC_KINDS[kind])
        fig = kind_figure(summary, kind, pts)
        ax = fig.axes[0]
        assert ax.get_ylabel() == kind
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["model", "blind", "image-ablated"]
        assert len(ax.patches) == 3 * len(pts)  # the three systems beside each other at every point
    html = write_html_report(tmp_path, samples, systems, summary, str(tmp_path)).read_text()
    kinds = re.findall(r'<figure data-kind="([^"]+)"', html)
    assert kinds == list(points)
    assert "headline score" not in html


@pytest.mark.parametrize(("rgba", "expected"), [
    ((0.03, 0.19, 0.42, 1.0), "white"),  # the darkest blue of "Blues"
    ((0.0, 0.0, 0.0, 1.0), "white"),
    ((0.97, 0.98, 1.0, 1.0), "black"),  # the lightest blue of "Blues"
    ((1.0, 1.0, 0.0, 1.0), "black"),  # yellow is light though saturated
    ((0.8, 0.0, 0.0, 1.0), "white"),
])
def test_text_colour_follows_luminance(rgba: tuple[float, ...], expected: str) -> None:
    assert text_colour(rgba) == expected


def test_confusion_counts_read_on_dark_and_light_cells() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = confusion_figure(["no", "yes"], np.array([[40, 0], [2, 30]]))
    colours = {t.get_text(): t.get_color() for t in fig.axes[0].texts}
    plt.close(fig)
    assert colours["40"] == "white" and colours["30"] == "white"  # the darkest cells
    assert colours["0"] == "black" and colours["2"] == "black"  # near-white cells
