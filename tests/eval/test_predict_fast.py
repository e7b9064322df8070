"""The fast RadBench paths give the old results: images encoded once per sample (not per candidate row), the
ablated system's zero-image features shared per shape, summarise scoring each group once, and the no-cache
greedy loop computing only the last position's logits."""

from __future__ import annotations

import pytest
import torch

from radfm.data.datamodule import RadFMDataset
from radfm.data.manifest import ImageRef, read_manifest
from radfm.data.synth import SynthConfig, generate
from radfm.data.transforms import TransformConfig
from radfm.eval import radbench
from radfm.eval.predict import predict
from radfm.model import factory
from radfm.model.tokenizer import IGNORE_INDEX


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_cfg):
    root = tmp_path_factory.mktemp("predict_fast")
    generate(SynthConfig(n_samples=24, seed=3), root)
    samples = read_manifest(root / "manifest.jsonl")
    tok = factory.build_tokenizer(tiny_cfg, [t for s in samples for t in (s.question, s.answer)])
    torch.manual_seed(0)
    model = factory.build_model(tiny_cfg, tok).eval()
    test = [s for s in samples if s.split == "test"]
    closed = [s for s in test if s.choices]
    # Two images, one of them inside the answer and a 3D scan if there is one: each candidate row then
    # orders the sample's images its own way, and 2D and 3D mix in one batch.
    other = next((s for s in samples if s.is_3d), samples[0])
    multi = closed[0].model_copy(update={"id": "multi", "images": [
        ImageRef(path=other.images[0].path, kind=other.images[0].kind, position={"answer": "end"}),
        closed[0].images[0]]})
    chosen = [*closed[:9], multi, *[s for s in test if not s.choices][:3]]
    ds = RadFMDataset(chosen, str(root), tok, TransformConfig(image_size=64, augment=False), train=False)
    return model, tok, chosen, ds


def reference_scores(model, tok, samples, ds, batch_size, ablate):
    """The former implementation: every candidate row loads and encodes its sample's images again."""
    rows = [(i, c) for i, s in enumerate(samples) if s.choices for c in s.choices]
    scores = {}
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        encs, images = [], []
        for i, cand in chunk:
            enc = tok.format_prompt(samples[i].question, cand, [r.position for r in samples[i].images])
            encs.append(enc)
            imgs = ds.load_images(samples[i])
            imgs = [imgs[k] for k in enc.image_order]
            images += [torch.zeros_like(x) for x in imgs] if ablate else imgs
        batch = tok.pad(encs, side="right")
        with torch.no_grad():
            logits = model(batch["input_ids"], batch["attention_mask"], images or None)["logits"][:, :-1].float()
        target = batch["labels"][:, 1:]
        mask = target != IGNORE_INDEX
        logp = torch.log_softmax(logits, -1).gather(-1, target.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        for key, value in zip(chunk, (logp * mask).sum(-1).tolist()):
            scores[key] = value
    return scores


@pytest.mark.parametrize("ablate", [False, True])
@pytest.mark.parametrize("batch_size", [3, 16])
def test_candidate_scores_match_the_per_row_encoding(setup, monkeypatch, ablate, batch_size):
    model, tok, samples, ds = setup
    ref = reference_scores(model, tok, samples, ds, batch_size, ablate)
    seen, encoded = [], []
    real_logprob, real_encode = model.sequence_logprob, model.encode_images

    def spy_logprob(*args, **kwargs):
        out = real_logprob(*args, **kwargs)
        seen.extend(out.tolist())
        return out

    def spy_encode(images):
        encoded.append(len(images))
        return real_encode(images)

    monkeypatch.setattr(model, "sequence_logprob", spy_logprob)
    monkeypatch.setattr(model, "encode_images", spy_encode)
    preds = predict(model, tok, samples, ds, batch_size=batch_size, max_new_tokens=4, ablate=ablate)
    assert seen == pytest.approx(list(ref.values()), abs=1e-4)
    n_images = sum(len(s.images) for s in samples)
    if ablate:
        assert sum(encoded) == len({tuple(x.shape) for s in samples for x in ds.load_images(s)})
    else:
        assert sum(encoded) == n_images  # once per image, not once per candidate row
    for i, (s, p) in enumerate(zip(samples, preds)):
        if s.choices:
            logits = torch.tensor([ref[(i, c)] for c in s.choices])
            assert p.text == s.choices[int(torch.argmax(logits))]
            assert list(p.probs.values()) == pytest.approx(torch.softmax(logits, 0).tolist(), abs=1e-5)


@pytest.mark.parametrize(("ablate", "beams"), [(False, 1), (True, 1), (False, 3)])
def test_open_answers_match_generation_from_images(setup, ablate, beams):
    """Greedy, and beam search checked against transformers' own (``lean=False``) from the images."""
    model, tok, samples, ds = setup
    open_ = [s for s in samples if not s.choices]
    preds = predict(model, tok, open_, ds, batch_size=8, max_new_tokens=6, ablate=ablate, num_beams=beams)
    encs = [tok.format_prompt(s.question, None, [r.position for r in s.images]) for s in open_]
    images = []
    for s, enc in zip(open_, encs):
        imgs = [ds.load_images(s)[k] for k in enc.image_order]
        images += [torch.zeros_like(x) for x in imgs] if ablate else imgs
    batch = tok.pad(encs, side="left")
    new = model.generate(batch["input_ids"], batch["attention_mask"], images, max_new_tokens=6,
                         eos_token_id=tok.eos_id, pad_token_id=tok.pad_id, num_beams=beams, lean=beams == 1)
    assert [p.text for p in preds] == [tok.decode(row) for row in new.tolist()]


def test_embed_with_features_equals_embed_with_images(setup):
    model, tok, samples, ds = setup
    s = samples[0]
    enc = tok.format_prompt(s.question, s.answer, [r.position for r in s.images])
    ids = torch.tensor([enc.input_ids])
    imgs = [ds.load_images(s)[k] for k in enc.image_order]
    with torch.no_grad():
        a = model.embed(ids, imgs)
        b = model.embed(ids, image_features=model.encode_images(imgs))
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="not both"):
        model.embed(ids, imgs, image_features=model.encode_images(imgs))


