"""Packed question turns: one sequence per image set, each turn trained exactly as its own sample."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from radfm.model.multimodal import packed_attention


def _per_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100, reduction="none")


def _assert_turns_match(batch, logits, singles, single_logits) -> None:
    """The answer-token logits of turn k in the (one-row) pack equal those of the k-th single sample."""
    seg = batch["segment_ids"][0]
    for k, single in enumerate(singles, start=1):
        pack_pos = [i for i in range(len(seg)) if seg[i] == k and batch["labels"][0, i] != -100]
        single_pos = [i for i, lab in enumerate(single.labels) if lab != -100]
        assert len(pack_pos) == len(single_pos) > 0
        torch.testing.assert_close(logits[0, [p - 1 for p in pack_pos]],
                                   single_logits[k - 1, [p - 1 for p in single_pos]], atol=1e-4, rtol=1e-4)


def test_packed_turns_equal_separate_samples(tiny_model, tiny_tokenizer):
    """Logits of every answer token (and so the loss) match the unpacked samples, to float tolerance."""
    tok, model = tiny_tokenizer, tiny_model.eval()
    torch.manual_seed(1)
    image = torch.randn(3, 64, 64, 4)
    turns = [("Is there a nodule?", "Yes, a left nodule."), ("Which side?", "left"), ("Is it large?", "No.")]
    packed = tok.format_turns(turns, n_images=1)
    assert packed.segments[0] == 0 and sorted(set(packed.segments)) == [0, 1, 2, 3]
    batch = tok.pad([packed])
    with torch.no_grad():
        out = model(batch["input_ids"], batch["attention_mask"], [image], batch["labels"],
                    segment_ids=batch["segment_ids"])
        singles = [tok.format_prompt(q, a, ["start"]) for q, a in turns]
        sb = tok.pad(singles)
        ref = model(sb["input_ids"], sb["attention_mask"], [image] * len(turns), sb["labels"])
    _assert_turns_match(batch, out["logits"], singles, ref["logits"])
    # The same answer tokens are counted: the packed loss is the token mean over all turns' answers.
    n_answer = sum(sum(lab != -100 for lab in s.labels) for s in singles)
    assert int((batch["labels"] != -100).sum()) == n_answer
    assert out["loss"] == pytest.approx(float(ref["loss"]), rel=1e-4)


def test_packed_attention_mask_and_positions():
    seg = torch.tensor([[0, 0, 1, 1, 2, 2, 2, -1]])
    mask, pos = packed_attention(seg)
    m = mask[0, 0]
    assert pos[0].tolist()[:7] == [0, 1, 2, 3, 2, 3, 4]
    assert m[4, :2].all() and not m[4, 2:4].any() and m[4, 4] and not m[4, 5]  # turn 2 sees prefix + itself
    assert not m[:7, 7].any() and m[7, 7]  # padding: seen by no one, sees itself (no NaN rows)
    assert not m[0, 1]  # causal inside the prefix


def test_unpacked_rows_in_a_packed_batch_are_plain_causal(tiny_tokenizer):
    tok = tiny_tokenizer
    batch = tok.pad([tok.format_turns([("Is there a nodule?", "No.")], 1), tok.format_prompt("Is there a nodule?", "No.")])
    seg = batch["segment_ids"]
    assert (seg[1][batch["attention_mask"][1] == 1] == 1).all() and (seg[1][batch["attention_mask"][1] == 0] == -1).all()
    with pytest.raises(ValueError, match="max_length"):
        tok.format_turns([("Is there a nodule?", "Yes, a left nodule.")] * 8, 1, max_length=40)
    with pytest.raises(ValueError, match="at least one"):
        tok.format_turns([], 1)


def test_inline_packed_turns_equal_separate_samples_wherever_the_image_sits(tiny_model, tiny_tokenizer):
    """Inline layout: each turn has its own image block (start or end); one encoding serves them all via
    ``image_blocks``; answer logits equal the unpacked samples'."""
    from radfm.data.datamodule import Collator

    tok, model = tiny_tokenizer, tiny_model.eval()
    torch.manual_seed(2)
    image = torch.randn(3, 64, 64, 4)
    turns = [("Is there a nodule?", "Yes, a left nodule."), ("Which side?", "left"), ("Is it large?", "No.")]
    positions = [["end"], ["start"], ["end"]]
    packed = tok.format_turns(turns, n_images=1, positions=positions)
    assert packed.image_order == [0, 0, 0] and packed.segments[:1] == [0]  # prefix: BOS only
    batch = Collator(tok)([{"id": "p", "task": "packed", "encoded": packed, "images": [image],
                            "image_blocks": packed.image_order}])
    assert len(batch["images"]) == 1 and batch["image_blocks"].tolist() == [0, 0, 0]
    singles = [tok.format_prompt(q, a, pos) for (q, a), pos in zip(turns, positions, strict=True)]
    with torch.no_grad():
        feats = model.encode_images(batch["images"])[batch["image_blocks"]]
        out = model(batch["input_ids"], batch["attention_mask"], labels=batch["labels"], image_features=feats,
                    segment_ids=batch["segment_ids"])
        sb = tok.pad(singles)
        ref = model(sb["input_ids"], sb["attention_mask"], [image] * len(turns), sb["labels"])
    _assert_turns_match(batch, out["logits"], singles, ref["logits"])
    assert out["loss"] == pytest.approx(float(ref["loss"]), rel=1e-4)
    with pytest.raises(ValueError, match="position lists"):
        tok.format_turns(turns, n_images=1, positions=positions[:2])


