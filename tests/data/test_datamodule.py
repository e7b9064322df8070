"""The datamodule on MedMD-synth: homogeneous batches, labels, determinism, workers, quarantine."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from radfm.data.cache import TensorCache
from radfm.data.config import DataConfig
from radfm.data.datamodule import RadFMDataModule
from radfm.data.errors import SampleError
from radfm.data.manifest import read_manifest
from radfm.data.synth import SynthConfig, generate
from radfm.data.synth_turns import YesNoTurns
from radfm.data.transforms import TransformConfig
from radfm.model import factory
from radfm.model.tokenizer import IGNORE_INDEX


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate(SynthConfig(n_samples=40, seed=3), root)
    return root


@pytest.fixture(scope="module")
def tokenizer(synth_root, tiny_cfg):
    samples = read_manifest(synth_root / "manifest.jsonl")
    return factory.build_tokenizer(tiny_cfg, [t for s in samples for t in (s.question, s.answer)])


def make_dm(root, tokenizer, tmp_path, **kw):
    cfg = DataConfig(manifest=str(root / "manifest.jsonl"), root=str(root), batch_size_2d=6,
                     batch_size_3d=3, seed=kw.pop("seed", 0), transform=TransformConfig(image_size=64), **kw)
    dm = RadFMDataModule(cfg, tokenizer, cache=TensorCache(tmp_path / "cache"),
                         quarantine_path=tmp_path / "quarantine.jsonl")
    dm.setup()
    return dm


def test_batches_are_homogeneous_and_well_formed(synth_root, tokenizer, tmp_path, tiny_model_for):
    dm = make_dm(synth_root, tokenizer, tmp_path)
    model = tiny_model_for(tokenizer)
    n_batches = 0
    for batch in dm.train_dataloader():
        depths = {img.shape[-1] for img in batch["images"]}
        is_3d = {d > 1 for d in depths}
        assert len(is_3d) == 1, "a batch mixes 2D and 3D"
        assert len(batch["ids"]) <= (3 if is_3d.pop() else 6)
        ids, labels = batch["input_ids"], batch["labels"]
        assert int((ids == tokenizer.image_patch_id).sum()) == 32 * len(batch["images"])
        assert (labels[ids == tokenizer.image_patch_id] == IGNORE_INDEX).all()
        assert all(img.shape[:3] == (3, 64, 64) for img in batch["images"])
        if n_batches == 0:
            out = model(batch["input_ids"], batch["attention_mask"], batch["images"], batch["labels"])
            assert torch.isfinite(out["loss"])
        n_batches += 1
    assert n_batches == len(dm.train_dataloader())
    assert len(dm.val_dataloader()) > 0 and len(dm.test_dataloader()) > 0


def test_deterministic_by_seed_and_epoch(synth_root, tokenizer, tmp_path):
    a = next(iter(make_dm(synth_root, tokenizer, tmp_path / "a").train_dataloader()))
    b = next(iter(make_dm(synth_root, tokenizer, tmp_path / "b").train_dataloader()))
    assert a["ids"] == b["ids"] and torch.equal(a["input_ids"], b["input_ids"])
    assert all(torch.equal(x, y) for x, y in zip(a["images"], b["images"]))
    dm = make_dm(synth_root, tokenizer, tmp_path / "c")
    loader = dm.train_dataloader()
    loader.batch_sampler.set_epoch(1)
    assert next(iter(loader))["ids"] != a["ids"]


def test_worker_processes_give_the_same_batches(synth_root, tokenizer, tmp_path):
    serial = [b["ids"] for b in make_dm(synth_root, tokenizer, tmp_path / "s").val_dataloader()]
    workers = make_dm(synth_root, tokenizer, tmp_path / "w", num_workers=2)
    assert [b["ids"] for b in workers.val_dataloader()] == serial


def _corrupt_copy(src, dst):
    shutil.copytree(src, dst)
    lines = (dst / "manifest.jsonl").read_text().splitlines()
    rows = [json.loads(x) for x in lines[1:]]
    victim = rows[0]["images"][0]["path"]
    (dst / victim).write_bytes(b"not an image at all")
    bad_row = dict(rows[1], id="bad-row", task="surgery")
    (dst / "manifest.jsonl").write_text("\n".join([*lines, json.dumps(bad_row)]) + "\n")
    n_victims = sum(r["images"][0]["path"] == victim for r in rows)
    return len(rows) + 1, n_victims, victim


def test_quarantine_keeps_counts(synth_root, tokenizer, tmp_path):
    n_rows, n_victims, victim = _corrupt_copy(synth_root, tmp_path / "data")
    dm = make_dm(tmp_path / "data", tokenizer, tmp_path, on_error="quarantine")
    kept = sum(len(v) for v in dm.splits.values())
    assert kept + len(dm.quarantine) == n_rows
    assert len(dm.quarantine) == n_victims + 1
    report = [json.loads(x) for x in (tmp_path / "quarantine.jsonl").read_text().splitlines()]
    assert any(r["sample_id"] == "bad-row" and "task" in r["reason"] for r in report)
    assert any(victim.split("/")[-1] in (r["file"] or "") for r in report)


def test_raise_names_sample_file_and_reason(synth_root, tokenizer, tmp_path):
    _corrupt_copy(synth_root, tmp_path / "data")
    with pytest.raises(SampleError) as info:
        make_dm(tmp_path / "data", tokenizer, tmp_path, on_error="raise")
    assert info.value.sample_id and info.value.reason


@pytest.mark.parametrize("layout", ["shared", "inline"])
def test_packed_questions_cover_every_train_row_once(synth_root, tokenizer, tmp_path, tiny_model_for, layout):
    """pack_questions: items holding the questions about one image; no row dropped or repeated; the loader
    carries segment_ids (and, inline, image_blocks) and the model trains on them; val/test stay one row each."""
    from radfm.data.packing import PACKED_TASK, pack_samples

    dm = make_dm(synth_root, tokenizer, tmp_path, pack_questions=True, max_length=512, pack_layout=layout)
    train = dm.splits["train"]
    packs = pack_samples(train, tokenizer, 512, layout)
    assert sorted(i for p in packs for i in p) == list(range(len(train)))
    for p in packs:
        assert len({tuple(ref.path for ref in train[i].images) for i in p}) == 1
    n_image_sets = len({tuple(ref.path for ref in s.images) for s in train})
    if layout == "shared":
        assert len(packs) == n_image_sets  # all of an image's questions fit in 512 tokens
    else:
        assert len(packs) >= n_image_sets
        # Every inline turn repeats its image block, so a budget fits fewer turns than the shared layout.
        assert len(pack_samples(train, tokenizer, 300, "inline")) > len(pack_samples(train, tokenizer, 300, "shared"))
    # A tight budget cuts an image's questions into several packs, still covering every row once.
    tight = pack_samples(train, tokenizer, 160, layout)
    assert len(tight) > len(packs) and sorted(i for p in tight for i in p) == list(range(len(train)))
    loader = dm.train_dataloader()
    assert len(loader.dataset) == len(packs)
    model = tiny_model_for(tokenizer)
    n_answers = 0
    for k, batch in enumerate(loader):
        seg = batch["segment_ids"]
        assert set(batch["tasks"]) == {PACKED_TASK} and seg.shape == batch["input_ids"].shape
        assert ((seg == -1) == (batch["attention_mask"] == 0)).all()
        blocks = batch["image_blocks"]
        assert len(batch["images"]) == len(batch["ids"])  # one image per MedMD-synth row, loaded once
        assert int((batch["input_ids"] == tokenizer.image_patch_id).sum()) == 32 * len(blocks)
        n_answers += int((batch["input_ids"] == tokenizer.eos_id).logical_and(seg > 0).sum())
        if layout == "inline":
            assert len(blocks) == int((batch["input_ids"] == tokenizer.eos_id).logical_and(seg > 0).sum())
        if k == 0:
            feats = model.encode_images(batch["images"])[blocks]
            out = model(batch["input_ids"], batch["attention_mask"], labels=batch["labels"],
                        image_features=feats, segment_ids=seg)
            assert torch.isfinite(out["loss"])
    assert n_answers == len(train)  # every turn ends in its own EOS
    assert "segment_ids" not in next(iter(dm.val_dataloader()))


def test_redraw_yesno_changes_the_trained_question_not_the_manifest(synth_root, tokenizer, tmp_path):
    """YesNoTurns(redraw=True): a packed training item's yes/no turn asks about a re-drawn finding (so across epochs
    the same image is asked about several), with the answer that is true for it; off, the finding is always
    the manifest's; evaluation items are never re-drawn."""
    from radfm.data.synth import ARTICLE

    def yesno_turns(dm, epochs):
        """(row, finding asked, answer) of every yes/no turn of every training pack, per epoch."""
        ds = dm.train_dataloader().dataset
        for epoch in range(epochs):
            for i, pack in enumerate(ds.packs):
                k = next((k for k, j in enumerate(pack) if ds.samples[j].meta["family"] == "yesno"), None)
                if k is None:
                    continue
                enc = ds[(i, epoch)]["encoded"]
                tokens = list(zip(enc.input_ids, enc.labels, enc.segments, strict=True))
                text = tokenizer.decode([t for t, _, seg in tokens if seg == k + 1])
                answer = tokenizer.decode([t for t, lab, seg in tokens if seg == k + 1 and lab != IGNORE_INDEX])
                asked = [f for f, phrase in ARTICLE.items() if f" {phrase} " in f" {text} " or phrase + "?" in text]
                assert len(asked) == 1, text
                yield ds.samples[pack[k]], asked[0], answer

    on = make_dm(synth_root, tokenizer, tmp_path / "on", pack_questions=True, max_length=512,
                 turns=YesNoTurns(redraw=True))
    off = make_dm(synth_root, tokenizer, tmp_path / "off", pack_questions=True, max_length=512)
    asked_on, asked_off = set(), set()
    for dm, asked in ((on, asked_on), (off, asked_off)):
        for row, finding, answer in yesno_turns(dm, 4):
            assert answer.strip().split()[0] == ("yes" if finding in row.labels else "no"), (row.id, finding, answer)
            asked.add((row.id, finding))
    assert asked_off == {(r.id, r.meta["finding"]) for r in off.splits["train"] if r.meta["family"] == "yesno"}
    assert len(asked_on) > len(asked_off)  # several findings per image over four epochs
    val = on.val_dataloader().dataset
    row = next(i for i, r in enumerate(val.samples) if r.meta["family"] == "yesno")
    assert tokenizer.decode(val[row]["encoded"].input_ids).count(val.samples[row].question) == 1


