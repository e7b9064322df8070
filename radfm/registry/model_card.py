"""The model card of a registered version, as Markdown: what the model is for (and never for), the data it
learned from, how it did beside its baselines, what the promotion gate decided, where it fails, how it was
trained and how to train it again.

:func:`render` is pure: it takes plain data the pipeline already has (the RadBench summary, the data profile,
the resolved config, the flow's parameters); :func:`card_inputs` reads that data back from the training run.
The flow stores the card beside the checkpoint (``MODEL_CARD.md``), in the training run's artifacts and as the
registered version's description — there in its short form when the whole card does not fit: MLflow's SQL
stores hold 5,000 characters of a version's description, and the promotion step appends its own lines.
Only aggregates go in — counts, family names, scores — never a row, an id or an answer of the data: a manifest
may carry patient identifiers.
"""

from __future__ import annotations

import json
import logging
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CARD_FILE = "MODEL_CARD.md"
NOT_FOR_CLINICAL_USE = (
    "**Not for clinical use.** This is a research model: it is not a medical device, it has not been "
    "clinically validated, and it must not be used to diagnose, triage or treat patients or to inform any "
    "decision about a patient's care.")
GATE_HEADING = "## Promotion gate"
GATE_PENDING = ("Not evaluated yet: the promotion step writes its decision here (and appends a "
                "`[promotion …]` line to this description).")
# Families listed in the card's data table; the run's data/profile.json holds them all.
MAX_FAMILIES = 40
# A registered version's description: MLflow's SQL column holds REGISTRY_MAX characters, and each promotion
# appends a `[promotion …]` line of up to ~1,000 after the card.
REGISTRY_MAX = 5000
DESCRIPTION_LIMIT = 3800
# What the short form leaves out first, when even it is too long (a long command line, many families).
EXPENDABLE = ("## Training configuration", "## Limitations", "## Intended use")
# The run's description is a tag: MLflow cuts tag values at 8,000 characters.
NOTE_LIMIT = 7500
SHORT_FORM = ("Short form (the registry's description has little room): the whole card, with the per-family "
              "tables, is `MODEL_CARD.md` in the training run's artifacts and beside the checkpoint.")
INTENDED_USE = ("A radiology vision-language model in the style of RadFM: text interleaved with 2D images and 3D scans "
                "in, a text answer out (modality, findings, visual questions, reports). Intended for research and "
                "engineering: benchmarking on RadBench against its baselines, comparing training runs and recipes, "
                "and exercising the serving path.")
OUT_OF_SCOPE = "Out of scope: any clinical use (see above), and data unlike its training data below."
SYSTEMS = (("model", "model"), ("blind", "blind"), ("ablated", "image-ablated"))


@dataclass
class CardInputs:
    """What the card says, as plain data (every field optional except the name: a card says what it lacks)."""

    name: str
    version: str | None = None
    model_id: str | None = None
    run_id: str | None = None
    git_commit: str | None = None
    data_version: str = "unknown"
    dataset_name: str | None = None
    dataset_source: str | None = None
    profile: dict[str, Any] | None = None  # radfm.registry.tracking.profile_summary of the data profile
    summary: dict[str, Any] = field(default_factory=dict)  # the RadBench summary (summary.json)
    config: dict[str, Any] | None = None  # the resolved Hydra config of the training run
    command: str | None = None  # the `radfm pipeline …` command that reproduces the run
    command_notes: list[str] = field(default_factory=list)
    min_family_rows: int = 20  # the promotion gate's threshold: smaller families are too small to judge


# ------------------------------------------------------------------------------------------------ tables