def test_per_block_features_equal_indexing_with_summed_gradients():
    """The module's one-hot gather gives features[blocks] and sums a repeated image's gradients."""
    from radfm.train.module import per_block

    torch.manual_seed(3)
    features = torch.randn(3, 4, 8, requires_grad=True)
    blocks = torch.tensor([2, 0, 2, 2, 1])
    out = per_block(features, blocks)
    torch.testing.assert_close(out, features[blocks])
    weights = torch.randn_like(out)
    (out * weights).sum().backward()
    want = torch.zeros_like(features).index_add(0, blocks, weights)
    torch.testing.assert_close(features.grad, want)


def test_logits_at_equal_the_full_logits_there(tiny_model, tiny_tokenizer):
    """``logits_at`` runs the LM head only at the chosen positions: the same numbers, packed and plain, and a
    gradient that reaches the LM; passing it with ``labels`` or in the wrong shape is an error."""
    tok, model = tiny_tokenizer, tiny_model.eval()
    torch.manual_seed(2)
    image = torch.randn(3, 64, 64, 4)
    packed = tok.pad([tok.format_turns([("Is there a nodule?", "Yes, a left nodule."), ("Which side?", "left")],
                                       n_images=1)])
    plain = tok.pad([tok.format_prompt("What modality is this?", "CT.", ["start"]),
                     tok.format_prompt("And this?", "MRI of the head.", ["end"])])
    for batch, images, seg in ((packed, [image], packed["segment_ids"]), (plain, [image, image], None)):
        at = F.pad(batch["labels"][:, 1:] != -100, (0, 1))
        with torch.no_grad():
            full = model(batch["input_ids"], batch["attention_mask"], images, segment_ids=seg)["logits"]
            picked = model(batch["input_ids"], batch["attention_mask"], images, segment_ids=seg,
                           logits_at=at)["logits"]
        assert picked.shape == (int(at.sum()), full.shape[-1])
        torch.testing.assert_close(picked, full[at], atol=1e-5, rtol=1e-5)
    model.zero_grad()
    model(plain["input_ids"], plain["attention_mask"], [image, image], logits_at=at)["logits"].sum().backward()
    assert model.lm.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="not both"):
        model(plain["input_ids"], plain["attention_mask"], [image, image], plain["labels"], logits_at=at)
    with pytest.raises(ValueError, match="B×T"):
        model(plain["input_ids"], plain["attention_mask"], [image, image], logits_at=at[:, 1:])