@pytest.mark.parametrize("mode", ["twin", "all"])
def test_yesno_extra_packs_turns_about_the_same_image(synth_root, tokenizer, tmp_path, mode):
    """YesNoTurns(extra=mode): in a training pack each yes/no turn is followed by extra turns about the same image, each
    answer true for the image — "twin": one with the other answer (when the protocol has such a finding);
    "all": one per other finding of the protocol. The rows' own turns are as without the option; evaluation
    items are untouched; without packing the option is refused."""
    from radfm.data.synth import ARTICLE, PROTOCOLS

    def turns(ds, i):
        """(text, first answer word) of each turn of training pack i, epoch 0."""
        enc = ds[(i, 0)]["encoded"]
        tokens = list(zip(enc.input_ids, enc.labels, enc.segments, strict=True))
        n = max(seg for _, _, seg in tokens)
        return [(tokenizer.decode([t for t, _, seg in tokens if seg == k]),
                 tokenizer.decode([t for t, lab, seg in tokens if seg == k and lab != IGNORE_INDEX]).split()[0])
                for k in range(1, n + 1)]

    on = make_dm(synth_root, tokenizer, tmp_path / "on", pack_questions=True, max_length=1024,
                 turns=YesNoTurns(extra=mode))
    off = make_dm(synth_root, tokenizer, tmp_path / "off", pack_questions=True, max_length=1024)
    ds = on.train_dataloader().dataset
    ds_off = off._dataset(off.splits["train"], True, ds.packs)  # the same packs, no extra turns
    extra = {"yes": 0, "no": 0}
    for i, pack in enumerate(ds.packs):
        got, plain = turns(ds, i), turns(ds_off, i)
        k = 0
        for j, row in enumerate(ds.samples[p] for p in pack):
            assert got[k] == plain[j]  # the row's own turn, as drawn without the option
            k += 1
            if row.meta["family"] != "yesno":
                continue
            spec = next(p for p in PROTOCOLS.values()
                        if (p.modality, p.body_part) == (row.meta["modality"], row.meta["body_part"]))
            present = {f["type"] for f in row.meta["findings"]}
            if mode == "twin":
                want = 1 if (set(spec.findings) - present if row.answer == "yes" else present) else 0
            else:
                want = len(spec.findings) - 1
            asked = []
            for text, answer in got[k:k + want]:
                found = [f for f, phrase in ARTICLE.items() if phrase + "?" in text or f" {phrase} " in text]
                assert len(found) == 1, text
                assert answer == ("yes" if found[0] in present else "no"), (row.id, text)
                assert mode == "all" or answer != row.answer
                asked.append(found[0])
                extra[answer] += 1
            if mode == "all":
                assert sorted(asked) == sorted(t for t in spec.findings if t != row.meta["finding"])
            k += want
        assert k == len(got)
    assert extra["yes"] > 0 and extra["no"] > 0
    val = on.val_dataloader().dataset
    row = next(i for i, r in enumerate(val.samples) if r.meta["family"] == "yesno")
    assert tokenizer.decode(val[row]["encoded"].input_ids).count("?") == val.samples[row].question.count("?")
    with pytest.raises(ValueError, match="pack_questions"):
        DataConfig(manifest="m.jsonl", root=".", turns=YesNoTurns(extra=mode))


