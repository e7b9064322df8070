"""RadBench: every test sample answered by the model, the blind baseline and the image-ablated model, scored
per task and per question family, so each score stands beside the two baselines it must beat."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from radfm.data.datamodule import RadFMDataset
from radfm.data.manifest import Sample, read_manifest
from radfm.data.profile import with_profile
from radfm.data.transforms import TransformConfig, checkpoint_transform
from radfm.eval import metrics as M
from radfm.eval.baselines import blind_answer, family, fit_blind
from radfm.eval.predict import Prediction, predict
from radfm.eval.report import summary_markdown, write_html_report
from radfm.progress import ProgressReporter

log = logging.getLogger(__name__)

TEXT_TASKS = ("report", "rationale")
SYSTEMS = ("model", "blind", "ablated")


@dataclass
class EvalConfig:
    manifest: str
    data_root: str
    split: str = "test"
    # Rows per forward/generate call. On a CPU, greedy decoding of the tiny model is per-call overhead, not
    # arithmetic: 64 answered the demo's RadBench in 20.9 s of predictions against 30.6 s at 16, with the same
    # answers (BENCHMARKS.md, "Main job"). Lower it for a large model on a small GPU.
    batch_size: int = 64
    max_new_tokens: int = 128
    num_beams: int = 1  # open answers: greedy, or beam search over this many beams
    limit: int | None = None
    ablate: bool = True
    embedding: bool = True
    transform: TransformConfig = field(default_factory=TransformConfig)

    def __post_init__(self) -> None:
        check_beams(self.num_beams)


def check_beams(num_beams: int) -> None:
    """RadBench's beam count: 1 (greedy) or more; no upper limit here (the served model's is 8)."""
    if num_beams < 1:
        raise ValueError(f"num_beams must be at least 1 (1: greedy), got {num_beams}")


def _norm(text: str) -> str:
    return " ".join(text.lower().strip().rstrip(".").split())


def blind_answers(train: Sequence[Sample], test: Sequence[Sample]) -> list[Prediction]:
    """The best image-blind answer per family, fitted on train (:func:`radfm.eval.baselines.fit_blind`): the
    majority answer, or for reports and rationales the constant text with the best mean ROUGE-L."""
    fit = fit_blind(train)
    out = []
    for s in test:
        text = blind_answer(fit, s)
        probs = {c: float(c == text) for c in s.choices} if s.choices else {}
        out.append(Prediction(text, probs))
    return out


def score_group(samples: Sequence[Sample], preds: Sequence[Prediction], embedding: bool = True) -> dict[str, float]:
    """Metrics of one group of samples that share a task/family."""
    gold = [s.answer for s in samples]
    text = [p.text for p in preds]
    out: dict[str, float] = {"n": float(len(samples))}
    if samples[0].task in TEXT_TASKS:
        out.update(M.bleu(text, gold))
        out["rougeL"] = M.rouge_l(text, gold)
        out.update(M.clinical_terms(text, gold))
        if embedding:
            from radfm.eval.embedding import embedding_similarity

            # ~40 texts/s on a CPU: a fixed, evenly spaced subset of at most 256 pairs keeps eval in budget.
            step = max(len(text) // 256, 1)
            out["embedding_sim"] = embedding_similarity(text[::step][:256], gold[::step][:256])
        truth = [(s.meta or {}).get("findings") for s in samples]
        if all(t is not None for t in truth):
            from radfm.eval.findings import findings_f1

            out.update(findings_f1(text, truth))
        out["headline"] = out.get("findings_f1", out["rougeL"])
        return out
    out["accuracy"] = M.accuracy([_norm(t) for t in text], [_norm(g) for g in gold])
    if samples[0].choices:
        out["macro_f1"] = M.macro_f1(text, gold)
        choices = {tuple(sorted(s.choices or ())) for s in samples}
        if choices == {("no", "yes")}:
            out["auc"] = M.auc([p.probs.get("yes", 0.0) for p in preds], [int(g == "yes") for g in gold])
    else:
        out["token_f1"] = M.token_f1(text, gold)
        out["token_recall"] = M.token_recall(text, gold)
        if samples[0].labels is not None and samples[0].task == "diagnosis":
            res = M.multilabel_f1([set(M.parse_label_list(t)) for t in text],
                                  [set(s.labels or []) for s in samples])
            out["multilabel_micro_f1"] = res["micro_f1"]
    out["headline"] = out["accuracy"]
    return out


def summarise(samples: Sequence[Sample], systems: dict[str, Sequence[Prediction]],
              embedding: bool = True) -> dict[str, Any]:
    """``{"tasks": {task: {system: metrics}}, "families": {"<task>/<family>": {system: metrics}}}`` plus a
    ``beats_both`` verdict per entry; a family entry also carries ``n`` (its test rows) and ``closed`` (every
    row has ``choices``: the promotion gate holds closed families to their baselines)."""
    groups: dict[str, dict[str, list[int]]] = {"tasks": {}, "families": {}}
    for i, s in enumerate(samples):
        groups["tasks"].setdefault(s.task, []).append(i)
        groups["families"].setdefault(f"{s.task}/{family(s)}", []).append(i)
    result: dict[str, Any] = {}
    # A task's family groups are the families level's groups again: score each (system, group) once.
    scored_cache: dict[tuple[str, tuple[int, ...]], dict[str, float]] = {}

    def scored_group(name: str, preds: Sequence[Prediction], f: list[int]) -> dict[str, float]:
        key = (name, tuple(f))
        if key not in scored_cache:
            scored_cache[key] = score_group([samples[i] for i in f], [preds[i] for i in f], embedding)
        return dict(scored_cache[key])

    for level, by_key in groups.items():
        result[level] = {}
        for key, idx in sorted(by_key.items()):
            entry: dict[str, Any] = {}
            for name, preds in systems.items():
                # A task mixes closed and open families: score each family, then average the headlines.
                fams: dict[str, list[int]] = {}
                for i in idx:
                    fams.setdefault(family(samples[i]) + str(bool(samples[i].choices)), []).append(i)
                scored = [scored_group(name, preds, f) for f in fams.values()]
                if len(scored) == 1:
                    entry[name] = scored[0]
                else:
                    n = sum(x["n"] for x in scored)
                    entry[name] = {"n": n, "headline": sum(x["headline"] * x["n"] for x in scored) / n}
            if "blind" in entry and "ablated" in entry:
                m = entry["model"]["headline"]
                entry["beats_both"] = bool(m > entry["blind"]["headline"] and m > entry["ablated"]["headline"])
            if level == "families":
                entry["n"] = len(idx)
                entry["closed"] = all(samples[i].choices for i in idx)
            result[level][key] = entry
    return result


def evaluate(model: Any, tokenizer: Any, cfg: EvalConfig, out_dir: str | Path, cache: Any = None) -> dict[str, Any]:
    """Run RadBench on ``cfg.split`` of the manifest; write CSV, summary JSON/Markdown and the HTML report."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    samples = with_profile(read_manifest(cfg.manifest), cfg.manifest)
    test = [s for s in samples if s.split == cfg.split]
    if not test:
        raise ValueError(f"the {cfg.split} split of {cfg.manifest} is empty: nothing to evaluate")
    if cfg.limit:
        test = test[: cfg.limit]
    train = [s for s in samples if s.split == "train"] or test
    ds = RadFMDataset(test, cfg.data_root, tokenizer, cfg.transform, train=False, cache=cache)
    systems: dict[str, list[Prediction]] = {
        "model": predict(model, tokenizer, test, ds, cfg.batch_size, cfg.max_new_tokens, progress="RadBench model",
                         num_beams=cfg.num_beams),
        "blind": blind_answers(train, test),
    }
    if cfg.ablate:
        systems["ablated"] = predict(model, tokenizer, test, ds, cfg.batch_size, cfg.max_new_tokens, ablate=True,
                                     progress="RadBench image-ablated", num_beams=cfg.num_beams)
    # Scoring (embeddings of every open answer) and the report take a while on a CPU: a reporter open over
    # them keeps the progress lines coming (its heartbeat) until RadBench is done.
    with ProgressReporter("RadBench scores and report", 2, unit="part", item="parts") as phase:
        summary = summarise(test, systems, cfg.embedding)
        phase.update()
        write_predictions(out_dir / "predictions.csv", test, systems)
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
        (out_dir / "summary.md").write_text(summary_markdown(summary))
        write_html_report(out_dir, test, systems, summary, cfg.data_root)
        phase.update()
    return summary


