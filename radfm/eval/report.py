"""The RadBench reports of a summary: the headline table and Markdown summary, and the HTML report with one bar
chart per kind of metric (model, blind and image-ablated side by side), confusion matrices of closed questions,
and a gallery of predictions with image thumbnails (middle slice for 3D) that shows the model's failures first,
each beside both baselines' answers. Plots are inline PNGs."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from radfm.data.manifest import Sample, resolve_image_path
from radfm.eval.baselines import family
from radfm.eval.metrics import normalize_label
from radfm.eval.predict import Prediction

SYSTEMS = ("model", "blind", "ablated")
SYSTEM_LABELS = {"model": "model", "blind": "blind", "ablated": "image-ablated"}
# One colour per system on every chart, so a reader matches the bars across charts at a glance.
SYSTEM_COLOURS = {"model": "#1f77b4", "blind": "#9a9a9a", "ablated": "#ff7f0e"}
# The charts of the report, one per kind of metric: a share of right answers, an F1, a ranking AUC and an n-gram
# overlap are different scales even where all lie in [0, 1], so none shares an axis with another kind. Metrics
# are read per family: a task that mixes closed and open families keeps only its averaged headline.
METRIC_KINDS: dict[str, tuple[str, ...]] = {
    "accuracy": ("accuracy", "presence_accuracy"),
    "F1": ("macro_f1", "multilabel_micro_f1", "token_f1", "findings_f1"),
    "AUC": ("auc",),
    "text overlap (ROUGE-L, BLEU)": ("rougeL", "bleu1", "bleu4"),
    "embedding similarity": ("embedding_sim",),
}


def headline_table(summary: dict[str, Any], level: str = "tasks") -> list[list[str]]:
    """The headline score of each system per task (``level="tasks"``) or per family, header row first."""
    rows = [["task", "n", "model", "blind", "image-ablated", "beats both"]]
    for key, entry in summary[level].items():
        m = entry["model"]
        rows.append([key, str(int(m["n"])), f"{m['headline']:.3f}",
                     f"{entry['blind']['headline']:.3f}" if "blind" in entry else "-",
                     f"{entry['ablated']['headline']:.3f}" if "ablated" in entry else "-",
                     {True: "yes", False: "NO"}.get(entry.get("beats_both"), "-")])
    return rows


def summary_markdown(summary: dict[str, Any]) -> str:
    """``summary.md``: the headline tables per task and per family, then every model metric per family."""
    lines = ["# RadBench", "",
             "Headline per task: accuracy for closed and short answers (likelihood-ranked when the row has "
             "choices), findings F1 for reports and rationales (ROUGE-L where no structured truth exists). Blind = "
             "the best image-free answer fitted on train; image-ablated = this model with every image zeroed.", ""]
    for level in ("tasks", "families"):
        table = headline_table(summary, level)
        heading = {"tasks": "task", "families": "family"}[level]
        lines += [f"## per {heading}", "", "| " + " | ".join(table[0]) + " |",
                  "|" + "---|" * len(table[0])]
        lines += ["| " + " | ".join(r) + " |" for r in table[1:]] + [""]
    lines += ["## all metrics (model)", ""]
    for key, entry in summary["families"].items():
        metrics = ", ".join(f"{k} {v:.3f}" for k, v in entry["model"].items() if k not in ("n",) and
                            isinstance(v, float) and not np.isnan(v))
        lines.append(f"- **{key}**: {metrics}")
    return "\n".join(lines) + "\n"


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def metric_points(summary: dict[str, Any]) -> dict[str, list[tuple[str, str]]]:
    """``{kind: [(family, metric), …]}`` for every kind of :data:`METRIC_KINDS` the summary has a finite model
    score of; kinds in that order, families in the summary's."""
    out: dict[str, list[tuple[str, str]]] = {}
    for kind, metrics in METRIC_KINDS.items():
        points = [(key, metric) for key, entry in summary["families"].items() for metric in metrics
                  if isinstance(entry["model"].get(metric), float) and np.isfinite(entry["model"][metric])]
        if points:
            out[kind] = points
    return out


