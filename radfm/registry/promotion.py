"""The promotion gate: a challenger version replaces the ``champion`` alias only when its RadBench scores pass.

The gate stands on the baselines: by default (``baselines: true``) a version — the first one included — is
refused unless it beats both its blind and its image-ablated baseline on every closed question family with at
least ``min_family_rows`` test rows (smaller families are too noisy to judge and are listed as not judged; a
version with closed families none of which is that large is refused: nothing shows it learned from the images).
A gate file relaxes it explicitly: ``baselines: false``, or a larger ``min_family_rows``.

Metric keys are ``<task>.<metric>`` (``<task>`` alone means its headline); ``*`` means every task's headline
and ``*.<metric>`` that metric of every task. The most specific key wins. The decision and both score tables
are written to the challenger version (tags + one description line) before the alias moves; moving
``champion`` is the last write, so a failure part-way never leaves a half-promoted version, and a retry
repeats the same decision without duplicating anything.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from radfm.registry.registry import (
    CHALLENGER,
    CHAMPION,
    DEFAULT_NAME,
    RegistryError,
    client,
    read_family_scores,
    read_scores,
    version_by_alias,
)

log = logging.getLogger(__name__)


class MissingMetricsError(ValueError):
    """A version has no RadBench scores in the registry: it cannot be compared or promoted."""


FIELDS = ("required_tasks", "min_gain", "max_regression", "floors", "baselines", "min_family_rows")


@dataclass
class Gate:
    required_tasks: list[str] = field(default_factory=list)
    min_gain: dict[str, float] = field(default_factory=dict)
    max_regression: dict[str, float] = field(default_factory=lambda: {"*": 0.02})
    floors: dict[str, float] = field(default_factory=dict)
    # Every closed family with at least min_family_rows test rows must beat both baselines (the first version too).
    baselines: bool = True
    min_family_rows: int = 20

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Gate:
        d = dict(d or {})
        unknown = set(d) - set(FIELDS)
        if unknown:
            raise ValueError(f"unknown gate field(s) {sorted(unknown)}: use {', '.join(FIELDS)}")
        out: dict[str, Any] = {}
        for k, v in d.items():
            if k == "required_tasks":
                out[k] = list(v)
            elif k == "baselines":
                if not isinstance(v, bool):
                    raise ValueError(f"gate field baselines must be true or false, got {v!r}")
                out[k] = v
            elif k == "min_family_rows":
                if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                    raise ValueError(f"gate field min_family_rows must be a whole number >= 1, got {v!r}")
                out[k] = v
            else:
                out[k] = {str(a): float(b) for a, b in dict(v).items()}
        return cls(**out)


@dataclass
class Decision:
    promoted: bool
    reason: str
    challenger: dict[str, Any]
    champion: dict[str, Any] | None
    version: str = ""
    champion_version: str | None = None
    checks: list[str] = field(default_factory=list)
    # True when the gate said no (not for "already champion"): `radfm promote` and the pipeline exit 2 then.
    refused: bool = False
    failures: list[str] = field(default_factory=list)
    failed_families: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _lookup(rules: dict[str, float], task: str, metric: str) -> float | None:
    for key in (f"{task}.{metric}", *((task,) if metric == "headline" else ()), f"*.{metric}",
                *(("*",) if metric == "headline" else ())):
        if key in rules:
            return rules[key]
    return None


def _keys(rules: dict[str, float], tasks: set[str]) -> set[tuple[str, str]]:
    """The (task, metric) pairs that ``rules`` names, expanded over ``tasks``."""
    out = set()
    for key in rules:
        task, _, metric = key.partition(".")
        metric = metric or "headline"
        out |= {(t, metric) for t in sorted(tasks)} if task == "*" else {(task, metric)}
    return out


def _validate(gate: Gate, scores: dict[str, dict[str, Any]], what: str) -> None:
    tasks = set(scores)
    named = set(gate.required_tasks) | {k.partition(".")[0] for r in (gate.min_gain, gate.max_regression,
                                                                       gate.floors) for k in r} - {"*"}
    unknown = sorted(named - tasks)
    if unknown:
        raise ValueError(f"unknown task(s) {unknown} in the promotion gate: {what} has RadBench scores for "
                         f"{sorted(tasks)}")


def _scores(mv: Any, name: str) -> dict[str, dict[str, Any]]:
    scores = read_scores(mv.tags or {})
    if not scores:
        raise MissingMetricsError(
            f"{name} version {mv.version} has no RadBench metrics (no 'radbench.*' tags): log the model with "
            "log_pyfunc(..., radbench_summary=...) and register it again; nothing was promoted")
    return scores


def _short_by(f: dict[str, Any]) -> float | None:
    baselines = [f[k] for k in ("blind_headline", "ablated_headline") if f.get(k) is not None]
    if f.get("headline") is None or len(baselines) < 2:
        return None
    return max(baselines) - f["headline"]


def baseline_check(gate: Gate, families: dict[str, dict[str, Any]] | None
                   ) -> tuple[list[str], list[str], dict[str, dict[str, Any]]]:
    """``(failures, checks, failed_families)`` of the rule "beats both baselines on every closed family with at
    least ``gate.min_family_rows`` test rows" — pure: no registry access."""
    if not gate.baselines:
        return [], ["baselines not checked (the gate says baselines: false)"], {}
    if not families:
        return [("no family-level RadBench scores (radbench.family.* tags): register it again from a current "
                 "`radfm eval` summary, or relax the gate with `baselines: false`")], [], {}
    closed = {k: f for k, f in sorted(families.items()) if f.get("closed")}
    if not closed:
        return [], ["no closed question family: nothing to hold to the baselines"], {}
    failures: list[str] = []
    checks: list[str] = []
    failed: dict[str, dict[str, Any]] = {}
    judged = {k: f for k, f in closed.items() if int(f.get("n", 0)) >= gate.min_family_rows}
    for key, f in closed.items():
        if key not in judged:
            checks.append(f"closed family {key}: {int(f.get('n', 0))} test rows < {gate.min_family_rows}, not judged")
    if not judged:
        largest = max(closed.items(), key=lambda kv: int(kv[1].get("n", 0)))
        return [(f"no closed family has {gate.min_family_rows} test rows (largest: {largest[0]}, "
                 f"{int(largest[1].get('n', 0))}): too few to tell whether it learns from the images; evaluate on "
                 "more test rows, or relax the gate (`baselines: false`)")], checks, {}
    for key, f in judged.items():
        gap = _short_by(f)
        n = int(f["n"])
        if gap is None:
            failures.append(f"closed family {key} (n={n}) has no blind and image-ablated baselines (RadBench ran "
                            "with --no-ablate?)")
            failed[key] = {"n": n, "missing": "baselines"}
            continue
        scores = (f"model {f['headline']:.3f}, blind {f['blind_headline']:.3f}, image-ablated "
                  f"{f['ablated_headline']:.3f}")
        ok = gap < 0  # what beats_both says, from the same headlines
        checks.append(f"closed family {key} (n={n}) beats both baselines: {'yes' if ok else 'no'} ({scores})")
        if not ok:
            failures.append(f"closed family {key} (n={n}) does not beat both baselines: {scores}, short by "
                            f"{max(gap, 0.0):.3f}")
            failed[key] = {"n": n, "model": round(f["headline"], 6), "blind": round(f["blind_headline"], 6),
                           "ablated": round(f["ablated_headline"], 6), "short_by": round(max(gap, 0.0), 6)}
    return failures, checks, failed


