"""The promotion gate stands on the baselines: on real registered versions (a SQLite MLflow registry), a version
that does not beat its blind and image-ablated baselines on every closed family with enough test rows is refused
— the first version included — the refusal is recorded, `champion` does not move, and `radfm promote` exits 2;
a gate file relaxes it explicitly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from radfm.registry.promotion import Gate, baseline_check, history, promote
from radfm.registry.pyfunc import log_pyfunc, radbench_metrics
from radfm.registry.registry import radbench_tags, read_family_scores, read_scores, register
from tests.registry import test_registry as shared

# The fixtures live in test_registry (this package owns no conftest); binding them here makes pytest see them.
checkpoint_dir, scans, local_registry = shared.checkpoint_dir, shared.scans, shared.local_registry
family_entry, summary, aliases = shared.family_entry, shared.summary, shared.aliases

ROOT = Path(__file__).resolve().parents[2]
# The real data set: the model answered exactly what the image-ablated model answered (question priors).
PRIORS_ONLY = {"diagnosis/what is the most likely diagnosis?": family_entry(0.602, n=40, blind=0.301, ablated=0.602),
               "modality/modality": family_entry(0.93, n=60),
               "report/report": family_entry(0.1, closed=False, n=60)}
DIAGNOSIS = "diagnosis/what is the most likely diagnosis"  # the family as the registry names it (MLflow-legal)


def version(checkpoint_dir: Path, families: dict | None = None, modality: float = 0.8, vqa: float = 0.6) -> str:
    info = log_pyfunc(checkpoint_dir, radbench_summary=summary(modality, vqa, families=families))
    return str(register(info).version)


def tags(v: str, name: str = "radfm") -> dict[str, str]:
    return mlflow.MlflowClient().get_model_version(name, v).tags


def test_family_scores_reach_the_registry_with_legal_names() -> None:
    flat = radbench_metrics(summary(0.8, 0.6, families=PRIORS_ONLY))
    assert flat[f"family.{DIAGNOSIS}.model.headline"] == 0.602
    assert flat[f"family.{DIAGNOSIS}.n"] == 40 and flat[f"family.{DIAGNOSIS}.closed"] == 1.0
    assert flat["family.report/report.closed"] == 0.0 and flat["family.modality/modality.beats_both"] == 1.0
    t = radbench_tags(flat)
    assert t[f"radbench.family.{DIAGNOSIS}.beats_both"] == "false"
    assert t[f"radbench.family.{DIAGNOSIS}.ablated_headline"] == "0.602"
    assert t[f"radbench.family.{DIAGNOSIS}.n"] == "40" and t[f"radbench.family.{DIAGNOSIS}.closed"] == "true"
    fams = read_family_scores(t)
    assert fams[DIAGNOSIS] == {"headline": 0.602, "blind_headline": 0.301, "ablated_headline": 0.602,
                               "beats_both": False, "n": 40, "closed": True}
    assert set(read_scores(t)) == {"modality", "vqa"}  # family tags are not tasks
    # A summary written before `closed` existed: closed rows are the ones scored with macro_f1.
    old = {"model": {"n": 25.0, "headline": 0.5, "macro_f1": 0.4}, "blind": {"headline": 0.6},
           "ablated": {"headline": 0.5}, "beats_both": False}
    flat = radbench_metrics({"tasks": summary(0.8, 0.6)["tasks"], "families": {"vqa/plane": old}})
    assert flat["family.vqa/plane.closed"] == 1.0 and flat["family.vqa/plane.n"] == 25.0


def test_first_version_that_does_not_beat_its_baselines_is_refused(local_registry: str,
                                                                   checkpoint_dir: Path) -> None:
    assert version(checkpoint_dir, PRIORS_ONLY) == "1"
    d = promote()  # the built-in gate
    assert not d.promoted and d.refused and d.champion_version is None
    assert f"closed family {DIAGNOSIS} (n=40) does not beat both baselines" in d.reason
    assert "image-ablated 0.602, short by 0.000" in d.reason
    assert "modality/modality" not in d.reason and "report/report" not in d.reason
    assert aliases() == {"challenger": "1"}
    t = tags("1")
    assert t["promotion.decision"] == "rejected" and t["promotion.compared_to"] == "floors"
    assert json.loads(t["promotion.failed_families"]) == {
        DIAGNOSIS: {"n": 40, "model": 0.602, "blind": 0.301, "ablated": 0.602, "short_by": 0.0}}
    assert json.loads(t["promotion.gate"])["baselines"] is True
    assert "REJECTED" in mlflow.MlflowClient().get_model_version("radfm", "1").description
    assert history()[0]["failed_families"][DIAGNOSIS]["short_by"] == 0.0


def test_first_version_that_beats_its_baselines_is_promoted(local_registry: str, checkpoint_dir: Path) -> None:
    version(checkpoint_dir)
    d = promote()
    assert d.promoted and not d.refused, d.reason
    assert aliases() == {"challenger": "1", "champion": "1"}
    assert any(c.startswith("closed family vqa/size (n=30) beats both baselines: yes") for c in d.checks)
    assert json.loads(tags("1")["promotion.failed_families"]) == {}


def test_a_later_version_is_held_to_its_baselines_too(local_registry: str, checkpoint_dir: Path) -> None:
    version(checkpoint_dir)
    assert promote().promoted
    # Better task headlines than the champion, but one closed family is no better than the image-blind answer.
    worse = {"vqa/size": family_entry(0.3, n=30), "modality/modality": family_entry(0.95, n=30)}
    assert version(checkpoint_dir, worse, modality=0.9, vqa=0.7) == "2"
    d = promote()
    assert d.refused and d.champion_version == "1"
    assert "closed family vqa/size (n=30) does not beat both baselines" in d.reason and "short by 0.050" in d.reason
    assert aliases() == {"challenger": "2", "champion": "1"}
    assert tags("2")["promotion.decision"] == "rejected"


def test_min_family_rows(local_registry: str, checkpoint_dir: Path) -> None:
    # A failing family below min_family_rows is too small to judge: it is ignored.
    small = {"modality/modality": family_entry(0.9, n=40), "vqa/plane": family_entry(0.1, n=5)}
    version(checkpoint_dir, small)
    d = promote()
    assert d.promoted, d.reason
    assert "closed family vqa/plane: 5 test rows < 20, not judged" in d.checks

    # A larger min_family_rows relaxes the gate: a failing 25-row family is not judged any more.
    mid = {"modality/modality": family_entry(0.95, n=100), "vqa/plane": family_entry(0.1, n=25)}
    version(checkpoint_dir, mid, modality=0.85, vqa=0.62)
    assert promote().refused and aliases()["champion"] == "1"
    d = promote(gate=Gate(min_family_rows=30))
    assert d.promoted and aliases()["champion"] == "2"

    # Closed families, none large enough to judge: nothing shows the model learns from the images.
    version(checkpoint_dir, {"vqa/plane": family_entry(0.9, n=12)}, modality=0.86, vqa=0.63)
    d = promote()
    assert d.refused and "no closed family has 20 test rows (largest: vqa/plane, 12)" in d.reason


def test_only_open_families_and_no_family_scores(local_registry: str, checkpoint_dir: Path) -> None:
    version(checkpoint_dir, {"report/report": family_entry(0.1, closed=False)})
    d = promote()
    assert d.promoted and "no closed question family: nothing to hold to the baselines" in d.checks
    # Registered from a summary without families: the default gate cannot tell, so it refuses.
    version(checkpoint_dir, {}, modality=0.85, vqa=0.62)
    d = promote()
    assert d.refused and "no family-level RadBench scores" in d.reason and aliases()["champion"] == "1"
    assert promote(gate=Gate(baselines=False)).promoted and aliases()["champion"] == "2"


def test_gate_fields_are_checked() -> None:
    assert Gate.from_dict({"baselines": False, "min_family_rows": 50}) == Gate(baselines=False, min_family_rows=50)
    assert Gate().baselines is True and Gate().min_family_rows == 20
    for bad in ({"baselines": "no"}, {"min_family_rows": 0}, {"min_family_rows": 2.5}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            Gate.from_dict(bad)
    failures, checks, _ = baseline_check(Gate(baselines=False), None)
    assert failures == [] and checks == ["baselines not checked (the gate says baselines: false)"]
    # RadBench run without the image-ablated model (--no-ablate): a closed family cannot show it beats it.
    no_ablated = {"vqa/plane": {"headline": 0.9, "blind_headline": 0.3, "n": 30, "closed": True}}
    failures, _, failed = baseline_check(Gate(), no_ablated)
    assert "closed family vqa/plane (n=30) has no blind and image-ablated baselines" in failures[0]
    assert failed == {"vqa/plane": {"n": 30, "missing": "baselines"}}


def test_radfm_promote_exits_2_when_refused_and_a_relaxed_gate_file_promotes(
        local_registry: str, checkpoint_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    from radfm.cli import main

    version(checkpoint_dir, PRIORS_ONLY)
    env = {**os.environ, "MLFLOW_TRACKING_URI": local_registry, "RADFM_HOME": str(tmp_path / "home")}
    out = subprocess.run([sys.executable, "-m", "radfm.cli", "promote"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("radfm promote: REFUSED radfm version 1 (champion stays unset)")
    assert DIAGNOSIS in lines[0]
    assert aliases() == {"challenger": "1"}

    monkeypatch.setenv("MLFLOW_TRACKING_URI", local_registry)
    relaxed = tmp_path / "gate.yaml"
    relaxed.write_text(yaml.safe_dump({"baselines": False}))
    assert main(["promote", "--gate", str(relaxed)]) == 0
    assert "PROMOTED" in capsys.readouterr().out
    assert aliases() == {"challenger": "1", "champion": "1"}
    assert json.loads(tags("1")["promotion.gate"])["baselines"] is False
    # Already champion is not a refusal; a bad gate file is one line and exit 2.
    assert main(["promote", "--gate", str(relaxed)]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("baseline: false\n")
    assert main(["promote", "--gate", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown gate field(s) ['baseline']" in err[0]