def _cell(text: Any) -> str:
    """A value as one Markdown table cell: a family named by a user's table may hold ``|`` or a newline."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _fmt(entry: dict[str, Any], system: str) -> str:
    value = (entry.get(system) or {}).get("headline")
    return "-" if value is None else f"{value:.3f}"


def _verdict(entry: dict[str, Any]) -> str:
    return {True: "yes", False: "**no**"}.get(entry.get("beats_both"), "-")


def radbench_markdown(summary: dict[str, Any], families: bool = True, limit: int | None = None,
                      explain: bool = True) -> str:
    """The RadBench headline of the model, its blind baseline and its image-ablated baseline per task and (with
    ``families``) per question family (its test rows and whether it is closed), as Markdown tables; family rows
    past ``limit`` characters are left out and counted."""
    if not summary:
        return "No RadBench result."
    head = "| model | blind | image-ablated | beats both |"
    lines = ["Headline: accuracy for closed and short answers, findings F1 (or ROUGE-L) for free text. Blind = "
             "the best image-free answer fitted on the training split; image-ablated = this model with every "
             "image zeroed. A model that learns from the images beats both.", ""] if explain else []
    lines += [f"| task | n {head}", "|---|---|---|---|---|---|"]
    for task, entry in sorted(summary.get("tasks", {}).items()):
        n = int((entry.get("model") or {}).get("n", 0))
        lines.append(f"| {_cell(task)} | {n} | " + " | ".join(_fmt(entry, s) for s, _ in SYSTEMS) + f" | {_verdict(entry)} |")
    per_family = sorted(summary.get("families", {}).items()) if families else []
    if per_family:
        lines += ["", f"| family | kind | n {head}", "|---|---|---|---|---|---|---|"]
        size = sum(len(x) + 1 for x in lines)
        for shown, (key, entry) in enumerate(per_family):
            kind = "closed" if entry.get("closed") else "open"
            row = (f"| {_cell(key)} | {kind} | {int(entry.get('n', 0))} | "
                   + " | ".join(_fmt(entry, s) for s, _ in SYSTEMS) + f" | {_verdict(entry)} |")
            if limit is not None and size + len(row) > limit - 200:
                lines += ["", f"… and {len(per_family) - shown} more families: `radbench/summary.md`."]
                break
            lines.append(row)
            size += len(row) + 1
    return "\n".join(lines)


def run_description(summary: dict[str, Any], data_version: str | None) -> str:
    """The training run's description (``mlflow.note.content``) once RadBench has run."""
    return "\n".join([f"# RadBench (test split) · data version `{data_version or 'unknown'}`", "",
                      radbench_markdown(summary, limit=NOTE_LIMIT - 400), "",
                      "Files: `radbench/report.html` (gallery, charts), `radbench/summary.json`, "
                      "`radbench/predictions.csv` in this run's artifacts.", ""])


# ------------------------------------------------------------------------------------------------ sections


def _data_section(c: CardInputs, short: bool) -> list[str]:
    lines = ["## Data", "",
             f"- data set `{c.dataset_name or 'unknown'}`, source `{c.dataset_source or 'unknown'}`",
             f"- data version `{c.data_version}`" + ("" if short else " (DVC's md5 of the data folder: the training "
                                                    "run's `radfm.data_version` tag and the digest of its MLflow "
                                                    "dataset input)")]
    p = c.profile or {}
    if not p:
        return lines + ["- no question profile was recorded with the run"]
    rows = p.get("rows", {})
    kinds = p.get("kinds", {})
    lines += [f"- rows: {', '.join(f'{s} {n}' for s, n in rows.items())}",
              f"- question families: {p.get('families', 0)} ({kinds.get('closed', 0)} closed, "
              f"{kinds.get('yesno', 0)} yes/no, {kinds.get('open', 0)} open)"
              + (f"; the profile has {p['messages']} message(s)" if p.get("messages") else "")]
    if short:
        return lines
    lines += ["", "| family | kind | train | val | test | choices |", "|---|---|---|---|---|---|"]
    per = p.get("per_family", [])
    for f in per[:MAX_FAMILIES]:
        r = f.get("rows", {})
        kind = f.get("kind", "open") + (" (report-like)" if f.get("report_like") else "")
        lines.append(f"| {_cell(f.get('name'))} | {kind} | {r.get('train', 0)} | {r.get('val', 0)} | {r.get('test', 0)} "
                     f"| {f.get('choices') or '-'} |")
    if p.get("families", 0) > MAX_FAMILIES:
        lines.append(f"\n… and {p['families'] - MAX_FAMILIES} more families (`data/profile.json` in the run).")
    return lines


def _names(items: list[str], most: int = 12) -> str:
    return ", ".join(items[:most]) + (f" and {len(items) - most} more" if len(items) > most else "")


