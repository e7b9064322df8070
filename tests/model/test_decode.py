"""The lean decoder (radfm.model.decode), greedy and beam: the same tokens as transformers' generate, from the same
weights."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from radfm.model.decode import LeanDecoder, supports


def _lm(kv_heads: int, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=400, hidden_size=64, intermediate_size=172, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=256,
                      attn_implementation="sdpa", tie_word_embeddings=False, pad_token_id=0, bos_token_id=1,
                      eos_token_id=2)
    return LlamaForCausalLM(cfg).eval()


def _reference(lm, embeds, mask, n, eos, pad, suppress, **beam):
    return lm.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=n, eos_token_id=eos,
                       pad_token_id=pad, do_sample=False, suppress_tokens=list(suppress) or None,
                       temperature=None, top_k=None, top_p=None, **beam)


def _padded_batch(lm: LlamaForCausalLM, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """4 prompts of 15 tokens' embeddings, left-padded by 0, 5, 11 and 1, and their mask."""
    ids = torch.randint(3, 400, (4, 15), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    mask[1, :5], mask[2, :11], mask[3, :1] = 0, 0, 0
    return lm.get_input_embeddings()(ids).detach(), mask


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_same_tokens_as_generate_on_a_left_padded_batch(kv_heads):
    lm = _lm(kv_heads)
    for seed in range(3):
        embeds, mask = _padded_batch(lm, seed)
        ref = _reference(lm, embeds, mask, 24, None, 0, [7, 9])
        got = LeanDecoder(lm).greedy(embeds, mask, 24, None, 0, [7, 9])
        assert torch.equal(got, ref)
        assert not torch.isin(got, torch.tensor([7, 9])).any()


def test_rows_end_at_eos_then_pad_and_the_loop_stops_when_all_have_ended():
    lm = _lm(4, seed=1)
    embeds = lm.get_input_embeddings()(torch.randint(3, 400, (3, 6), generator=torch.Generator().manual_seed(5)))
    mask = torch.ones(3, 6, dtype=torch.long)
    free = LeanDecoder(lm).greedy(embeds.detach(), mask, 10, None, 0)
    eos = int(free[0, 2])  # row 0's third token: treat it as the end of sequence
    ref = _reference(lm, embeds.detach(), mask, 10, eos, 0, [])
    got = LeanDecoder(lm).greedy(embeds.detach(), mask, 10, eos, 0)
    first = int((free[0] == eos).nonzero()[0])  # where row 0 first says it
    assert torch.equal(got, ref) and int(got[0, first]) == eos and bool((got[0, first + 1:] == 0).all())
    assert LeanDecoder(lm).greedy(embeds.detach(), mask, 0, eos, 0).shape == (3, 0)


def test_the_model_decodes_lean_by_default_and_the_same_as_before(tiny_model, tiny_tokenizer):
    tok = tiny_tokenizer
    encs = [tok.format_prompt(q, None, [0]) for q in ("Is there a nodule?", "Describe the findings in detail.")]
    b = tok.pad(encs, side="left")
    images = torch.randn(2, 3, 32, 32, 8)
    kw = dict(max_new_tokens=16, eos_token_id=tok.eos_id, pad_token_id=tok.eos_id)
    tiny_model.eval()
    assert supports(tiny_model.lm)
    lean = tiny_model.generate(b["input_ids"], b["attention_mask"], images, **kw)
    hf = tiny_model.generate(b["input_ids"], b["attention_mask"], images, lean=False, **kw)
    assert torch.equal(lean, hf)


def test_the_model_searches_beams_lean_and_the_same_as_generate(tiny_model, tiny_tokenizer):
    tok = tiny_tokenizer
    encs = [tok.format_prompt(q, None, [0]) for q in ("Is there a nodule?", "Describe the findings in detail.")]
    b = tok.pad(encs, side="left")
    images = torch.randn(2, 3, 32, 32, 8)
    kw = dict(max_new_tokens=12, eos_token_id=tok.eos_id, pad_token_id=tok.eos_id, num_beams=3)
    tiny_model.eval()
    lean = tiny_model.generate(b["input_ids"], b["attention_mask"], images, **kw)
    hf = tiny_model.generate(b["input_ids"], b["attention_mask"], images, lean=False, **kw)
    assert torch.equal(lean, hf)
    with pytest.raises(ValueError, match="num_beams > 1 needs do_sample=False"):
        tiny_model.generate(b["input_ids"], b["attention_mask"], images, do_sample=True, **kw)


def test_the_packed_lm_head_follows_its_weight_and_gives_generates_tokens():
    """At more than one row the head goes through MKL's packed GEMM, a copy kept on the module; an in-place
    change of the weight (a training step) is seen, never a stale copy."""
    lm = _lm(4, seed=2)
    ids = torch.randint(3, 400, (3, 9), generator=torch.Generator().manual_seed(7))
    embeds, mask = lm.get_input_embeddings()(ids).detach(), torch.ones(3, 9, dtype=torch.long)
    got = LeanDecoder(lm).greedy(embeds, mask, 10, None, 0)
    if torch.backends.mkl.is_available():
        assert lm.lm_head._radfm_packed[0][-1] == 3  # packed for 3 rows
    assert torch.equal(got, _reference(lm, embeds, mask, 10, None, 0, []))
    assert torch.equal(LeanDecoder(lm, pack=False).greedy(embeds, mask, 10, None, 0), got)
    with torch.no_grad():
        lm.lm_head.weight.mul_(-1.0)  # in place: the same storage, a new version; the argmax changes
    flipped = LeanDecoder(lm).greedy(embeds, mask, 10, None, 0)
    assert torch.equal(flipped, _reference(lm, embeds, mask, 10, None, 0, []))
    assert not torch.equal(flipped, got)


def test_an_lm_it_does_not_read_is_refused():
    from torch import nn

    assert not supports(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="LlamaForCausalLM"):
        LeanDecoder(nn.Linear(2, 2))


@pytest.mark.parametrize(("kv_heads", "beams", "length_penalty"), [(4, 3, 1.0), (2, 2, 0.5), (2, 4, 1.0)])
def test_beam_search_gives_generates_beams_on_a_left_padded_batch(kv_heads, beams, length_penalty):
    lm = _lm(kv_heads)
    for seed in range(3):
        embeds, mask = _padded_batch(lm, seed)
        free = LeanDecoder(lm).greedy(embeds, mask, 12, None, 0)
        for eos in (None, int(free[0, 3])):  # no end, and a token row 0 says early
            ref = _reference(lm, embeds, mask, 12, eos, 0, [7, 9], num_beams=beams, length_penalty=length_penalty)
            got = LeanDecoder(lm).beam(embeds, mask, 12, beams, eos, 0, [7, 9], length_penalty)
            assert got.shape == ref.shape and torch.equal(got, ref), (seed, eos)


def test_beam_search_stops_when_no_running_beam_can_win_and_crops_like_generate():
    lm = _lm(4, seed=1)
    with torch.no_grad():  # make EOS (id 2) likely, so that beams end early at different lengths
        lm.lm_head.weight[2] += 0.5 * lm.model.norm.weight
    lengths = set()
    for seed in range(6):
        ids = torch.randint(3, 400, (2, 6), generator=torch.Generator().manual_seed(seed))
        embeds, mask = lm.get_input_embeddings()(ids).detach(), torch.ones(2, 6, dtype=torch.long)
        for beams in (2, 3):
            ref = _reference(lm, embeds, mask, 20, 2, 0, [], num_beams=beams)
            got = LeanDecoder(lm).beam(embeds, mask, 20, beams, 2, 0)
            assert got.shape == ref.shape and torch.equal(got, ref), (seed, beams)
            lengths.add(got.shape[1])
    assert min(lengths) < 20 and len(lengths) > 2, lengths  # the loop did stop early, at several lengths