def evaluate_gate(gate: Gate, challenger: dict[str, dict[str, Any]],
                  champion: dict[str, dict[str, Any]] | None,
                  families: dict[str, dict[str, Any]] | None = None) -> tuple[bool, list[str], list[str]]:
    """``(passed, failures, checks)`` — pure: no registry access. ``families`` are the challenger's family
    scores (:func:`radfm.registry.registry.read_family_scores`), held to the baselines when ``gate.baselines``."""
    failures, checks, _ = baseline_check(gate, families)
    for task in gate.required_tasks:
        ok = bool(challenger[task].get("beats_both"))
        checks.append(f"{task} beats blind and image-ablated: {'yes' if ok else 'no'}")
        if not ok:
            failures.append(f"required task {task} does not beat both baselines")
    if champion is None:
        for task, metric in sorted(_keys(gate.floors, set(challenger))):
            floor = _lookup(gate.floors, task, metric)
            value = challenger.get(task, {}).get(metric)
            if value is None:
                failures.append(f"{task}.{metric} is missing (floor {floor:g})")
                continue
            checks.append(f"{task}.{metric} {value:.4f} >= floor {floor:.4f}")
            if value < floor:
                failures.append(f"{task}.{metric} {value:.4f} is below the floor {floor:.4f}")
        return not failures, failures, checks
    common = set(challenger) & set(champion)
    pairs = {(t, "headline") for t in common} | _keys(gate.min_gain, common) | _keys(gate.max_regression, common)
    for task, metric in sorted(pairs):
        new, old = challenger.get(task, {}).get(metric), champion.get(task, {}).get(metric)
        if new is None or old is None:
            if _lookup(gate.min_gain, task, metric) is not None or _lookup(gate.max_regression, task, metric) \
                    is not None:
                failures.append(f"{task}.{metric} is missing from the "
                                f"{'challenger' if new is None else 'champion'}")
            continue
        delta = new - old
        gain = _lookup(gate.min_gain, task, metric)
        regression = _lookup(gate.max_regression, task, metric)
        checks.append(f"{task}.{metric} {old:.4f} -> {new:.4f} ({delta:+.4f})")
        if gain is not None and delta < gain:
            failures.append(f"{task}.{metric} gained {delta:+.4f}, needs at least {gain:+.4f}")
        if regression is not None and delta < -regression:
            failures.append(f"{task}.{metric} regressed {delta:+.4f}, allowed at most -{regression:.4f}")
    return not failures, failures, checks


