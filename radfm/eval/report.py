"""The RadBench reports of a summary: the headline table and Markdown summary, and the HTML report with
per-task bars (model vs blind vs image-ablated), confusion matrices of closed questions, and a gallery of
predictions with image thumbnails (middle slice for 3D). Plots are inline PNGs."""

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
from radfm.eval.predict import Prediction


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


def _bars(summary: dict[str, Any]) -> str:
    import matplotlib.pyplot as plt

    tasks = list(summary["tasks"])
    systems = [s for s in ("model", "blind", "ablated") if all(s in summary["tasks"][t] for t in tasks)]
    fig, ax = plt.subplots(figsize=(1.6 * len(tasks) + 2, 3))
    width = 0.8 / max(len(systems), 1)
    for k, name in enumerate(systems):
        ax.bar(np.arange(len(tasks)) + k * width, [summary["tasks"][t][name]["headline"] for t in tasks], width,
               label=name)
    ax.set_xticks(np.arange(len(tasks)) + width * (len(systems) - 1) / 2, tasks)
    ax.set_ylim(0, 1)
    ax.set_ylabel("headline score")
    ax.legend(fontsize=8)
    return _png(fig)


def _confusions(samples: Sequence[Sample], preds: Sequence[Prediction], limit: int = 6) -> list[tuple[str, str]]:
    import matplotlib.pyplot as plt

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
        fig, ax = plt.subplots(figsize=(0.6 * len(labels) + 1.5, 0.6 * len(labels) + 1.2))
        ax.imshow(mat, cmap="Blues")
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        for (r, c), v in np.ndenumerate(mat):
            ax.text(c, r, str(v), ha="center", va="center", fontsize=7)
        out.append((fam, _png(fig)))
    return out


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
    import matplotlib

    matplotlib.use("Agg")
    table = headline_table(summary)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in table[1:])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table[0])
    parts = [f"<h1>RadBench</h1><table border=1 cellspacing=0 cellpadding=4><tr>{head}</tr>{rows}</table>",
             f'<h2>Per task</h2><img src="data:image/png;base64,{_bars(summary)}">', "<h2>Confusion matrices</h2>"]
    parts += [f'<div style="display:inline-block;margin:4px"><b>{html.escape(f)}</b><br>'
              f'<img src="data:image/png;base64,{png}"></div>' for f, png in _confusions(samples, systems["model"])]
    parts.append("<h2>Examples</h2><table border=1 cellspacing=0 cellpadding=4>"
                 "<tr><th>image</th><th>task</th><th>question</th><th>truth</th><th>model</th><th>blind</th></tr>")
    step = max(len(samples) // gallery, 1)
    for i in list(range(0, len(samples), step))[:gallery]:
        s = samples[i]
        thumb = _thumbnail(s, data_root)
        img = f'<img src="data:image/png;base64,{thumb}">' if thumb else "-"
        blind = systems.get("blind", [None] * len(samples))[i]
        parts.append(f"<tr><td>{img}</td><td>{s.task}</td><td>{html.escape(s.question)}</td>"
                     f"<td>{html.escape(s.answer)}</td><td>{html.escape(systems['model'][i].text)}</td>"
                     f"<td>{html.escape(blind.text) if blind else '-'}</td></tr>")
    parts.append("</table>")
    path = out_dir / "report.html"
    path.write_text("<html><head><meta charset='utf-8'><title>RadBench</title></head><body style='font-family:"
                    "sans-serif'>" + "".join(parts) + "</body></html>")
    return path