def _limitations(c: CardInputs, short: bool) -> list[str]:
    """Known failure modes read off the results, then what the data and the preset imply."""
    out: list[str] = []
    families = c.summary.get("families", {})
    failing = [(k, f) for k, f in sorted(families.items()) if f.get("beats_both") is False]
    if short and failing:
        out.append(f"- Does not beat both baselines (its answers there need not come from the image): "
                   f"{_names([k for k, _ in failing], 8)}.")
    for key, f in failing if not short else []:
        out.append(f"- **{_cell(key)}** ({'closed' if f.get('closed') else 'open'}, {int(f.get('n', 0))} test rows) "
                   f"does not beat both baselines: model {_fmt(f, 'model')}, blind {_fmt(f, 'blind')}, "
                   f"image-ablated {_fmt(f, 'ablated')} — its answers there need not come from the image.")
    small = [f"{k} ({int(f.get('n', 0))})" for k, f in sorted(families.items())
             if int(f.get("n", 0)) < c.min_family_rows]
    if small and short:
        out.append(f"- {len(small)} of {len(families)} families have too few test rows to judge "
                   f"(< {c.min_family_rows}): their scores are noise-level.")
    elif small:
        out.append(f"- Too few test rows to judge (< {c.min_family_rows}): {', '.join(small)}. Their scores are "
                   "noise-level; evaluate on more rows before trusting them.")
    if not families:
        out.append("- No per-family RadBench result: nothing shows where it fails.")
    rows = (c.profile or {}).get("rows", {})
    if rows and not short:
        out.append(f"- It saw {rows.get('train', 0)} training rows of `{c.dataset_name or 'one data set'}` only: "
                   "other modalities, scanners, protocols, populations and question phrasings are untested.")
    if c.dataset_name and "synth" in c.dataset_name:
        out.append("- The data are synthetic phantoms: the scores say nothing about real scans.")
    preset = ((c.config or {}).get("model") or {}).get("name")
    if preset == "tiny":
        out.append("- The `tiny` preset is sized for CPU demos and tests, not for accuracy.")
    if not short:
        out.append("- Free-text answers are scored by word overlap (F1, ROUGE-L), not by clinical correctness; a "
                   "fluent answer can be wrong.")
    return ["## Limitations", "", *out]


def _config_section(c: CardInputs, short: bool) -> list[str]:
    cfg = c.config or {}
    if not cfg:
        return ["## Training configuration", "", "The resolved config was not recorded with the run."]

    def get(path: str) -> Any:
        node: Any = cfg
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node

    objectives = ", ".join(f"{k} (weight {v.get('weight', 1.0)})" if isinstance(v, dict) else str(k)
                           for k, v in (get("objective") or {}).items()) or "-"
    warmup = get("callbacks.vision_warmup")
    experiment = next((o.split("=", 1)[1] for o in shlex.split(c.command or "") if o.startswith("experiment=")),
                      None)
    recipe = f"experiment={experiment}" if experiment else ("data=csv's custom_data recipe"
                                                           if get("data.name") == "custom" else "conf/train.yaml defaults")
    rows = [("model preset", get("model.name")), ("recipe", recipe), ("steps (joint fit)", get("trainer.max_steps")),
            ("vision warm-up steps", warmup.get("steps") if isinstance(warmup, dict) else "none"),
            ("objectives", objectives), ("learning rate", get("optim.lr")),
            ("batch size 2D / 3D", f"{get('data.batch_size_2d')} / {get('data.batch_size_3d')}"),
            ("vision targets", get("data.label_source")), ("packed questions", get("data.pack_questions")),
            ("trainer", f"{get('trainer.backend')} on {get('trainer.accelerator')}, {get('trainer.precision')}"),
            ("seed", get("seed"))]
    if short:
        return ["## Training configuration", "", " · ".join(f"{k} {v}" for k, v in rows[:5])]
    return ["## Training configuration", "", "| key | value |", "|---|---|",
            *[f"| {k} | {v} |" for k, v in rows],
            "", "The whole resolved config is `config/resolved.yaml` in the training run."]


def _reproduce_section(c: CardInputs) -> list[str]:
    lines = ["## How to reproduce", ""]
    if c.git_commit and c.git_commit != "unknown":
        lines.append(f"From a checkout of commit `{c.git_commit}`"
                     + (" (it had uncommitted changes: they are not in git)" if c.git_commit.endswith("-dirty")
                        else "") + ", with data version `" + c.data_version + "`:")
    else:
        lines.append(f"With data version `{c.data_version}`:")
    lines += ["", "```", c.command or "radfm pipeline   # the run's parameters were not recorded", "```"]
    lines += [f"- {n}" for n in c.command_notes]
    return lines


def render(c: CardInputs, short: bool = False) -> str:
    """The model card (Markdown); ``short``: without the per-family tables and the config table (the same
    sections, so :func:`with_gate` fills in either)."""
    title = f"# Model card: `{c.name}`" + (f" version {c.version}" if c.version else "")
    ids = ", ".join(x for x in (f"LoggedModel `{c.model_id}`" if c.model_id else "",
                                f"MLflow run `{c.run_id}`" if c.run_id else "") if x)
    lines = [title, "", f"> {NOT_FOR_CLINICAL_USE}", ""] + ([ids, ""] if ids else []) + \
        ([SHORT_FORM, ""] if short else [])
    lines += ["## Intended use", "", INTENDED_USE, "", OUT_OF_SCOPE, ""]
    lines += _data_section(c, short) + [""]
    lines += ["## RadBench (test split) beside its baselines", "",
              radbench_markdown(c.summary, families=not short, explain=not short), ""]
    lines += [GATE_HEADING, "", GATE_PENDING, ""]
    lines += _limitations(c, short) + [""]
    lines += _config_section(c, short) + [""]
    lines += _reproduce_section(c)
    return "\n".join(lines) + "\n"