def test_greedy_without_cache_keeps_its_tokens(tiny_model, tiny_tokenizer):
    encs = [tiny_tokenizer.format_prompt("Is there a nodule?"), tiny_tokenizer.format_prompt("No.")]
    batch = tiny_tokenizer.pad(encs, side="left")
    m = tiny_model
    embeds = m.embed(batch["input_ids"])
    mask = batch["attention_mask"]
    expected = []
    with torch.no_grad():
        for _ in range(8):  # the former loop: logits for every position, the last one used
            pos = (mask.cumsum(-1) - 1).clamp_min(0)
            last = m.lm(inputs_embeds=embeds, attention_mask=mask, position_ids=pos, use_cache=False).logits[:, -1]
            last[:, m.suppress_ids] = float("-inf")
            nxt = last.argmax(-1)
            expected.append(nxt)
            embeds = torch.cat([embeds, m.lm.get_input_embeddings()(nxt)[:, None]], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    got = m.generate(batch["input_ids"], batch["attention_mask"], max_new_tokens=8, use_cache=False)
    assert torch.equal(got, torch.stack(expected, 1))


def test_summarise_scores_each_group_once_with_the_same_numbers(setup, monkeypatch):
    _, _, samples, _ = setup
    rng = torch.Generator().manual_seed(0)
    systems = {name: [radbench.Prediction(s.answer if torch.rand(1, generator=rng) < 0.5 else "no",
                                          {c: 1.0 / len(s.choices) for c in s.choices or []}) for s in samples]
               for name in ("model", "blind", "ablated")}
    real = radbench.score_group
    calls = []

    def counting(group, preds, embedding=True):
        calls.append((id(preds[0]), tuple(s.id for s in group)))
        return real(group, preds, embedding)

    monkeypatch.setattr(radbench, "score_group", counting)
    got = radbench.summarise(samples, systems, embedding=False)
    assert len(calls) == len(set(calls))
    groups = {(s.task, radbench.family(s), bool(s.choices)) for s in samples}
    assert len(calls) == len(groups) * len(systems)
    for level in ("tasks", "families"):
        for key, entry in got[level].items():
            for name in systems:
                idx = [i for i, s in enumerate(samples)
                       if (s.task if level == "tasks" else f"{s.task}/{radbench.family(s)}") == key]
                fams = {}
                for i in idx:
                    fams.setdefault(radbench.family(samples[i]) + str(bool(samples[i].choices)), []).append(i)
                scored = [real([samples[i] for i in f], [systems[name][i] for i in f], False)
                          for f in fams.values()]
                if len(scored) == 1:
                    expected = scored[0]
                else:
                    n = sum(x["n"] for x in scored)
                    expected = {"n": n, "headline": sum(x["headline"] * x["n"] for x in scored) / n}
                assert entry[name] == pytest.approx(expected, nan_ok=True)