def evaluate_checkpoint(model_dir: str | Path, manifest: str | Path, out_dir: str | Path,
                        data_root: str | Path | None = None, **options: Any) -> dict[str, Any]:
    """Load a ``save_pretrained`` checkpoint and run RadBench on it (what ``radfm eval`` and the pipeline do).

    ``options`` are :class:`EvalConfig` fields (split, batch_size, limit, ablate, embedding, max_new_tokens,
    num_beams).
    """
    from radfm.data.cache import TensorCache
    from radfm.model.checkpoint import load_pretrained

    check_beams(options.get("num_beams", 1))  # before the model loads
    model, tokenizer = load_pretrained(model_dir)
    manifest = Path(manifest)
    cfg = EvalConfig(manifest=str(manifest), data_root=str(data_root or manifest.parent),
                     transform=checkpoint_transform(model_dir, model.cfg.vision.image_size), **options)
    return evaluate(model, tokenizer, cfg, out_dir, cache=TensorCache())


def write_predictions(path: Path, samples: Sequence[Sample], systems: dict[str, Sequence[Prediction]]) -> None:
    """RadFM's test CSV (Question, Ground Truth, Pred, belong_to) plus the baselines' answers."""
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        extra = [k for k in systems if k != "model"]
        w.writerow(["id", "Question", "Ground Truth", "Pred", "belong_to", "family", *[f"Pred_{k}" for k in extra]])
        for i, s in enumerate(samples):
            w.writerow([s.id, s.question, s.answer, systems["model"][i].text, s.task, family(s),
                        *[systems[k][i].text for k in extra]])


