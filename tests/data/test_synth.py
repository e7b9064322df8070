"""MedMD-synth: determinism, schema, task coverage, balance, splits by image, learnable pixels, baselines."""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from radfm.data.manifest import TASKS, read_manifest
from radfm.data.prompts import TEMPLATES, render
from radfm.data.synth import (
    CHOICES,
    SynthConfig,
    generate,
    main,
    pixel_probe,
    report_findings,
)
from radfm.data.synth_scene import FINDING_TYPES, PROTOCOLS, VARIANTS, Lesion, Scene
from radfm.data.synth_scene import render as render_scene
from radfm.data.synth_turns import contrast_yesno, every_yesno, redraw_yesno

# 400 images: the smallest size at which the per-type linear probes have enough images per study type to
# be stable across seeds (at 300 the pooled presence margin varied from +0.22 to +0.35).
N_PROBE = 400


@pytest.fixture(scope="module")
def easy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth_easy")
    generate(SynthConfig(n_samples=N_PROBE, seed=0, variant="easy"), out)
    return out


@pytest.fixture(scope="module")
def hard(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth_hard")
    generate(SynthConfig(n_samples=N_PROBE, seed=0, variant="hard"), out)
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _scenes(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "scenes.jsonl").read_text().splitlines()]


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    cfg = SynthConfig(n_samples=40, seed=7)
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert generate(cfg, a) == a / "manifest.jsonl"
    generate(cfg, b)
    generate(SynthConfig(n_samples=40, seed=8), c)
    fa, fb, fc = _files(a), _files(b), _files(c)
    assert fa.keys() == fb.keys()
    assert {k for k in fa if k.startswith("images/")}  # images were written
    for key in fa:
        assert fa[key] == fb[key], f"{key} differs between two runs with the same seed"
    assert fa["manifest.jsonl"] != fc["manifest.jsonl"]
    pixels_a = [np.asarray(Image.open(a / k)) for k in sorted(fa) if k.endswith(".png")]
    pixels_c = [np.asarray(Image.open(c / k)) for k in sorted(fc) if k.endswith(".png")]
    assert not all(np.array_equal(x, y) for x, y in zip(pixels_a, pixels_c))


def test_rows_validate_and_images_load(easy: Path) -> None:
    rows = read_manifest(easy / "manifest.jsonl")  # validates every row
    scenes = {s["image"]: s for s in _scenes(easy)}
    assert len(scenes) == N_PROBE
    assert {s["kind"] for s in scenes.values()} == {"2d", "3d"}
    for path, scene in scenes.items():
        full = easy / path
        assert full.is_file(), path
        if scene["kind"] == "2d":
            arr = np.asarray(Image.open(full))
            assert path.endswith(".png") and arr.dtype == np.uint8 and arr.shape == (64, 64)
        else:
            img = nib.load(str(full))
            assert path.endswith(".nii.gz") and img.shape == (64, 64, 16)
            zooms = img.header.get_zooms()
            assert np.allclose(zooms, scene["spacing"], atol=1e-3) and min(zooms) > 0
            data = img.get_fdata()
            assert data.min() >= -1e-3 and data.max() <= 1 + 1e-3
        assert list(scene["shape"]) == ([64, 64] if scene["kind"] == "2d" else [64, 64, 16])
    for row in rows:
        assert row.images[0].path in scenes
        assert row.images[0].kind == scenes[row.images[0].path]["kind"]
        assert row.images[0].position in ("start", "end")
        assert row.meta["scene_id"] == scenes[row.images[0].path]["scene_id"]
        assert row.labels == [f["type"] for f in row.meta["findings"]]
    assert {r.images[0].position for r in rows} == {"start", "end"}
    ids = [r.id for r in rows]
    assert len(ids) == len(set(ids))