def test_yesno_extra_turns_get_room_in_the_packs(synth_root, tokenizer, tmp_path):
    """At a tight max_length the packs keep room for the extra turns, so (nearly) all of them go in; one that
    still does not fit is left out, and every manifest row keeps its turn."""
    from radfm.data.synth_turns import extra_yesno_count

    dm = make_dm(synth_root, tokenizer, tmp_path / "fit", pack_questions=True, max_length=160,
                 turns=YesNoTurns(extra="all"))
    ds = dm.train_dataloader().dataset
    wanted = fitted = 0
    for i, pack in enumerate(ds.packs):
        enc = ds[(i, 0)]["encoded"]
        assert len(enc.input_ids) <= 160
        assert max(enc.segments) >= len(pack)
        wanted += sum(extra_yesno_count(ds.samples[j].meta, ds.samples[j].answer, "all") for j in pack)
        fitted += max(enc.segments) - len(pack)
    assert wanted > 0 and fitted >= 0.95 * wanted
    plain = make_dm(synth_root, tokenizer, tmp_path / "plain", pack_questions=True, max_length=160)
    assert len(plain.train_dataloader().dataset.packs) < len(ds.packs)  # the room costs packs
    with pytest.raises(ValueError, match=r"data\.turns\.extra 'both' is not one of"):
        YesNoTurns(extra="both")


