"""The data describes itself: a profile of a manifest's question families, written beside the manifest.

Rows are grouped into question families (an explicit ``meta["family"]`` wins — MedMD-synth sets it, and
``radfm ingest table`` carries a ``family`` column into it — else the normalised question, with phrasings that
vary merged by template clustering; the rules are in :mod:`radfm.data.families`). A family is
  * ``yesno``: its training answers (normalised: lowercase, trimmed, trailing punctuation stripped) are yes and
    no (≥ ``min_coverage`` of the rows, both seen); its choices are ``["no", "yes"]``;
  * ``closed``: the answers seen at least ``min_count`` times in training — at least two, at most
    ``max_choices`` — cover ≥ ``min_coverage`` of its training rows; they are its ``choices`` (sorted, each in
    its most frequent written form);
  * ``open``: anything else (free text; ``report_like`` when the median answer is longer than
    ``free_text_words`` words), a family with one answer, or one without training rows.
A family whose rows all carry the same ``choices`` keeps them (yes/no when they are yes and no): the manifest
said so. A closed family whose val/test answers were never seen in training keeps its choices (the message
names the unseen answers), unless more than ``max_unseen`` of its val/test rows (and at least ``min_count``
rows) are unseen: then it is open.

Files, beside ``<dir>/<stem>.jsonl`` (or ``.parquet``): the profile ``<stem>.profile.json`` (so
``D/manifest.jsonl`` → ``D/manifest.profile.json``; it lives in the data folder and DVC versions it with the
data) and an optional override the user writes, ``<stem>.profile.override.yaml`` (``.yml``/``.json``)::

    config: {min_count: 2}                # thresholds of ProfileConfig
    merge:                                # new name: families merged into it (names as in the profile)
      pneumonia: [is there pneumonia, does the x ray show pneumonia]
    families:                             # after the merges
      what is the modality: {rename: modality, kind: closed, choices: [CT, X-ray]}   # kind: closed|yesno|open

The override wins: it is applied when the profile is computed, and :func:`load_profile` recomputes a profile
whose manifest, override or thresholds changed since it was written. :func:`apply_profile` puts a profile on
samples (``meta["family"]``; ``choices`` for closed families). Bad data never raises here: it becomes a
message in the profile (per family, or in ``messages`` for the whole manifest); only an override file that
cannot be read is an error (naming the file).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from radfm.data.errors import SampleError
from radfm.data.families import (
    YES_NO,
    Family,
    Row,
    canonical_forms,
    decide_kind,
    free_text,
    group_rows,
    held_out_check,
    normalise_answer,
    normalise_question,
    surface_answer,
)
from radfm.data.manifest import SPLITS, Sample, _validate_row, read_records

log = logging.getLogger(__name__)

PROFILE_VERSION = 2  # 2: template topics and answer vocabularies merge phrasings
KINDS = ("closed", "yesno", "open")
OVERRIDE_SUFFIXES = (".profile.override.yaml", ".profile.override.yml", ".profile.override.json")
MAX_PHRASINGS = 20  # shown per family; the full membership is in "members"


@dataclass(frozen=True)
class ProfileConfig:
    """Thresholds of the profile (defaults: what a small user table needs; change them in the override file).

    ``max_choices`` 20: more frequent answers than that is a free-text field, and ranking many choices per row
    costs RadBench time. ``min_count`` 3: an answer seen once or twice cannot be learned (and is often a typo).
    ``min_coverage`` 0.95: "nearly all" training rows answer within the choices. ``max_unseen`` 0.5: a closed
    family stays closed unless most of its val/test answers never occur in training. ``question_overlap`` 0.8
    and ``question_jaccard`` 0.5 merge phrasings whose content words nearly coincide ("is there pneumonia" /
    "is pneumonia present in this x ray") but not questions about different things ("left lung" / "right
    lung"); ``answer_overlap`` 0.5: merged phrasings must share their answers; ``answer_jaccard`` 0.5: short
    answer sets that coincide this much merge phrasings with no common word ("what kind of scan is this" / "name
    the imaging modality"); ``free_text_words`` 5: a median answer longer than that is free text (see
    :mod:`radfm.data.families`)."""

    max_choices: int = 20
    min_count: int = 3
    min_coverage: float = 0.95
    max_unseen: float = 0.5
    question_overlap: float = 0.8
    question_jaccard: float = 0.5
    answer_overlap: float = 0.5
    answer_jaccard: float = 0.5
    free_text_words: int = 5

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "profile config") -> ProfileConfig:
        known = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"{where}: unknown profile threshold(s) {unknown}; known: {sorted(known)}")
        out = cls()
        for key, value in values.items():
            default = getattr(out, key)
            try:
                out = replace(out, **{key: type(default)(value)})
            except (TypeError, ValueError):
                raise ValueError(f"{where}: {key} must be a number, got {value!r}") from None
        return out


# ------------------------------------------------------------------------------------------------ files


def _stem(manifest: str | Path) -> str:
    return Path(str(manifest)).name.split(".")[0]


def profile_path(manifest: str | Path) -> Path:
    """``<dir>/<stem>.profile.json`` beside the manifest."""
    manifest = Path(str(manifest))
    return manifest.with_name(f"{_stem(manifest)}.profile.json")


def override_path(manifest: str | Path) -> Path | None:
    """The user's override file beside the manifest, if there is one."""
    manifest = Path(str(manifest))
    for suffix in OVERRIDE_SUFFIXES:
        path = manifest.with_name(_stem(manifest) + suffix)
        if path.is_file():
            return path
    return None


def read_override(path: str | Path) -> dict[str, Any]:
    """The override file as a dict (``config``, ``merge``, ``families``); a file that cannot be read is an error
    naming it (it is the user's own instruction: ignoring it would be worse)."""
    path = Path(path)
    text = path.read_text()
    try:
        if path.suffix == ".json":
            data = json.loads(text) if text.strip() else {}
        else:
            import yaml

            data = yaml.safe_load(text) or {}
    except (json.JSONDecodeError, ValueError) as exc:
        raise ValueError(f"profile override {path}: not valid {path.suffix[1:].upper()} ({exc}); fix or remove "
                         "it") from None
    except Exception as exc:  # yaml.YAMLError has no common base with the JSON error
        raise ValueError(f"profile override {path}: not valid YAML ({str(exc).splitlines()[0]}); fix or remove "
                         "it") from None
    if not isinstance(data, dict) or set(data) - {"config", "merge", "families"}:
        raise ValueError(f"profile override {path}: expected a mapping with keys config, merge, families")
    return data


def _sha256(path: str | Path | None) -> str | None:
    if path is None or not Path(path).is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------ building


def _explicit_family(s: Sample) -> str | None:
    value = (s.meta or {}).get("family")
    return (str(value).strip() or None) if value is not None else None


def _row(index: int, s: Sample) -> Row:
    return Row(index, s.split, normalise_question(s.question), _explicit_family(s), normalise_answer(s.answer),
               surface_answer(s.answer), bool((s.meta or {}).get("question_missing")),
               tuple(s.choices) if s.choices else None)


def _apply_override(families: list[Family], override: dict[str, Any], messages: list[str]
                    ) -> tuple[list[Family], dict[str, dict[str, Any]]]:
    """Merges, then renames; returns the families and what the override forces per (new) name."""
    by_name = {f.name: f for f in families}
    merges = override.get("merge") or {}
    if not isinstance(merges, dict):
        messages.append("override: 'merge' must map a new family name to a list of families; ignored")
        merges = {}
    for new, olds in merges.items():
        olds = [olds] if isinstance(olds, str) else list(olds or [])
        missing = [o for o in olds if o not in by_name]
        if missing:
            messages.append(f"override: merge into '{new}': no family named {missing}")
        parts = [by_name.pop(o) for o in dict.fromkeys([*olds, new]) if o in by_name]
        if parts:
            by_name[str(new)] = Family(str(new), "override", sorted({e for p in parts for e in p.explicit}),
                                       sorted({q for p in parts for q in p.questions}),
                                       sorted((r for p in parts for r in p.rows), key=lambda r: r.index))
    forced: dict[str, dict[str, Any]] = {}
    settings = override.get("families") or {}
    if not isinstance(settings, dict):
        messages.append("override: 'families' must map a family name to its settings; ignored")
        settings = {}
    for name, setting in settings.items():
        name = str(name)
        if name not in by_name:
            messages.append(f"override: no family named '{name}' (names are as in the profile)")
            continue
        setting = dict(setting or {})
        target = str(setting.get("rename") or name)
        if target != name:
            if target in by_name:
                messages.append(f"override: cannot rename '{name}' to '{target}': that family exists (merge them)")
                target = name
            else:
                fam = by_name.pop(name)
                fam.name = target
                by_name[target] = fam
        forced[target] = {k: setting[k] for k in ("kind", "choices") if setting.get(k) is not None}
    return [by_name[k] for k in sorted(by_name)], forced


def _force(fam: Family, decision: dict[str, Any], forced: dict[str, Any], cfg: ProfileConfig,
           why: str = "set by the override file") -> None:
    """Given kind/choices (the override's, or the choices all the family's rows carry) replace what the answers
    said; answers outside them and choices never answered in training are named, as are unseen held-out
    answers."""
    kind, choices = forced.get("kind"), forced.get("choices")
    if kind is not None and kind not in KINDS:
        decision["messages"].append(f"override: kind {kind!r} is not one of {list(KINDS)}; ignored")
        return
    if kind == "open":
        decision.update(kind="open", choices=None, answers=None, reason=why, messages=[])
        return
    train = fam.train_answers()
    if choices is not None:  # YAML reads a bare yes/no as a boolean
        given = [surface_answer({True: "yes", False: "no"}.get(c, c) if isinstance(c, bool) else c)
                 for c in ([choices] if isinstance(choices, str) else choices)]
    elif kind == "yesno":
        given = ["no", "yes"]
    else:  # closed without choices: every answer seen in training
        given = sorted(canonical_forms(fam.rows).values())
    canon = {normalise_answer(c): c for c in given if c}
    if len(canon) < 2:
        decision["messages"].append(f"override: kind {kind or 'closed'} needs at least two choices, got "
                                    f"{sorted(canon.values())}; ignored")
        return
    kind = kind or ("yesno" if set(canon) == YES_NO else "closed")
    outside = sum(c for a, c in train.items() if a not in canon)
    decision.update(kind=kind, choices=sorted(canon.values(), key=lambda c: (c.lower(), c)), reason=why, messages=[],
                    answers={canon[a]: train.get(a, 0) for a in sorted(canon, key=lambda a: canon[a])})
    if outside:
        decision["messages"].append(f"{outside} training row(s) answer outside the choices")
    never = [canon[a] for a in sorted(canon) if not train.get(a)]
    if never:
        decision["messages"].append(f"never answered in training: {', '.join(repr(c[:40]) for c in never)}; the "
                                    "model has no example of it")
    held_out_check(fam, set(canon), canon, cfg, decision, forced=True)


def build_profile(samples: Sequence[Sample], config: ProfileConfig | None = None,
                  override: dict[str, Any] | None = None) -> dict[str, Any]:
    """The profile of ``samples`` (plain data, JSON-ready): ``config``, ``rows`` per split, ``families`` (sorted
    by name) and ``messages``. ``override`` is a parsed override file (:func:`read_override`)."""
    override = override or {}
    cfg = config or ProfileConfig()
    if override.get("config"):
        cfg = ProfileConfig.from_dict({**asdict(cfg), **override["config"]}, "profile override config")
    messages: list[str] = []
    rows = [_row(i, s) for i, s in enumerate(samples)]
    families, forced = _apply_override(group_rows(rows, cfg), override, messages)
    out_families = []
    for fam in families:
        decision = decide_kind(fam, cfg)
        if fam.name in forced and forced[fam.name]:
            _force(fam, decision, forced[fam.name], cfg)
        elif fam.declared_choices():
            _force(fam, decision, {"choices": fam.declared_choices()}, cfg, "the rows' own choices")
        missing = sum(r.question_missing for r in fam.rows)
        if missing:
            decision["messages"].append(f"{missing} row(s) had an empty question: they were given their task's "
                                        "default question")
        phrasings = fam.phrasings()
        out_families.append({
            "name": fam.name, "kind": decision["kind"], "choices": decision["choices"], "rows": fam.split_counts(),
            "answers": decision["answers"], "phrasings": phrasings[:MAX_PHRASINGS], "n_phrasings": len(phrasings),
            "from": fam.source, "reason": decision["reason"],
            "report_like": decision["kind"] == "open" and free_text(fam.train_answers(), cfg.free_text_words),
            "messages": decision["messages"],
            "members": {"families": fam.explicit, "questions": fam.questions},
        })
    if not rows:
        messages.append("the manifest has no rows to profile")
    elif not any(f["kind"] != "open" for f in out_families):
        messages.append("no closed or yes/no family: every question is open (free text), so no choices are filled "
                        "and no closed family is ranked or gated; give kinds in the override file if that is wrong")
    counts = {s: sum(r.split == s for r in rows) for s in SPLITS}
    return {"profile_version": PROFILE_VERSION, "config": asdict(cfg), "rows": counts, "families": out_families,
            "messages": messages}


def profile_manifest(manifest: str | Path, config: ProfileConfig | None = None) -> dict[str, Any]:
    """Profile a manifest file (its override file applied). Rows that fail the schema are left out and named in
    ``messages``; the manifest's and the override's hashes say later whether the profile is stale."""
    valid: list[Sample] = []
    bad: list[str] = []
    for where, rec, problem in read_records(manifest):
        if problem is not None:
            bad.append(f"{where}: {problem}")
            continue
        try:
            valid.append(_validate_row(rec, where))
        except SampleError as err:
            bad.append(err.reason)
    remote = str(manifest).startswith("s3://")
    over = None if remote else override_path(manifest)
    profile = build_profile(valid, config, read_override(over) if over else None)
    if bad:
        shown = "; ".join(bad[:3]) + (f"; and {len(bad) - 3} more" if len(bad) > 3 else "")
        profile["messages"].insert(0, f"{len(bad)} row(s) fail the manifest schema and are left out: {shown}")
    head = {"profile_version": PROFILE_VERSION, "manifest": Path(str(manifest)).name,
            "manifest_sha256": None if remote else _sha256(manifest),
            "override": over.name if over else None, "override_sha256": _sha256(over)}
    return {**head, **profile}


def is_stale(profile: dict[str, Any], manifest: str | Path, config: ProfileConfig | None = None) -> bool:
    """Whether ``profile`` was computed from another manifest, override, thresholds or profile version."""
    over = override_path(manifest)
    if (profile.get("profile_version") != PROFILE_VERSION or profile.get("manifest_sha256") != _sha256(manifest)
            or profile.get("override_sha256") != _sha256(over)):
        return True
    cfg = config or ProfileConfig()
    if over is not None:
        extra = read_override(over).get("config") or {}
        cfg = ProfileConfig.from_dict({**asdict(cfg), **extra}, f"profile override {over}")
    return profile.get("config") != asdict(cfg)


def write_profile(manifest: str | Path, config: ProfileConfig | None = None) -> Path:
    """Compute the profile of ``manifest`` and write it beside it (deterministic JSON: the same manifest gives
    the same bytes, so the data version does not move)."""
    profile = profile_manifest(manifest, config)
    path = profile_path(manifest)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(profile, indent=1, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    log.info("profile of %s: %s (%s)", Path(str(manifest)).name, path.name, summary(profile))
    return path


def ensure_profile(manifest: str | Path, config: ProfileConfig | None = None) -> Path | None:
    """Write the profile beside a local manifest when it is missing or stale; its path (None for s3://)."""
    if str(manifest).startswith("s3://"):
        log.info("%s is on S3: its profile is computed when needed, not written", manifest)
        return None
    path = profile_path(manifest)
    if path.is_file():
        try:
            if not is_stale(json.loads(path.read_text()), manifest, config):
                return path
        except json.JSONDecodeError:
            pass  # a damaged profile is rewritten
    return write_profile(manifest, config)


def load_profile(manifest: str | Path, config: ProfileConfig | None = None) -> dict[str, Any] | None:
    """The profile beside ``manifest`` (None when none was written); recomputed in memory, not rewritten, when
    the manifest, the override file or the thresholds changed since (the override always wins)."""
    if str(manifest).startswith("s3://"):
        return None
    path = profile_path(manifest)
    if not path.is_file():
        return None
    try:
        profile = json.loads(path.read_text())
    except json.JSONDecodeError:
        log.warning("%s is not valid JSON: profiling %s again", path, Path(str(manifest)).name)
        return profile_manifest(manifest, config)
    if Path(str(manifest)).is_file() and is_stale(profile, manifest, config):
        log.info("%s is stale (manifest, override or thresholds changed): profiled again", path.name)
        return profile_manifest(manifest, config)
    return profile


# ------------------------------------------------------------------------------------------------ using


def apply_profile(samples: Sequence[Sample], profile: dict[str, Any] | None) -> list[Sample]:
    """``samples`` with the profile put on them (a new list; the input is not modified, no row is dropped).

    A row that already has ``choices`` is returned unchanged. Any other row of a known family gets
    ``meta["family"]`` (the profile's name; and ``meta["family_by"] = "question"`` when the family is the
    profile's group of phrasings, not the table's own family column: its rows ask one question); in a closed or yes/no family, a row whose normalised answer is
    among the choices also gets ``choices``, and its answer in the choice's written form (the answer as it was
    written kept in ``meta["answer_as_written"]`` when it differed, e.g. ``"YES."`` → ``"yes"``). A row whose
    answer is not among the choices (unseen in training) keeps no choices."""
    if not profile:
        return list(samples)
    by_explicit: dict[str, dict[str, Any]] = {}
    by_question: dict[str, dict[str, Any]] = {}
    for fam in profile.get("families", []):
        members = fam.get("members") or {}
        by_explicit.update({name: fam for name in members.get("families", [])})
        by_question.update({q: fam for q in members.get("questions", [])})
    out: list[Sample] = []
    for s in samples:
        explicit = _explicit_family(s)
        fam = by_explicit.get(explicit) if explicit else by_question.get(normalise_question(s.question))
        if s.choices is not None or fam is None:
            out.append(s)
            continue
        record = s.model_dump()
        record["meta"] = {**(record["meta"] or {}), "family": fam["name"]}
        if not explicit:  # a family of phrasings (not a table's own family column): its rows ask one question
            record["meta"]["family_by"] = "question"
        if fam["kind"] in ("closed", "yesno") and fam.get("choices"):
            choice = {normalise_answer(c): c for c in fam["choices"]}.get(normalise_answer(s.answer))
            if choice is not None:
                record["choices"] = list(fam["choices"])
                if choice != s.answer:
                    record["meta"]["answer_as_written"] = s.answer
                    record["answer"] = choice
        out.append(Sample.model_validate(record))
    return out


def with_profile(samples: Sequence[Sample], manifest: str | Path) -> list[Sample]:
    """The rows of ``manifest`` with its question profile on them (:func:`apply_profile`): the profile written
    beside the manifest, else computed here (an s3:// manifest's rows are returned as they are). What reads a
    row's family or ``choices`` — RadBench, the promotion gate, the vision side's answer targets — reads these."""
    if str(manifest).startswith("s3://"):
        return list(samples)
    return apply_profile(samples, load_profile(manifest) or profile_manifest(manifest))


def summary(profile: dict[str, Any]) -> str:
    """``3 families: 1 closed, 1 yes/no, 1 open; 2 messages``."""
    fams = profile.get("families", [])
    kinds = {k: sum(f["kind"] == k for f in fams) for k in KINDS}
    n_msgs = len(profile.get("messages", [])) + sum(len(f.get("messages", [])) for f in fams)
    return (f"{len(fams)} families: {kinds['closed']} closed, {kinds['yesno']} yes/no, {kinds['open']} open"
            + (f"; {n_msgs} message(s)" if n_msgs else ""))


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def format_profile(profile: dict[str, Any], width: int = 36) -> str:
    """A short table (family, kind, train/val/test rows, choices) and the messages, for ``radfm validate``."""
    fams = profile.get("families", [])
    lines = [f"question families: {summary(profile)}",
             f"{'family':<{width}} {'kind':<6} {'train':>6} {'val':>5} {'test':>5}  choices"]
    for f in fams:
        choices = ", ".join(f["choices"]) if f.get("choices") else "-"
        rows = f.get("rows", {})
        lines.append(f"{_cut(f['name'], width):<{width}} {f['kind']:<6} {rows.get('train', 0):>6} "
                     f"{rows.get('val', 0):>5} {rows.get('test', 0):>5}  {_cut(choices, 60)}")
    notes = [f"- {m}" for m in profile.get("messages", [])]
    notes += [f"- {_cut(f['name'], width)}: {m}" for f in fams for m in f.get("messages", [])]
    if notes:
        lines += ["messages:", *notes]
    return "\n".join(lines)
