"""The composed model: shapes, interleaving, labels, gradients, generation, checkpoints, bad input."""

from __future__ import annotations

import pytest
import torch

from radfm.model import factory, presets
from radfm.model.checkpoint import load_pretrained, save_pretrained
from radfm.model.tokenizer import IGNORE_INDEX

S = 64  # tiny preset image size


def img2d() -> torch.Tensor:
    return torch.randn(3, S, S, 1)


def img3d(depth: int = 8) -> torch.Tensor:
    return torch.randn(3, S, S, depth)


def batch(tok, specs, side="right"):
    samples = [tok.format_prompt(q, a, pos) for q, a, pos in specs]
    return tok.pad(samples, side=side), samples


def test_shapes_2d_3d_and_mixed(tiny_model, tiny_tokenizer):
    tok = tiny_tokenizer
    b, _ = batch(tok, [("What modality is this?", "CT.", ["start"]), ("And this one?", "MRI.", ["end"])])
    vocab = tiny_model.lm.get_input_embeddings().weight.shape[0]
    for images in (torch.randn(2, 3, S, S, 1), torch.randn(2, 3, S, S, 16), [img2d(), img3d(8)]):
        out = tiny_model(**b, images=images)
        assert out["logits"].shape == (2, b["input_ids"].shape[1], vocab)
        assert torch.isfinite(out["loss"])
    feats = tiny_model.encode_images(torch.randn(3, 3, S, S, 8))
    assert feats.shape == (3, 32, tiny_model.cfg.lm.hidden_size)


def test_several_images_any_position(tiny_model, tiny_tokenizer):
    tok = tiny_tokenizer
    q = "Compare the prior scan with the current scan."
    enc = tok.format_prompt(q, "The nodule grew.", ["end", "start", 8, {"answer": 4}])
    ids = enc.input_ids
    starts = [i for i, t in enumerate(ids) if t == tok.image_start_id]
    assert len(starts) == 4
    # appearance order: question start (image 1), char 8 (image 2), question end (image 0), answer (image 3)
    assert enc.image_order == [1, 2, 0, 3]
    for s in starts:
        assert ids[s + 1 : s + 33] == [tok.image_patch_id] * 32 and ids[s + 33] == tok.image_end_id
    assert tok.decode(ids) == q + " The nodule grew."
    b = tok.pad([enc])
    images = [img2d(), img3d(), img2d(), img3d(4)]
    ordered = [images[i] for i in enc.image_order]
    out = tiny_model(**b, images=ordered)
    assert torch.isfinite(out["loss"])
    # the order of the images matters: features land where their own block stands
    swapped = tiny_model(**b, images=[ordered[1], ordered[0], *ordered[2:]])
    assert not torch.allclose(out["logits"], swapped["logits"])


def test_labels_mask_question_padding_and_images(tiny_tokenizer):
    tok = tiny_tokenizer
    short = tok.format_prompt("Is there a nodule?", "No.", ["start"])
    long = tok.format_prompt("Is there a nodule in the left lung?", "Yes, a left nodule.", [{"answer": 0}])
    b = tok.pad([short, long])
    ids, labels, mask = b["input_ids"], b["labels"], b["attention_mask"]
    image_ids = torch.tensor(tok.image_token_ids)
    assert (labels[torch.isin(ids, image_ids)] == IGNORE_INDEX).all()
    assert (labels[mask == 0] == IGNORE_INDEX).all()
    for row, enc in enumerate([short, long]):
        supervised = [t for t, lab in zip(ids[row].tolist(), labels[row].tolist()) if lab != IGNORE_INDEX]
        answer = "No." if row == 0 else "Yes, a left nodule."
        assert tok.decode(supervised) == answer
        assert supervised[-1] == tok.eos_id
        assert all(lab == IGNORE_INDEX for lab in enc.labels[: enc.prompt_length])


def test_gradients_reach_every_part(tiny_model, tiny_tokenizer):
    tiny_model.train()
    b, _ = batch(tiny_tokenizer, [("Is there a nodule?", "Yes.", ["start"])])
    tiny_model(**b, images=torch.randn(1, 3, S, S, 8))["loss"].backward()
    for part in (tiny_model.vision.encoder.patch_proj, tiny_model.vision.encoder.blocks[0].attn.to_qkv,
                 tiny_model.vision.resampler.attn_layers[0].to_q, tiny_model.vision.projection,
                 tiny_model.lm.model.layers[0].self_attn.q_proj):
        assert part.weight.grad is not None and part.weight.grad.abs().sum() > 0
    assert tiny_model.vision.resampler.latents.grad.abs().sum() > 0