def _metric_part(text: str) -> str:
    """One part of an MLflow metric name: characters MLflow refuses become ``_``; a long part is cut and keeps
    a short hash, so two long families never share a name."""
    part = re.sub(r"[^\w\-]", "_", text)
    if len(part) > 120:
        part = part[:110] + "-" + hashlib.sha1(text.encode()).hexdigest()[:8]
    return part


def flat_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """``radbench/<level>/<key>/<system>/<metric>`` → value, finite numbers only (MLflow refuses NaN keys); a
    family adds ``…/n`` and ``…/closed`` (1 for a closed family)."""
    out: dict[str, float] = {}
    for level in ("tasks", "families"):
        for key, entry in summary[level].items():
            name = "/".join(_metric_part(p) for p in key.split("/", 1))
            for system in SYSTEMS:
                for metric, value in entry.get(system, {}).items():
                    if isinstance(value, float) and np.isfinite(value):
                        out[f"radbench/{level}/{name}/{system}/{_metric_part(metric)}"] = value
            for verdict in ("beats_both", "n", "closed"):
                if verdict in entry:
                    out[f"radbench/{level}/{name}/{verdict}"] = float(entry[verdict])
    return out


def log_to_mlflow(summary: dict[str, Any], out_dir: str | Path, model_id: str | None = None) -> None:
    """Log the metrics (against ``model_id`` when the evaluated model is an MLflow LoggedModel) and every
    output file of the evaluation to the active MLflow run."""
    import mlflow

    mlflow.log_metrics(flat_metrics(summary), model_id=model_id)
    mlflow.log_artifacts(str(out_dir), "radbench")