def test_all_tasks_and_families(easy: Path) -> None:
    rows = read_manifest(easy / "manifest.jsonl")
    assert {r.task for r in rows} == set(TASKS)
    families = Counter(r.meta["family"] for r in rows)
    assert set(families) == {"modality", "plane", "yesno", "diagnosis", "location", "location_open", "size",
                             "count", "report", "rationale"}
    assert {r.answer for r in rows if r.meta["family"] == "modality"} == set(CHOICES["modality"])
    assert {r.answer for r in rows if r.meta["family"] == "plane"} == set(CHOICES["plane"])
    assert {r.meta["modality"] for r in rows if r.meta["family"] == "plane"} <= {"CT", "MRI"}
    for r in rows:
        if r.meta["family"] == "diagnosis":
            assert r.answer == (", ".join(r.labels) if r.labels else "no abnormality")
        if r.meta["family"] == "count":
            assert r.answer == str(len(r.meta["findings"]))
        if r.meta["family"] in ("location", "size"):
            assert r.choices and r.answer in r.choices


def test_templates_can_be_redrawn(easy: Path) -> None:
    rng = random.Random(0)
    for r in read_manifest(easy / "manifest.jsonl")[:300]:
        family = r.meta["template"]
        assert family in TEMPLATES
        assert r.question in {t.format(**r.meta["slots"]) for t in TEMPLATES[family]}
        assert render(family, rng, **r.meta["slots"])


def test_yes_no_balanced(easy: Path) -> None:
    yesno = [r for r in read_manifest(easy / "manifest.jsonl") if r.meta["family"] == "yesno"]
    assert 0.35 <= np.mean([r.answer == "yes" for r in yesno]) <= 0.65
    per_type = defaultdict(list)
    for r in yesno:
        assert r.choices == ["yes", "no"] and r.task == "diagnosis"
        assert (r.answer == "yes") == (r.meta["finding"] in r.labels)
        per_type[r.meta["finding"]].append(r.answer == "yes")
    for finding, answers in per_type.items():
        if len(answers) >= 20:
            assert 0.3 <= np.mean(answers) <= 0.7, finding


def test_split_by_image(easy: Path) -> None:
    splits = defaultdict(set)
    for r in read_manifest(easy / "manifest.jsonl"):
        splits[r.images[0].path].add(r.split)
    assert all(len(s) == 1 for s in splits.values())
    counts = Counter(next(iter(s)) for s in splits.values())
    assert set(counts) == {"train", "val", "test"}
    assert abs(counts["train"] / N_PROBE - 0.7) < 0.02


def test_reports_parse_back_to_the_scene(easy: Path) -> None:
    rows = [r for r in read_manifest(easy / "manifest.jsonl") if r.task in ("report", "rationale")]
    for r in rows:
        want = sorted((f["type"], f["side"] or "") for f in r.meta["findings"])
        got = sorted((f["type"], f["side"] or "") for f in report_findings(r.answer))
        assert got == want, r.answer
    reports = [r.answer for r in rows if r.task == "report"]
    assert all(a.startswith("FINDINGS: ") and " IMPRESSION: " in a for a in reports)
    assert len(set(reports)) > 0.8 * len(reports)  # varied phrasing, not one report per scene type
    assert all(r.answer.startswith("Diagnosis: ") and "Rationale: " in r.answer for r in rows if r.task == "rationale")


def test_pixel_probe_easy_beats_majority(easy: Path) -> None:
    fams = json.loads((easy / "pixel_probe.json").read_text())["families"]
    for fam in ("modality", "plane", "presence"):
        assert fams[fam]["probe"] >= fams[fam]["majority"] + 0.25, (fam, fams[fam])
    for fam, v in fams.items():
        if fam.startswith("presence:") and v["n_test"] >= 20:  # fewer test images is too noisy to judge
            assert v["probe"] > v["majority"], (fam, v)
    assert pixel_probe(easy)["families"] == fams  # the exposed function is what generate wrote


def test_hard_is_harder_than_easy(easy: Path, hard: Path) -> None:
    e = json.loads((easy / "pixel_probe.json").read_text())["families"]
    h = json.loads((hard / "pixel_probe.json").read_text())["families"]
    assert h["presence"]["probe"] + 0.1 <= e["presence"]["probe"]
    assert h["presence"]["probe"] - h["presence"]["majority"] < 0.25


