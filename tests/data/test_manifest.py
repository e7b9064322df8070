"""Manifest schema, JSONL/Parquet round trips, path containment, prompts — with property tests."""

from __future__ import annotations

import json
import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from radfm.data import prompts
from radfm.data.errors import Quarantine, SampleError
from radfm.data.manifest import (
    SCHEMA_VERSION,
    TASKS,
    Sample,
    read_manifest,
    resolve_image_path,
    write_manifest,
)

words = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FF), min_size=1, max_size=40).filter(
    lambda s: s.strip())
rel_paths = st.lists(st.from_regex(r"[a-z0-9_]{1,8}", fullmatch=True), min_size=1, max_size=3).map(
    lambda parts: "/".join(parts) + ".png")
samples = st.builds(
    lambda i, task, split, q, a, paths, labels: Sample(
        id=f"s{i}", task=task, split=split, question=q, answer=a,
        images=[{"path": p, "kind": "2d", "position": "start"} for p in paths], labels=labels or None),
    st.integers(0, 10**6), st.sampled_from(TASKS), st.sampled_from(["train", "val", "test"]), words, words,
    st.lists(rel_paths, max_size=3), st.lists(words, max_size=3))


@settings(max_examples=40, deadline=None)
@given(st.lists(samples, min_size=1, max_size=5, unique_by=lambda s: s.id))
def test_round_trip_jsonl_and_parquet(tmp_path_factory, rows):
    d = tmp_path_factory.mktemp("m")
    for name in ("m.jsonl", "m.parquet"):
        write_manifest(rows, d / name)
        assert read_manifest(d / name) == rows


def test_jsonl_carries_schema_version(tmp_path):
    s = Sample(id="a", task="vqa", split="train", question="Q?", answer="A")
    write_manifest([s], tmp_path / "m.jsonl")
    header = json.loads((tmp_path / "m.jsonl").read_text().splitlines()[0])
    assert header["__manifest__"]["schema_version"] == SCHEMA_VERSION
    (tmp_path / "new.jsonl").write_text(json.dumps({"__manifest__": {"schema_version": "9.0"}}) + "\n")
    with pytest.raises(ValueError, match="schema version 9.0"):
        read_manifest(tmp_path / "new.jsonl")


@pytest.mark.parametrize("path", ["../x.png", "a/../../x.png", "/etc/passwd", "C:/x.png", "http://x/y.png", ""])
def test_escaping_or_absolute_paths_are_rejected(path):
    with pytest.raises(ValueError):
        Sample(id="a", task="vqa", split="train", question="Q?", answer="A",
               images=[{"path": path, "kind": "2d"}])


def test_symlink_out_of_the_root_is_rejected(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"x")
    os.symlink(outside, root / "link")
    with pytest.raises(ValueError, match="outside the data root"):
        resolve_image_path(root, "link/secret.png")
    (root / "ok.png").write_bytes(b"x")
    assert resolve_image_path(root, "ok.png") == str((root / "ok.png").resolve())
    assert resolve_image_path("s3://bucket/data", "a/b.png") == "s3://bucket/data/a/b.png"


@given(st.dictionaries(st.sampled_from(["id", "task", "split", "question", "answer", "images", "extra"]),
                       st.one_of(st.none(), st.integers(), words, st.lists(words, max_size=2)), max_size=7))
@settings(max_examples=80, deadline=None)
def test_invalid_rows_raise_sample_errors_never_crash(row):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.jsonl"
        path.write_text(json.dumps(row) + "\n")
        try:
            out = read_manifest(path)
        except SampleError as err:
            assert "line 1" in str(err)
        else:
            assert len(out) == 1
        q = Quarantine()
        kept = read_manifest(path, on_error="quarantine", quarantine=q)
        assert len(kept) + len(q) == 1


def test_bad_rows_name_the_sample_and_reason(tmp_path):
    good = Sample(id="ok", task="vqa", split="train", question="Q?", answer="A").model_dump_json()
    bad = json.dumps({"id": "bad1", "task": "vqa", "split": "train", "question": "Q?", "answer": "",
                      "images": [{"path": "img/a.png", "kind": "2d"}]})
    (tmp_path / "m.jsonl").write_text("\n".join([good, bad, "{not json", good]) + "\n")
    with pytest.raises(SampleError, match=r"sample bad1: file img/a.png: .*answer is empty"):
        read_manifest(tmp_path / "m.jsonl")
    q = Quarantine()
    kept = read_manifest(tmp_path / "m.jsonl", on_error="quarantine", quarantine=q)
    assert [s.id for s in kept] == ["ok"]
    reasons = [r.reason for r in q.items]
    assert len(q) == 3 and any("duplicate" in r for r in reasons) and any("JSON" in r for r in reasons)
    with pytest.raises(ValueError, match="needs a Quarantine"):
        read_manifest(tmp_path / "m.jsonl", on_error="quarantine")


def test_closed_answer_must_be_a_choice():
    with pytest.raises(ValueError, match="closed choices"):
        Sample(id="a", task="diagnosis", split="train", question="Q?", answer="maybe", choices=["yes", "no"])


def test_templates_per_task_family():
    for family in ("modality", "diagnosis", "report", "rationale", "yesno", "plane", "location"):
        assert len(prompts.TEMPLATES[family]) >= 10
    assert prompts.render("yesno", None, finding="a nodule") == "Is there a nodule in this image?"
    rng = random.Random(0)
    drawn = {prompts.render("report", rng) for _ in range(50)}
    assert len(drawn) > 5
    with pytest.raises(ValueError, match="needs slot"):
        prompts.render("yesno", None)
    meta = {"template": "yesno", "slots": {"finding": "an effusion"}}
    assert "an effusion" in prompts.training_question("Is there an effusion?", meta, random.Random(1))
    assert prompts.training_question("Free text?", None, random.Random(1)) == "Free text?"
    positions = {prompts.image_position(random.Random(i)) for i in range(20)}
    assert positions == {"start", "end"}
    assert prompts.image_position(None, 5) == 5