def test_loss_weights_change_the_loss(tiny_model, tiny_tokenizer):
    b, _ = batch(tiny_tokenizer, [("Is there a nodule?", "Yes, a left nodule.", ["start"])])
    images = torch.randn(1, 3, S, S, 4)
    plain = tiny_model(**b, images=images)["loss"]
    ones = tiny_model(**b, images=images, loss_weights=torch.ones_like(b["labels"], dtype=torch.float))["loss"]
    assert torch.allclose(plain, ones)
    w = torch.ones_like(b["labels"], dtype=torch.float)
    w[0, -3] = 3.0
    assert not torch.allclose(plain, tiny_model(**b, images=images, loss_weights=w)["loss"])


def reference_greedy(model, ids, mask, images, steps, eos, suppress):
    """Step-by-step argmax decode with no KV cache: the whole sequence is re-run every step."""
    embeds = model.embed(ids, images)
    mask = mask.clone()
    out = []
    finished = torch.zeros(ids.shape[0], dtype=torch.bool)
    for _ in range(steps):
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        logits = model.lm(inputs_embeds=embeds, attention_mask=mask, position_ids=pos, use_cache=False).logits
        last = logits[:, -1].clone()
        last[:, suppress] = float("-inf")
        nxt = last.argmax(-1)
        nxt = torch.where(finished, torch.full_like(nxt, eos), nxt)
        out.append(nxt)
        finished |= nxt == eos
        embeds = torch.cat([embeds, model.lm.get_input_embeddings()(nxt)[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        if finished.all():
            break
    return torch.stack(out, dim=1)


def test_greedy_generation_is_deterministic_and_matches_argmax(tiny_model, tiny_tokenizer):
    tok = tiny_tokenizer
    b, _ = batch(tok, [("Is there a nodule?", None, ["start"]),
                       ("Describe the findings of this scan in detail.", None, ["end"])], side="left")
    images = torch.randn(2, 3, S, S, 8)
    kw = dict(max_new_tokens=12, eos_token_id=tok.eos_id, pad_token_id=tok.eos_id)
    a = tiny_model.generate(b["input_ids"], b["attention_mask"], images, **kw)
    again = tiny_model.generate(b["input_ids"], b["attention_mask"], images, **kw)
    no_cache = tiny_model.generate(b["input_ids"], b["attention_mask"], images, use_cache=False, **kw)
    assert torch.equal(a, again) and torch.equal(a, no_cache)
    ref = reference_greedy(tiny_model, b["input_ids"], b["attention_mask"], images, 12, tok.eos_id,
                           tiny_model.suppress_ids)
    assert torch.equal(a[:, : ref.shape[1]], ref)
    assert not torch.isin(a, torch.tensor(tok.image_token_ids)).any()


def test_sampling_differs_by_seed(tiny_model, tiny_tokenizer):
    b, _ = batch(tiny_tokenizer, [("Is there a nodule?", None, ["start"])], side="left")
    images = torch.randn(1, 3, S, S, 4)
    outs = []
    for seed in (1, 2, 1):
        torch.manual_seed(seed)
        outs.append(tiny_model.generate(b["input_ids"], b["attention_mask"], images, max_new_tokens=16,
                                        do_sample=True, temperature=1.5, eos_token_id=None,
                                        pad_token_id=tiny_tokenizer.pad_id))
    assert torch.equal(outs[0], outs[2]) and not torch.equal(outs[0], outs[1])


def test_save_load_round_trip(tmp_path, tiny_model, tiny_tokenizer):
    b, _ = batch(tiny_tokenizer, [("Is there a nodule?", "Yes.", ["start"])])
    images = torch.randn(1, 3, S, S, 8)
    save_pretrained(tiny_model, tiny_tokenizer, tmp_path / "ckpt")
    model2, tok2 = load_pretrained(tmp_path / "ckpt")
    assert len(tok2) == len(tiny_tokenizer) and tok2.image_patch_id == tiny_tokenizer.image_patch_id
    with torch.no_grad():
        assert torch.equal(tiny_model(**b, images=images)["logits"], model2(**b, images=images)["logits"])


def test_vocabulary_mismatch_is_a_clear_error(tmp_path, tiny_model, tiny_tokenizer):
    from radfm.model.tokenizer import RadFMTokenizer

    save_pretrained(tiny_model, tiny_tokenizer, tmp_path / "ckpt")
    big = RadFMTokenizer.train_bpe(["a much larger vocabulary " * 50, *map(str, range(9000))], 8000)
    big.save(tmp_path / "ckpt" / "tokenizer")
    with pytest.raises(ValueError, match="vocabulary mismatch"):
        load_pretrained(tmp_path / "ckpt")


def test_base_preset_on_meta():
    model = factory.build_on_meta(presets.base())
    counts = factory.count_parameters(model)
    print(f"base preset: {factory.format_counts(counts)}")
    assert 13e9 <= counts["total"] <= 14e9
    assert model.lm.model.embed_tokens.weight.shape == (32003, 5120)
    assert len(model.lm.model.layers) == 40
    assert model.vision.encoder.pos_embedding.dep_embed.weight.shape == (128, 256)
    assert model.vision.projection.weight.shape == (5120, 768)
    assert next(model.parameters()).device.type == "meta"


@pytest.mark.parametrize("name", ["tiny", "small", "ref-tiny", "ref-small"])
def test_presets_build_on_meta(name):
    counts = factory.count_parameters(factory.build_on_meta(presets.preset(name)))
    if name == "tiny":
        assert 5e6 <= counts["total"] <= 15e6
    if name == "small":
        assert 70e6 <= counts["total"] <= 150e6


def test_freeze_policies(tiny_model):
    all_ = factory.freeze(tiny_model, "none")
    vision = factory.freeze(tiny_model, "vision")
    assert vision["trainable"] == all_["total"] - all_["vision"]
    lm = factory.freeze(tiny_model, "lm")
    assert lm["trainable"] == all_["total"] - all_["lm"]
    adapter = factory.freeze(tiny_model, "adapter_only")
    assert adapter["trainable"] == all_["resampler"]
    with pytest.raises(ValueError, match="unknown freeze policy"):
        factory.freeze(tiny_model, "everything")


def test_bad_inputs_raise_clear_errors(tiny_model, tiny_tokenizer):
    b, _ = batch(tiny_tokenizer, [("Is there a nodule?", "Yes.", ["start"])])
    with pytest.raises(ValueError, match="rank 5"):
        tiny_model(**b, images=torch.randn(1, 3, S, S))
    with pytest.raises(ValueError, match="too many slices"):
        tiny_model(**b, images=torch.randn(1, 3, S, S, 128))
    with pytest.raises(ValueError, match="too many pixels"):
        tiny_model(**b, images=torch.randn(1, 3, 128, 128, 4))
    with pytest.raises(ValueError, match=r"1 image placeholder blocks .* but 0 images"):
        tiny_model(**b)
    with pytest.raises(ValueError, match=r"1 image placeholder blocks .* but 2 images"):
        tiny_model(**b, images=torch.randn(2, 3, S, S, 4))
    with pytest.raises(ValueError, match="multiple of the patch size"):
        tiny_model(**b, images=torch.randn(1, 3, 60, 60, 4))
    with pytest.raises(ValueError, match="channels"):
        tiny_model(**b, images=torch.randn(1, 1, S, S, 4))


def test_padding_side_for_generation_is_checked(tiny_model, tiny_tokenizer):
    b, _ = batch(tiny_tokenizer, [("Is there?", None, ["start"]), ("Is there a nodule here?", None, ["start"])])
    with pytest.raises(ValueError, match="left padding"):
        tiny_model.generate(b["input_ids"], b["attention_mask"], torch.randn(2, 3, S, S, 4))


def test_resampler_output_depends_on_the_image_at_init(tiny_cfg):
    """With RadFM's std-1 latents the resampled features hardly varied across images (5% of their spread) and a
    trained model ignored its images; small latents must let the image through from the first step."""
    import torch

    from radfm.model.resampler import PerceiverResampler

    torch.manual_seed(0)
    resampler = PerceiverResampler(tiny_cfg.resampler)
    x = torch.randn(8, 64, tiny_cfg.resampler.dim) * 5 + 3  # 8 images' ViT tokens (large, offset: like a ViT's)
    out = resampler(x)
    between = out.std(0).mean() / out.std()
    assert between > 0.3, float(between)
    big = PerceiverResampler(type(tiny_cfg.resampler)(**{**vars(tiny_cfg.resampler), "latent_init_std": 1.0}))
    out_big = big(x)
    assert out_big.std(0).mean() / out_big.std() < between  # what RadFM's init does