def _table(scores: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {t: {k: (round(v, 6) if isinstance(v, float) else v) for k, v in sorted(m.items())}
            for t, m in sorted(scores.items())}


def promote(name: str = DEFAULT_NAME, version: str | int | None = None, gate: Gate | None = None,
            tracking_uri: str | None = None) -> Decision:
    """Compare ``version`` (default: the ``challenger`` alias) with the ``champion`` under ``gate`` and move
    ``champion`` to it when the gate passes. Raises :class:`MissingMetricsError`, ``ValueError`` (unknown
    task in the gate), :class:`RegistryError` or ``ConnectionError``; none of them changes an alias."""
    from mlflow.exceptions import MlflowException

    gate = gate or Gate()
    c = client(tracking_uri)
    try:
        if version is None:
            mv = version_by_alias(c, name, CHALLENGER)
            if mv is None:
                raise RegistryError(f"registered model {name!r} has no '{CHALLENGER}' alias: register a version "
                                    "first or pass the version to promote")
        else:
            mv = c.get_model_version(name, str(version))
        champ = version_by_alias(c, name, CHAMPION)
    except MlflowException as exc:
        raise RegistryError(f"cannot read {name} from the registry at {c.tracking_uri}: {exc.message}") from None
    challenger = _scores(mv, name)
    _validate(gate, challenger, f"{name} version {mv.version}")
    if champ is not None and str(champ.version) == str(mv.version):
        return Decision(False, "already champion", _table(challenger), _table(challenger), str(mv.version),
                        str(champ.version))
    champion = _scores(champ, name) if champ is not None else None

    families = read_family_scores(mv.tags or {})
    passed, failures, checks = evaluate_gate(gate, challenger, champion, families)
    failed_families = baseline_check(gate, families)[2]
    against = f"version {champ.version}" if champ is not None else "the absolute floors (no champion yet)"
    if gate.baselines:
        against = f"its baselines and {against}"
    if passed:
        reason = f"passed the gate against {against}"
    else:
        shown = failures[:8] + ([f"… and {len(failures) - 8} more"] if len(failures) > 8 else [])
        reason = f"failed the gate against {against}: " + "; ".join(shown)
    decision = Decision(passed, reason, _table(challenger), _table(champion) if champion else None,
                        str(mv.version), str(champ.version) if champ is not None else None, checks,
                        refused=not passed, failures=failures, failed_families=failed_families)
    _record(c, name, mv, decision, gate)
    if passed:
        # The only write that changes who is champion, and the last one.
        c.set_registered_model_alias(name, CHAMPION, mv.version)
        log.info("%s version %s is now %s (%s)", name, mv.version, CHAMPION, reason)
    else:
        log.info("%s version %s not promoted: %s", name, mv.version, reason)
    return decision


def _record(c: Any, name: str, mv: Any, decision: Decision, gate: Gate) -> None:
    """Decision tags + one description line on the challenger; rewriting the same decision is a no-op."""
    tags = {
        "promotion.decision": "promoted" if decision.promoted else "rejected",
        "promotion.reason": decision.reason[:5000],
        "promotion.compared_to": decision.champion_version or "floors",
        "promotion.gate": json.dumps(asdict(gate), sort_keys=True)[:5000],
        "promotion.challenger_scores": json.dumps(decision.challenger, sort_keys=True)[:5000],
        "promotion.champion_scores": json.dumps(decision.champion, sort_keys=True)[:5000],
        # Which closed families kept it out, with model/blind/ablated headlines and the gap (JSON, {} when none).
        "promotion.failed_families": json.dumps(dict(list(decision.failed_families.items())[:100]),
                                                sort_keys=True),
    }
    current = mv.tags or {}
    for key, value in tags.items():
        if current.get(key) != value:
            c.set_model_version_tag(name, mv.version, key, value)
    line = f"[promotion vs {decision.champion_version or 'floors'}] " \
           f"{'PROMOTED' if decision.promoted else 'REJECTED'}: {decision.reason}"
    description = mv.description or ""
    if line not in description.splitlines():
        c.update_model_version(name, mv.version, description=(description + "\n" + line).strip())


def rollback(name: str = DEFAULT_NAME, to: str | int | None = None, tracking_uri: str | None = None) -> dict[str, str]:
    """Move ``champion`` back to ``to`` (default: the newest version older than today's champion that the gate
    once promoted), without a gate: an operator's decision after a champion misbehaves in service. The move is
    recorded on both versions (tag ``promotion.rollback`` and a description line). Returns ``{"from", "to"}``.
    Raises :class:`RegistryError` when there is no champion, no earlier promoted version, or ``to`` was never
    promoted (a version the gate refused does not come back this way: promote it through the gate instead)."""
    from mlflow.exceptions import MlflowException

    c = client(tracking_uri)
    try:
        champ = version_by_alias(c, name, CHAMPION)
        if champ is None:
            raise RegistryError(f"registered model {name!r} has no '{CHAMPION}': nothing to roll back")
        versions = {str(v.version): v for v in c.search_model_versions(f"name='{name}'")}
    except MlflowException as exc:
        raise RegistryError(f"cannot read {name} from the registry at {c.tracking_uri}: {exc.message}") from None
    promoted = sorted((int(k) for k, v in versions.items() if (v.tags or {}).get("promotion.decision") == "promoted"
                       and int(k) != int(champ.version)), reverse=True)
    if to is None:
        earlier = [v for v in promoted if v < int(champ.version)]
        if not earlier:
            raise RegistryError(f"{name} version {champ.version} is the first champion: there is no earlier one to "
                                "roll back to")
        target = str(earlier[0])
    else:
        target = str(to)
        if target not in versions:
            raise RegistryError(f"{name} has no version {target}")
        if int(target) not in promoted:
            raise RegistryError(f"{name} version {target} was never promoted by the gate (or is the champion): "
                                "promote it with `radfm promote --version` instead")
    line = f"[rollback] champion moved back from version {champ.version} to version {target}"
    for version in (str(champ.version), target):
        c.set_model_version_tag(name, version, "promotion.rollback", line)
        description = versions[version].description or ""
        c.update_model_version(name, version, description=(description + "\n" + line).strip())
    c.set_registered_model_alias(name, CHAMPION, target)
    log.info("%s: %s", name, line)
    return {"from": str(champ.version), "to": target}


def history(name: str = DEFAULT_NAME, tracking_uri: str | None = None) -> list[dict[str, Any]]:
    """Every version's promotion record, oldest first (read back from the registry)."""
    c = client(tracking_uri)
    versions = sorted(c.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version))
    out = []
    for mv in versions:
        tags = mv.tags or {}
        out.append({"version": str(mv.version), "aliases": list(mv.aliases or []),
                    "decision": tags.get("promotion.decision"), "reason": tags.get("promotion.reason"),
                    "compared_to": tags.get("promotion.compared_to"),
                    "challenger_scores": json.loads(tags.get("promotion.challenger_scores", "null")),
                    "champion_scores": json.loads(tags.get("promotion.champion_scores", "null")),
                    "failed_families": json.loads(tags.get("promotion.failed_families", "{}")),
                    "description": mv.description or ""})
    return out