def description(c: CardInputs, limit: int = DESCRIPTION_LIMIT) -> str:
    """The card as the registered version's description: whole when it fits in ``limit`` characters, else its
    short form (cut at ``limit`` as a last resort, so the registry never refuses it)."""
    card = render(c)
    if len(card) <= limit:
        return card
    card = render(c, short=True)
    for heading in EXPENDABLE:
        if len(card) <= limit:
            return card
        card = _without_body(card, heading)
    if len(card) > limit:
        card = card[: limit - 80].rstrip() + "\n\n… (cut to fit the registry: the whole card is `MODEL_CARD.md`)\n"
    return card


def _replace_body(card: str, heading: str, body: str) -> str | None:
    """``card`` with the body of its section ``heading`` (up to the next ``## `` heading, or the end) replaced by
    ``body``; None when the card has no such section."""
    lines = card.rstrip("\n").split("\n")
    if heading not in lines:
        return None
    start = lines.index(heading) + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    tail = lines[end:]
    return "\n".join([*lines[:start], "", *body.split("\n"), *([""] if tail else []), *tail]) + "\n"


def _without_body(card: str, heading: str) -> str:
    return _replace_body(card, heading, "In `MODEL_CARD.md`.") or card


# ------------------------------------------------------------------------------------------------ the gate


def gate_markdown(decision: dict[str, Any], short: bool = False) -> str:
    """The promotion gate's decision (``radfm.registry.promotion.Decision.to_dict()``) as the card's section
    body: the verdict, the reason, the closed families that kept it out and the checks; ``short``: the verdict
    and the families (the reason is the ``[promotion …]`` line that the promotion step appended)."""
    if decision.get("promoted"):
        verdict = "**Promoted to champion.**"
    elif decision.get("refused"):
        verdict = (f"**Refused by the promotion gate** (champion stays "
                   f"{decision.get('champion_version') or 'unset'}).")
    else:
        verdict = "**Not promoted.**"
    failed = decision.get("failed_families") or {}
    if short:
        return verdict + (f" Closed families short of their baselines: {_names(list(failed))}." if failed else "") \
            + " Why: the `[promotion …]` line below."
    lines = [f"{verdict} {decision.get('reason', '')}".strip()]
    if failed:
        lines += ["", "| closed family | n | model | blind | image-ablated | short by |", "|---|---|---|---|---|---|"]
        lines += [f"| {_cell(k)} | {v.get('n')} | {v.get('model', '-')} | {v.get('blind', '-')} | {v.get('ablated', '-')} "
                  f"| {v.get('short_by', '-')} |" for k, v in failed.items()]
    checks = decision.get("checks") or []
    if checks:
        lines += ["", "Checks:", *[f"- {x}" for x in checks]]
    return "\n".join(lines)


def description_with_gate(description: str, decision: dict[str, Any]) -> str:
    """The version's description with the gate's decision filled in: the whole decision when it fits the
    registry, else its short form, else the description as it was."""
    for short in (False, True):
        filled = with_gate(description, gate_markdown(decision, short))
        if len(filled) <= REGISTRY_MAX - 500:
            return filled
    return description


def with_gate(card: str, body: str) -> str:
    """``card`` with the body of its promotion-gate section replaced by ``body`` (the section is added at the end
    when the card has none); whatever follows the section — later sections, appended lines — is kept."""
    filled = _replace_body(card, GATE_HEADING, body)
    return filled if filled is not None else card.rstrip("\n") + f"\n\n{GATE_HEADING}\n\n{body}\n"


# ------------------------------------------------------------------------------------------------ inputs


def _option(flag: str, value: Any) -> list[str]:
    return [flag, str(value)] if value not in (None, "") else []