def _lesion_contrast(scene_rec: dict, variant: str) -> list[float]:
    """Mean |with − without lesion| over each lesion's core, rendering the same scene without it."""
    diff = VARIANTS[variant]
    scene = Scene(scene_rec["scene_id"], scene_rec["protocol"], scene_rec["plane"], "2d", 1, diff,
                  [Lesion(**{k: v for k, v in les.items() if k not in ("center_px", "radius_px")})
                   for les in scene_rec["lesions"]], tuple(scene_rec["pose"]))
    with_l = render_scene(scene, 64, np.random.default_rng(0))
    scene.lesions = []
    without = render_scene(scene, 64, np.random.default_rng(0))
    out = []
    rows, cols = np.mgrid[0:64, 0:64]
    for les in scene_rec["lesions"]:
        if les["type"] in ("nodule", "mass", "cyst"):
            r, c, _ = les["center_px"]
            core = (rows - r) ** 2 + (cols - c) ** 2 <= (les["radius_px"] / 2) ** 2
            out.append(float(np.abs(with_l - without)[core].mean()))
    return out


def test_easy_lesions_are_big_and_contrasted(easy: Path, hard: Path) -> None:
    easy_scenes = [s for s in _scenes(easy) if s["kind"] == "2d" and s["lesions"]][:40]
    hard_scenes = [s for s in _scenes(hard) if s["kind"] == "2d" and s["lesions"]][:40]
    for s in easy_scenes:
        assert all(les["radius_px"] >= 5.5 for les in s["lesions"])
    easy_c = [c for s in easy_scenes for c in _lesion_contrast(s, "easy")]
    hard_c = [c for s in hard_scenes for c in _lesion_contrast(s, "hard")]
    assert min(easy_c) >= 0.35 and np.mean(easy_c) >= 0.45
    assert np.mean(hard_c) < 0.3


def test_baselines(easy: Path) -> None:
    b = json.loads((easy / "baselines.json").read_text())
    fams = b["families"]
    for fam in ("modality", "plane", "yesno", "location", "size", "count"):
        assert fams[fam]["closed"] and fams[fam]["majority_answer"] in CHOICES[fam]
        assert 0.0 <= fams[fam]["value"] <= 1.0
    assert any(k.startswith("yesno:") for k in fams)
    for fam in ("report", "rationale"):
        assert fams[fam]["metric"] == "rougeL" and 0.1 < fams[fam]["value"] < 0.9
        assert fams[fam]["constant"]
    assert set(b["tasks"]) == set(TASKS)
    assert b["config"]["variant"] == "easy"


def test_config_knobs() -> None:
    cfg = SynthConfig(variant="hard", contrast=0.5)
    assert cfg.difficulty().contrast == 0.5 and cfg.difficulty().noise == VARIANTS["hard"].noise
    assert SynthConfig().difficulty() == VARIANTS["easy"]
    with pytest.raises(ValueError, match="variant"):
        SynthConfig(variant="medium")
    with pytest.raises(ValueError, match="task_mix"):
        SynthConfig(task_mix={"nonsense": 1.0})


def test_task_mix_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    generate(SynthConfig(n_samples=12, seed=1, task_mix={"modality": 1.0}, frac_3d=0.0), tmp_path / "m")
    rows = read_manifest(tmp_path / "m" / "manifest.jsonl")
    assert len(rows) == 12 and {r.task for r in rows} == {"modality"}
    assert all(r.images[0].kind == "2d" for r in rows)
    assert main(["--out", str(tmp_path / "cli"), "--n", "12", "--seed", "2", "--variant", "hard"]) == 0
    assert (tmp_path / "cli" / "manifest.jsonl").is_file() and "12 images" in capsys.readouterr().out


def test_every_protocol_appears(easy: Path) -> None:
    scenes = _scenes(easy)
    assert {s["protocol"] for s in scenes} == set(PROTOCOLS)
    for s in scenes:
        assert len(s["findings"]) <= 2
        assert len({f["type"] for f in s["findings"]}) == len(s["findings"])
        assert {f["type"] for f in s["findings"]} <= set(PROTOCOLS[s["protocol"]].findings)