@pytest.mark.parametrize("packed", [False, True])
def test_warmup_loader_gives_the_training_batches_without_text(synth_root, tokenizer, tmp_path, packed):
    """The vision warm-up's loader skips tokenizing but serves the training batches' images exactly: the same
    rows, the same augmentation (the text's random draws are still made first), the same label names."""
    kw = {"pack_questions": True, "turns": YesNoTurns(extra="all"), "label_source": "scene"} if packed else {}
    dm = make_dm(synth_root, tokenizer, tmp_path, **kw)
    full, bare = dm.train_dataloader(), dm.warmup_dataloader()
    for epoch in (0, 2):
        full.batch_sampler.set_epoch(epoch)
        bare.batch_sampler.set_epoch(epoch)
        pairs = list(zip(full, bare, strict=True))
        assert len(pairs) == len(full)
        for a, b in pairs:
            assert "input_ids" not in b and "labels" not in b
            assert (b["ids"], b["n_images"], b["label_names"]) == (a["ids"], a["n_images"], a["label_names"])
            assert len(a["images"]) == len(b["images"])
            assert all(torch.equal(x, y) for x, y in zip(a["images"], b["images"]))
    # An item's augmentation differs between epochs: the equal images above are one random draw, not a constant.
    ds = full.dataset
    assert not torch.equal(ds[(0, 0)]["images"][0], ds[(0, 1)]["images"][0])