def reproduce_command(params: dict[str, Any], defaults: dict[str, Any], data_version: str) -> tuple[str, list[str]]:
    """``(command, notes)``: the ``radfm pipeline`` command line that runs the pipeline with ``params`` (the
    flow's parameters as plain data; ``defaults`` those of a plain run) on data version ``data_version``, and
    notes for parameters the command line cannot set."""
    args = ["radfm", "pipeline", *params.get("overrides", [])]
    notes: list[str] = []
    data = params.get("data") or {}
    kind = data.get("kind", "config")
    if kind == "dvc":
        # Pinned: the command fails on any other data rather than train on it.
        args += ["--data-kind", "dvc", *_option("--data-repo", data.get("repo")),
                 *_option("--data-target", data.get("target")), "--data-version", data_version]
        for key in ("remote", "manifest"):
            if data.get(key):
                notes.append(f"the flow ran with data.{key}={data[key]!r}, which the command line does not set")
    elif kind == "ingest":
        notes.append(f"the data were imported first (`radfm ingest {data.get('importer')}` of {data.get('source')!r} "
                     f"into {data.get('out')!r}); run the flow with data.kind=ingest, or ingest, then pass the "
                     "manifest's folder through the Hydra data group")
    else:
        notes.append(f"the Hydra data group makes or finds the data; it must come out as data version "
                     f"`{data_version}` (the run's `radfm.data_version`), or this is another data set")
    args += _option("--gate", params.get("gate"))
    if params.get("registry") is False:
        args.append("--no-register")
    if params.get("promote") is False:
        args.append("--no-promote")
    ev, ev_default = params.get("eval") or {}, defaults.get("eval") or {}
    args += _option("--eval-limit", ev.get("limit"))
    for key in ("config_name", "model_name", "validation_config", "validate_images"):
        if key in params and params[key] != defaults.get(key):
            notes.append(f"the flow ran with {key}={params[key]!r}, which the command line does not set")
    other = {k: v for k, v in ev.items() if k != "limit" and v != ev_default.get(k)}
    if other:
        notes.append(f"the flow ran RadBench with {json.dumps(other, sort_keys=True)}, which the command line "
                     "does not set")
    return shlex.join(args), notes


def run_artifact_text(client: Any, run_id: str, path: str) -> str | None:
    """The text of one artifact of a run, through ``client`` (its store, not the process's current one); None
    when the run has no such artifact."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        try:
            return Path(client.download_artifacts(run_id, path, tmp)).read_text()
        except Exception as exc:  # noqa: BLE001 - MlflowException or OSError: a card says what it lacks instead
            log.info("run %s has no %s (%s): the model card goes without it", run_id, path, exc)
            return None


def _source_uri(dataset: Any) -> str | None:
    """The URI in a logged dataset's source JSON (``{"uri": …}`` for file and S3 sources)."""
    try:
        return str(json.loads(dataset.source).get("uri")) if dataset else None
    except (ValueError, AttributeError):
        return None


def card_inputs(client: Any, name: str, mv: Any, summary: dict[str, Any], model_dir: str | Path | None = None,
                run_id: str | None = None) -> CardInputs:
    """Everything :func:`render` needs but the command, read back from the registered version ``mv`` and its
    training run ``run_id`` (default: the version's run): tags, dataset input, profile and resolved config."""
    import yaml

    from radfm.registry.promotion import Gate
    from radfm.registry.tracking import profile_summary

    run_id = run_id or mv.run_id
    tags: dict[str, str] = {}
    dataset: Any = None
    profile = config = None
    if run_id:
        run = client.get_run(run_id)
        tags = run.data.tags
        inputs = run.inputs.dataset_inputs if run.inputs else []
        dataset = next((i.dataset for i in inputs
                        if any(t.key == "mlflow.data.context" and t.value == "training" for t in i.tags)), None)
        text = run_artifact_text(client, run_id, "data/profile.json")
        profile = profile_summary(json.loads(text)) if text else None
        text = run_artifact_text(client, run_id, "config/resolved.yaml")
        config = yaml.safe_load(text) if text else None
    meta: dict[str, Any] = {}
    if model_dir and (Path(model_dir) / "radfm.json").is_file():
        meta = json.loads((Path(model_dir) / "radfm.json").read_text())
    version = (mv.tags or {}).get("radfm.data_version") or tags.get("radfm.data_version") \
        or meta.get("data_version") or "unknown"
    return CardInputs(name=name, version=str(mv.version), model_id=(mv.tags or {}).get("radfm.model_id"),
                      run_id=run_id, git_commit=tags.get("radfm.git_commit"), data_version=str(version),
                      dataset_name=dataset.name if dataset else None,
                      dataset_source=_source_uri(dataset),
                      profile=profile, summary=summary, config=config, min_family_rows=Gate().min_family_rows)


def write_card(text: str, model_dir: str | Path) -> Path:
    """``MODEL_CARD.md`` in the checkpoint folder: the card travels with the weights it describes."""
    path = Path(model_dir) / CARD_FILE
    path.write_text(text)
    return path
