"""The data describes itself: question families, their kind and choices, bad input, the override file and
apply_profile — on hand-written tables ingested with the real `radfm ingest table` code path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from radfm.data.importers import ingest_table
from radfm.data.manifest import Sample, find_manifest, read_manifest, write_manifest
from radfm.data.profile import (
    ProfileConfig,
    apply_profile,
    build_profile,
    ensure_profile,
    format_profile,
    load_profile,
    profile_manifest,
    profile_path,
)


def _png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (16, 16), dtype=np.uint8)).save(path)


def ingest(tmp_path: Path, rows: list[dict[str, str]], name: str = "cases") -> tuple[Path, dict]:
    """Write ``rows`` as a CSV with a real PNG per row, ingest it, return (manifest, profile)."""
    src = tmp_path / "src"
    cols = sorted({k for r in rows for k in r} | {"id", "image"})
    lines = [",".join(cols)]
    for i, r in enumerate(rows):
        r = {"id": f"c{i:03d}", "image": f"img/{i:03d}.png", **r}
        _png(src / r["image"], i)
        lines.append(",".join(f'"{r.get(c, "")}"' for c in cols))
    (src / f"{name}.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "data"
    ingest_table(src / f"{name}.csv", out)
    manifest = out / "manifest.jsonl"
    assert manifest.is_file() and profile_path(manifest) == out / "manifest.profile.json"
    return manifest, json.loads(profile_path(manifest).read_text())


def fam(profile: dict, name: str) -> dict:
    return next(f for f in profile["families"] if f["name"] == name)


def rows_of(question: str, answers: list[str], split: str = "train", **extra: str) -> list[dict[str, str]]:
    return [{"question": question, "answer": a, "split": split, **extra} for a in answers]


def test_identical_questions_make_a_closed_family_with_sorted_choices(tmp_path):
    rows = (rows_of("What is the modality?", ["CT"] * 5 + ["X-ray"] * 6 + ["MRI"] * 3)
            + rows_of("What is the modality?", ["CT", "X-ray"], "val")
            + rows_of("what is the MODALITY", ["CT", "MRI", "X-ray"], "test"))
    _, profile = ingest(tmp_path, rows)
    assert [f["name"] for f in profile["families"]] == ["what is the modality"]
    f = fam(profile, "what is the modality")
    assert f["kind"] == "closed" and f["choices"] == ["CT", "MRI", "X-ray"]
    assert f["rows"] == {"train": 14, "val": 2, "test": 3} and profile["rows"] == f["rows"]
    assert f["answers"] == {"CT": 5, "MRI": 3, "X-ray": 6} and f["from"] == "question"
    assert f["messages"] == [] and profile["messages"] == []


def test_explicit_family_column_wins_and_brings_its_question_along(tmp_path):
    rows = (rows_of("Which view is this?", ["PA"] * 4 + ["AP"] * 4, family="view")
            + rows_of("Frontal projection?", ["PA"] * 3 + ["AP"] * 3, family="view")
            + rows_of("Which view is this?", ["AP"] * 2))  # no family given: same question → same family
    manifest, profile = ingest(tmp_path, rows)
    assert [f["name"] for f in profile["families"]] == ["view"]
    f = fam(profile, "view")
    assert f["from"] == "family" and f["kind"] == "closed" and f["choices"] == ["AP", "PA"]
    assert f["rows"]["train"] == 16 and set(f["phrasings"]) == {"which view is this", "frontal projection"}
    assert f["members"] == {"families": ["view"], "questions": ["which view is this"]}
    assert all(s.meta["family"] == "view" for s in read_manifest(manifest)[:14])


def test_phrasings_merge_into_one_yes_no_family_but_other_questions_stay_apart(tmp_path):
    yn = ["yes", "no"] * 4
    rows = (rows_of("Is there pneumonia?", yn) + rows_of("Is pneumonia present in this X-ray?", yn)
            + rows_of("Does the chest X-ray show pneumonia?", ["yes", "no"] * 2, "test")
            + rows_of("Is there effusion?", yn)
            + rows_of("Is there pneumonia in the left lung?", yn) + rows_of("Is there pneumonia in the right lung?", yn)
            + rows_of("What is the modality?", ["CT", "X-ray"] * 4)
            + rows_of("What modality is this?", ["CT", "X-ray"] * 2))
    _, profile = ingest(tmp_path, rows)
    names = [f["name"] for f in profile["families"]]
    assert names == ["is there effusion", "is there pneumonia", "is there pneumonia in the left lung",
                     "is there pneumonia in the right lung", "what is the modality"]
    pneu = fam(profile, "is there pneumonia")
    assert pneu["kind"] == "yesno" and pneu["choices"] == ["no", "yes"] and pneu["from"] == "merged"
    assert set(pneu["phrasings"]) == {"is there pneumonia", "is pneumonia present in this x ray",
                                      "does the chest x ray show pneumonia"}
    assert pneu["rows"] == {"train": 16, "val": 0, "test": 4}
    assert fam(profile, "is there effusion")["kind"] == "yesno"
    mod = fam(profile, "what is the modality")
    assert mod["kind"] == "closed" and mod["n_phrasings"] == 2 and mod["choices"] == ["CT", "X-ray"]


def test_free_text_is_open_and_report_like(tmp_path):
    reports = [f"Small opacity number {k} in the right lower lobe, no effusion." for k in range(8)]
    rows = rows_of("Describe the findings.", reports) + rows_of("What is the modality?", ["CT", "X-ray"] * 3)
    _, profile = ingest(tmp_path, rows)
    f = fam(profile, "describe the findings")
    assert f["kind"] == "open" and f["choices"] is None and f["report_like"] is True
    assert f["reason"].startswith("free text") and f["answers"] is None
    assert fam(profile, "what is the modality")["report_like"] is False


# ------------------------------------------------------------------------------------------ bad input


def test_one_answer_is_not_closed_and_says_so(tmp_path):
    rows = rows_of("Is the study adequate?", ["yes"] * 8) + rows_of("What is the modality?", ["CT", "X-ray"] * 3)
    _, profile = ingest(tmp_path, rows)
    f = fam(profile, "is the study adequate")
    assert f["kind"] == "open" and f["choices"] is None and f["reason"] == "one answer"
    assert "one answer ('yes' in 8 of 8 training rows): nothing to choose" in f["messages"][0]


def test_unseen_test_answers_are_named_and_most_unseen_turns_open(tmp_path):
    train = ["normal"] * 5 + ["pneumonia"] * 5
    rows = (rows_of("What is the diagnosis?", train) + rows_of("What is the diagnosis?", ["normal", "effusion"], "test")
            + rows_of("Which lobe?", ["upper"] * 4 + ["lower"] * 4)
            + rows_of("Which lobe?", ["middle"] * 3 + ["upper"], "test"))
    _, profile = ingest(tmp_path, rows)
    dx = fam(profile, "what is the diagnosis")
    assert dx["kind"] == "closed" and dx["choices"] == ["normal", "pneumonia"]
    assert any("1 test row(s) answer what training never did: 'effusion' (1); kept closed" in m
               for m in dx["messages"])
    lobe = fam(profile, "which lobe")
    assert lobe["kind"] == "open" and lobe["choices"] is None
    assert "75% of val/test" in lobe["messages"][-1] and "'middle' (3)" in lobe["messages"][-1]
    assert "left open" in lobe["messages"][-1]


def test_mixed_case_and_punctuation_are_normalised(tmp_path):
    rows = rows_of("Is there a nodule?", ["Yes.", "YES", " yes ", "Yes", "No.", "no", "NO!", "No"])
    manifest, profile = ingest(tmp_path, rows)
    f = fam(profile, "is there a nodule")
    assert f["kind"] == "yesno" and f["choices"] == ["no", "yes"] and f["answers"] == {"no": 4, "yes": 4}
    assert any("6 answer(s) differ from their choice in case or punctuation" in m for m in f["messages"])
    applied = apply_profile(read_manifest(manifest), profile)
    assert {s.answer for s in applied} == {"yes", "no"} and all(s.choices == ["no", "yes"] for s in applied)
    assert applied[1].meta["answer_as_written"] == "YES"
    rows = rows_of("What is the side?", ["left", "Left.", "LEFT", "right", "Right", "right"])
    profile = build_profile([Sample(id=f"s{i}", task="vqa", **r) for i, r in enumerate(rows)])
    assert profile["families"][0]["choices"] == ["left", "right"]  # each in its most frequent written form


def test_empty_question_column_gets_the_default_question_and_a_message(tmp_path):
    rows = [{"answer": a, "split": "train"} for a in ["normal"] * 4 + ["pneumonia"] * 4]
    manifest, profile = ingest(tmp_path, rows)
    samples = read_manifest(manifest)
    assert len(samples) == 8 and all(s.meta["question_missing"] for s in samples)
    [f] = profile["families"]
    assert f["kind"] == "closed" and f["choices"] == ["normal", "pneumonia"]
    assert "8 row(s) had an empty question" in f["messages"][-1]


def test_empty_questions_in_a_hand_written_manifest_are_named_not_fatal(tmp_path):
    good = {"id": "a", "task": "vqa", "split": "train", "question": "Q?", "answer": "yes"}
    lines = [{"__manifest__": {"schema_version": "1.0"}}, good, {**good, "id": "b", "question": "  "}, "not json"]
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    profile = profile_manifest(manifest)
    assert profile["rows"]["train"] == 1
    msg = profile["messages"][0]
    assert msg.startswith("2 row(s) fail the manifest schema") and "question is empty" in msg and "line 4" in msg


def test_a_table_with_only_open_questions_has_no_closed_family_and_says_so(tmp_path):
    rows = rows_of("Write the report.", [f"Finding {k}: a {k} mm nodule in the left upper lobe." for k in range(6)])
    _, profile = ingest(tmp_path, rows)
    assert [f["kind"] for f in profile["families"]] == ["open"]
    assert profile["messages"] == [m for m in profile["messages"] if "no closed or yes/no family" in m] != []
    empty = build_profile([])
    assert empty["families"] == [] and "no rows" in empty["messages"][0]


# ------------------------------------------------------------------------------------------ files, override


def test_override_merges_renames_and_forces_kinds_and_wins(tmp_path):
    rows = (rows_of("Is there pneumonia?", ["yes", "no"] * 3) + rows_of("Lung infection?", ["no", "yes"] * 3)
            + rows_of("Grade?", ["1", "2", "3", "4", "5", "6"]) + rows_of("Is the study adequate?", ["yes"] * 6))
    manifest, written = ingest(tmp_path, rows)
    assert {f["name"] for f in written["families"]} == {"is there pneumonia", "lung infection", "grade",
                                                        "is the study adequate"}
    (manifest.parent / "manifest.profile.override.yaml").write_text(
        "config: {min_count: 1}\n"
        "merge:\n  pneumonia: [is there pneumonia, lung infection]\n"
        "families:\n"
        "  grade: {rename: severity, kind: closed, choices: ['1', '2', '3']}\n"
        "  is the study adequate: {kind: yesno}\n"
        "  nowhere: {kind: open}\n")
    profile = load_profile(manifest)  # the written profile is stale now: recomputed with the override
    assert profile["override"] == "manifest.profile.override.yaml" and profile["config"]["min_count"] == 1
    assert [f["name"] for f in profile["families"]] == ["is the study adequate", "pneumonia", "severity"]
    pneu = fam(profile, "pneumonia")
    assert pneu["kind"] == "yesno" and pneu["rows"]["train"] == 12 and pneu["from"] == "override"
    sev = fam(profile, "severity")
    assert sev["kind"] == "closed" and sev["choices"] == ["1", "2", "3"] and sev["reason"] == "set by the override file"
    assert "3 training row(s) answer outside the choices" in sev["messages"]
    adequate = fam(profile, "is the study adequate")
    assert adequate["kind"] == "yesno" and adequate["choices"] == ["no", "yes"]
    assert any("no family named 'nowhere'" in m for m in profile["messages"])
    samples = apply_profile(read_manifest(manifest), profile)
    assert {s.meta["family"] for s in samples} == {"pneumonia", "severity", "is the study adequate"}
    # ensure_profile rewrites the stale file; a broken override is one clear error naming the file.
    ensure_profile(manifest)
    assert json.loads(profile_path(manifest).read_text()) == profile
    (manifest.parent / "manifest.profile.override.yaml").write_text("families: [unclosed\n")
    with pytest.raises(ValueError, match=r"manifest.profile.override.yaml: not valid YAML"):
        load_profile(manifest)


def test_profile_is_deterministic_and_rewritten_only_when_stale(tmp_path):
    rows = rows_of("What is the modality?", ["CT", "X-ray"] * 4)
    manifest, _ = ingest(tmp_path, rows)
    path = profile_path(manifest)
    first = path.read_bytes()
    path.unlink()
    ensure_profile(manifest)
    assert path.read_bytes() == first  # same manifest, same bytes: the data version does not move
    stamp = path.stat().st_mtime_ns
    ensure_profile(manifest)
    assert path.stat().st_mtime_ns == stamp
    samples = read_manifest(manifest)
    write_manifest(samples[:-1], manifest)
    assert load_profile(manifest)["rows"]["train"] == 7  # stale on disk: recomputed in memory
    assert json.loads(path.read_bytes())["rows"]["train"] == 8
    ensure_profile(manifest)
    assert json.loads(path.read_bytes())["rows"]["train"] == 7
    assert load_profile(tmp_path / "elsewhere" / "manifest.jsonl") is None
    cfg = ProfileConfig(min_count=5)
    assert load_profile(manifest, cfg)["families"][0]["kind"] == "open"  # thresholds changed: recomputed


def test_format_profile_is_a_short_table_with_messages(tmp_path):
    rows = rows_of("Is the study adequate?", ["yes"] * 4) + rows_of("What is the modality?", ["CT", "X-ray"] * 3)
    _, profile = ingest(tmp_path, rows)
    text = format_profile(profile)
    assert text.splitlines()[0] == "question families: 2 families: 1 closed, 0 yes/no, 1 open; 1 message(s)"
    assert "what is the modality                 closed      6     0     0  CT, X-ray" in text
    assert "- is the study adequate: one answer" in text


# ------------------------------------------------------------------------------------------ apply_profile


def test_apply_profile_fills_choices_never_drops_or_rewrites_rows_with_choices():
    def s(i: int, q: str, a: str, split: str = "train", **kw) -> Sample:
        return Sample(id=f"s{i}", task="vqa", split=split, question=q, answer=a, **kw)

    samples = [s(i, "Is there a nodule?", ["yes", "no"][i % 2]) for i in range(8)]
    samples += [s(8, "is there a NODULE", "Yes.", "test"), s(9, "Is there a nodule?", "maybe", "test"),
                s(10, "Is there a nodule?", "no", choices=["no", "yes", "maybe"], meta={"family": "mine"}),
                s(11, "Something never profiled?", "x", "test")]
    profile = build_profile(samples[:10])
    before = [x.model_copy(deep=True) for x in samples]
    out = apply_profile(samples, profile)
    assert [x.id for x in out] == [x.id for x in samples] and samples == before  # nothing dropped or mutated
    assert out[10] is samples[10] and out[11] is samples[11]  # has choices / unknown family: unchanged
    assert all(x.choices == ["no", "yes"] and x.meta["family"] == "is there a nodule" for x in out[:9])
    assert out[8].answer == "yes" and out[8].meta["answer_as_written"] == "Yes."
    assert out[9].choices is None and out[9].meta["family"] == "is there a nodule"  # unseen: no choices
    assert apply_profile(samples, None) == samples


def test_medmd_synth_families_come_from_meta(tmp_path):
    from radfm.data.synth import SynthConfig, generate

    manifest = Path(generate(SynthConfig(n_samples=24, seed=0, variant="easy"), tmp_path / "synth"))
    profile = profile_manifest(manifest)
    kinds = {f["name"]: f["kind"] for f in profile["families"]}
    assert kinds["modality"] == "closed" and kinds["report"] == "open"
    assert all(f["from"] == "family" for f in profile["families"])
    samples = read_manifest(manifest)
    out = apply_profile(samples, profile)
    assert len(out) == len(samples)
    assert all(o == s for o, s in zip(out, samples) if s.choices is not None)


# ------------------------------------------------------------------------------------------ finding a manifest


def test_find_manifest_under_a_data_root(tmp_path):
    root = tmp_path / "d"
    with pytest.raises(FileNotFoundError, match="no manifest in"):
        find_manifest(root)
    (root / "manifests").mkdir(parents=True)
    (root / "manifests" / "a.jsonl").write_text("")
    (root / "manifests" / "a.quarantine.jsonl").write_text("")
    assert find_manifest(root) == root / "manifests" / "a.jsonl"
    (root / "manifests" / "b.parquet").write_text("")
    with pytest.raises(ValueError, match=r"2 manifests \(a.jsonl, b.parquet\)"):
        find_manifest(root)
    (root / "manifest.jsonl").write_text("")
    assert find_manifest(root) == root / "manifest.jsonl"


def test_templated_phrasings_merge_by_topic_and_by_answers_but_subjects_stay_apart(tmp_path):
    """A table made from templates: two yes/no templates over three findings, three modality phrasings with no
    word in common, size questions per finding. Templates of one finding merge (same topic), findings stay apart
    (they fill one slot with different words), modality merges on its answers, and a question never answered in
    training joins nothing on answers alone."""
    yn = ["yes", "no"] * 3
    rows: list[dict[str, str]] = []
    for finding in ("cyst", "mass", "nodule"):
        rows += rows_of(f"Would you report a {finding} in this image?", yn)
        rows += rows_of(f"Is this image positive for a {finding}?", yn)
        rows += rows_of(f"How big is the {finding}?", ["small", "large", "medium"] * 3)
    rows += rows_of("In which region is the nodule?", ["left", "right"], "test")
    rows += rows_of("What is the modality of this medical image?", ["CT", "MRI", "X-ray"] * 3)
    rows += rows_of("Tell me the kind of scan", ["CT", "MRI", "X-ray"] * 2)
    rows += rows_of("Which technique produced this picture?", ["MRI", "CT", "X-ray", "CT"])
    rows += rows_of("Which plane is shown?", ["axial", "coronal", "sagittal"] * 3)
    _, profile = ingest(tmp_path, rows)
    by_name = {f["name"]: f for f in profile["families"]}
    for finding in ("cyst", "mass", "nodule"):
        yes_no = by_name[f"is this image positive for a {finding}"]  # named after its shorter phrasing
        assert yes_no["kind"] == "yesno" and yes_no["from"] == "merged"
        assert set(yes_no["phrasings"]) == {f"would you report a {finding} in this image",
                                            f"is this image positive for a {finding}"}
        assert by_name[f"how big is the {finding}"]["kind"] == "closed"
        assert by_name[f"how big is the {finding}"]["n_phrasings"] == 1
    mod = by_name["what is the modality of this medical image"]
    assert mod["kind"] == "closed" and mod["n_phrasings"] == 3 and mod["choices"] == ["CT", "MRI", "X-ray"]
    assert by_name["which plane is shown"]["n_phrasings"] == 1
    assert by_name["in which region is the nodule"]["rows"] == {"train": 0, "val": 0, "test": 2}
    assert len(by_name) == 3 * 2 + 1 + 1 + 1


def test_template_slots_are_the_words_that_differ():
    from radfm.data.families import template_slots

    slots = template_slots(["would you report a mass in this image", "would you report a cyst in this image",
                            "does the patient have a mass", "does the patient have an effusion",
                            "what is the modality"])
    assert slots == [frozenset({"cyst", "mass"}), frozenset({"effusion", "mass"})]