def kind_figure(summary: dict[str, Any], kind: str, points: Sequence[tuple[str, str]]) -> Any:
    """The bar chart of one kind of metric: per (family, metric), the systems side by side."""
    import matplotlib.pyplot as plt

    families = summary["families"]
    systems = [s for s in SYSTEMS if all(s in families[key] for key, _ in points)]
    several = len({metric for _, metric in points}) > 1
    labels = [f"{key}\n{metric}" if several else key for key, metric in points]
    x = np.arange(len(points))
    width = 0.8 / max(len(systems), 1)
    fig, ax = plt.subplots(figsize=(max(0.9 * len(points) + 2, 4), 3.2))
    for k, name in enumerate(systems):
        values = [float(families[key][name].get(metric, np.nan)) for key, metric in points]
        ax.bar(x + k * width, values, width, label=SYSTEM_LABELS[name], color=SYSTEM_COLOURS[name])
    ax.set_xticks(x + width * (len(systems) - 1) / 2, labels, rotation=30 if len(points) > 4 else 0,
                  ha="right" if len(points) > 4 else "center", fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel(kind)
    ax.set_title(kind, fontsize=10)
    ax.legend(fontsize=7)
    return fig


def _kind_charts(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """(kind, PNG) for every kind of metric the summary holds."""
    return [(kind, _png(kind_figure(summary, kind, points))) for kind, points in metric_points(summary).items()]


def text_colour(rgba: Sequence[float]) -> str:
    """``"white"`` or ``"black"``, whichever contrasts more (WCAG 2) with a cell filled with ``rgba`` (0..1):
    light text on a dark cell, dark text on a light one."""

    def linear(c: float) -> float:
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (linear(float(c)) for c in rgba[:3])
    luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
    return "white" if (1.05 / (luminance + 0.05)) > ((luminance + 0.05) / 0.05) else "black"


def confusion_figure(labels: Sequence[str], mat: np.ndarray) -> Any:
    """A confusion matrix (rows: true, columns: predicted) with each count written in the colour that reads on
    its cell."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(0.6 * len(labels) + 1.5, 0.6 * len(labels) + 1.2))
    image = ax.imshow(mat, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (r, c), v in np.ndenumerate(mat):
        ax.text(c, r, str(v), ha="center", va="center", fontsize=7,
                color=text_colour(image.cmap(image.norm(v))))
    return fig


def _confusions(samples: Sequence[Sample], preds: Sequence[Prediction], limit: int = 6) -> list[tuple[str, str]]:
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        if s.choices:
            groups.setdefault(family(s), []).append(i)
    out = []
    for fam, idx in sorted(groups.items())[:limit]:
        labels = sorted({c for i in idx for c in (samples[i].choices or [])})
        pos = {c: k for k, c in enumerate(labels)}
        mat = np.zeros((len(labels), len(labels)), dtype=int)
        for i in idx:
            if preds[i].text in pos:
                mat[pos[samples[i].answer], pos[preds[i].text]] += 1
        out.append((fam, _png(confusion_figure(labels, mat))))
    return out


def is_right(sample: Sample, pred: Prediction) -> bool:
    """The answer equals the truth as accuracy compares them (:func:`radfm.eval.metrics.normalize_label`). A
    report or rationale is almost never word for word its reference: it counts as a failure here."""
    return normalize_label(pred.text) == normalize_label(sample.answer)


def gallery_order(samples: Sequence[Sample], preds: Sequence[Prediction], n: int) -> list[int]:
    """The indices of at most ``n`` gallery rows: the model's wrong answers first, then its right ones; within
    each, the tasks take turns (in manifest order), so the many failures of one task do not fill the gallery."""

    def turns(idx: list[int]) -> list[int]:
        by_task: dict[str, list[int]] = {}
        for i in idx:
            by_task.setdefault(samples[i].task, []).append(i)
        queues = list(by_task.values())
        return [q[k] for k in range(max(map(len, queues), default=0)) for q in queues if k < len(q)]

    wrong = [i for i in range(len(samples)) if not is_right(samples[i], preds[i])]
    right = [i for i in range(len(samples)) if is_right(samples[i], preds[i])]
    return (turns(wrong) + turns(right))[:n]


def _thumbnail(sample: Sample, data_root: str) -> str | None:
    import matplotlib.pyplot as plt

    from radfm.data.readers import read_image

    if not sample.images:
        return None
    try:
        img = read_image(resolve_image_path(data_root, sample.images[0].path), sample.id).array
    except Exception:  # noqa: BLE001 (a thumbnail is decoration: the report still renders without it)
        return None
    sl = img[0, :, :, img.shape[-1] // 2]
    fig, ax = plt.subplots(figsize=(1.4, 1.4))
    ax.imshow(sl, cmap="gray")
    ax.axis("off")
    return _png(fig)


def write_html_report(out_dir: Path, samples: Sequence[Sample], systems: dict[str, Sequence[Prediction]],
                      summary: dict[str, Any], data_root: str, gallery: int = 12) -> Path:
    """``out_dir/report.html``: the headline table, one chart per kind of metric, the confusion matrices and the
    gallery (failures first, each with the model's, the blind and the image-ablated answer)."""
    import matplotlib

    matplotlib.use("Agg")
    table = headline_table(summary)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in table[1:])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table[0])
    parts = [f"<h1>RadBench</h1><table border=1 cellspacing=0 cellpadding=4><tr>{head}</tr>{rows}</table>",
             "<h2>Scores by kind of metric (per family)</h2>"]
    parts += [f'<figure data-kind="{html.escape(kind)}" style="display:inline-block;margin:4px">'
              f'<img alt="{html.escape(kind)}" src="data:image/png;base64,{png}"></figure>'
              for kind, png in _kind_charts(summary)]
    parts.append("<h2>Confusion matrices</h2>")
    parts += [f'<div style="display:inline-block;margin:4px"><b>{html.escape(f)}</b><br>'
              f'<img src="data:image/png;base64,{png}"></div>' for f, png in _confusions(samples, systems["model"])]
    shown = [s for s in SYSTEMS if s in systems]
    parts.append("<h2>Examples: the model's wrong answers first</h2><table border=1 cellspacing=0 cellpadding=4>"
                 "<tr><th>image</th><th>task</th><th>question</th><th>truth</th><th>model right</th>"
                 + "".join(f"<th>{SYSTEM_LABELS[s]}</th>" for s in SYSTEMS) + "</tr>")
    for i in gallery_order(samples, systems["model"], gallery):
        s = samples[i]
        thumb = _thumbnail(s, data_root)
        img = f'<img src="data:image/png;base64,{thumb}">' if thumb else "-"
        answers = "".join(f"<td>{html.escape(systems[name][i].text) if name in shown else '-'}</td>"
                          for name in SYSTEMS)
        right = "yes" if is_right(s, systems["model"][i]) else "NO"
        parts.append(f'<tr class="gallery"><td>{img}</td><td>{s.task}</td><td>{html.escape(s.question)}</td>'
                     f"<td>{html.escape(s.answer)}</td><td>{right}</td>{answers}</tr>")
    parts.append("</table>")
    path = out_dir / "report.html"
    path.write_text("<html><head><meta charset='utf-8'><title>RadBench</title></head><body style='font-family:"
                    "sans-serif'>" + "".join(parts) + "</body></html>")
    return path