def test_redraw_yesno_asks_true_questions_about_the_same_image(easy: Path) -> None:
    """Re-drawn yes/no turns: the answer is right for the finding asked, every finding of the protocol gets
    asked, yes and no stay near balanced; other families and foreign rows are left alone (None)."""
    rows = read_manifest(easy / "manifest.jsonl")
    yesno = [r for r in rows if r.meta["family"] == "yesno"]
    rng = random.Random(0)
    asked: dict[str, set[str]] = defaultdict(set)
    answers = []
    for r in yesno:
        for _ in range(4):
            question, answer = redraw_yesno(r.meta, rng)
            finding = next(t for t in FINDING_TYPES if f" {t}" in question)
            assert answer == ("yes" if finding in r.labels else "no"), (r.id, question)
            protocol = next(p for p in PROTOCOLS.values()
                            if (p.modality, p.body_part) == (r.meta["modality"], r.meta["body_part"]))
            assert finding in protocol.findings
            asked[r.meta["modality"] + r.meta["body_part"]].add(finding)
            answers.append(answer == "yes")
    assert 0.35 <= np.mean(answers) <= 0.65
    for p in PROTOCOLS.values():
        assert asked[p.modality + p.body_part] == set(p.findings)
    other = next(r for r in rows if r.meta["family"] == "diagnosis")
    assert redraw_yesno(other.meta, rng) is None and redraw_yesno(None, rng) is None
    assert redraw_yesno({**yesno[0].meta, "body_part": "knee"}, rng) is None


def test_contrast_yesno_asks_the_same_image_with_the_other_answer(easy: Path) -> None:
    """The twin of a yes row asks about an absent finding of the protocol ("no"), of a no row about a present
    one ("yes"), and is true for the image; None without such a finding or for other rows."""
    rows = read_manifest(easy / "manifest.jsonl")
    yesno = [r for r in rows if r.meta["family"] == "yesno"]
    rng = random.Random(0)
    twins = {"yes": 0, "no": 0}
    for r in yesno:
        protocol = next(p for p in PROTOCOLS.values()
                        if (p.modality, p.body_part) == (r.meta["modality"], r.meta["body_part"]))
        present = {f["type"] for f in r.meta["findings"]}
        twin = contrast_yesno(r.meta, r.answer, rng)
        pool = (set(protocol.findings) - present) if r.answer == "yes" else present
        if not pool:
            assert twin is None, r.id
            continue
        question, answer = twin
        assert answer == ("no" if r.answer == "yes" else "yes")
        finding = next(t for t in FINDING_TYPES if f" {t}" in question)
        assert finding in pool and answer == ("yes" if finding in r.labels else "no"), (r.id, question)
        twins[answer] += 1
    assert twins["yes"] > 0 and twins["no"] > 0
    lesionless = next(r for r in yesno if not r.meta["findings"])
    assert contrast_yesno(lesionless.meta, "no", rng) is None  # nothing present to say yes about
    other = next(r for r in rows if r.meta["family"] == "diagnosis")
    assert contrast_yesno(other.meta, "yes", rng) is None and contrast_yesno(None, "yes", rng) is None
    assert contrast_yesno(yesno[0].meta, "maybe", rng) is None


def test_every_yesno_asks_each_other_finding_of_the_protocol(easy: Path) -> None:
    """Beside the row's own question, one turn per other finding of its protocol, each answer true for the
    image; nothing for other rows."""
    rows = read_manifest(easy / "manifest.jsonl")
    yesno = [r for r in rows if r.meta["family"] == "yesno"]
    rng = random.Random(0)
    answers = []
    for r in yesno:
        protocol = next(p for p in PROTOCOLS.values()
                        if (p.modality, p.body_part) == (r.meta["modality"], r.meta["body_part"]))
        turns = every_yesno(r.meta, rng)
        asked = [next(t for t in FINDING_TYPES if f" {t}" in q) for q, _ in turns]
        assert sorted(asked) == sorted(t for t in protocol.findings if t != r.meta["finding"]), r.id
        for finding, (_, answer) in zip(asked, turns, strict=True):
            assert answer == ("yes" if finding in r.labels else "no"), (r.id, finding)
            answers.append(answer)
    assert {"yes", "no"} <= set(answers)
    other = next(r for r in rows if r.meta["family"] == "diagnosis")
    assert every_yesno(other.meta, rng) == [] and every_yesno(None, rng) == []
