"""Prompt formatting and padding, with property tests."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from radfm.model.tokenizer import IGNORE_INDEX

text = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=60)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(question=text, answer=text, data=st.data())
def test_prompt_builder_properties(tiny_tokenizer, question, answer, data):
    tok = tiny_tokenizer
    n = data.draw(st.integers(0, 3))
    positions = [data.draw(st.one_of(st.sampled_from(["start", "end"]), st.integers(0, len(question)),
                                     st.builds(lambda i: {"answer": i}, st.integers(0, len(answer)))))
                 for _ in range(n)]
    enc = tok.format_prompt(question, answer, positions)
    ids, labels = enc.input_ids, enc.labels
    assert len(ids) == len(labels)
    assert sorted(enc.image_order) == list(range(n))
    assert ids.count(tok.image_start_id) == n and ids.count(tok.image_end_id) == n
    assert ids.count(tok.image_patch_id) == 32 * n
    for t, lab in zip(ids, labels):
        if t in tok.image_token_ids:
            assert lab == IGNORE_INDEX
    supervised = [t for t, lab in zip(ids, labels) if lab != IGNORE_INDEX]
    assert supervised[-1] == tok.eos_id
    # the text survives tokenisation and the answer alone is supervised
    assert tok.decode(supervised) == answer.strip()
    assert tok.decode(ids).replace(" ", "") == (question + answer).replace(" ", "")


def test_bad_positions(tiny_tokenizer):
    with pytest.raises(ValueError, match="outside"):
        tiny_tokenizer.format_prompt("short", "a", [99])
    with pytest.raises(ValueError, match="neither"):
        tiny_tokenizer.format_prompt("short", "a", [{"figure": 0}])
    with pytest.raises(ValueError, match="no answer"):
        tiny_tokenizer.format_prompt("short", None, [{"answer": 0}])


def test_max_length_truncates_answer_but_never_images(tiny_tokenizer):
    tok = tiny_tokenizer
    enc = tok.format_prompt("Describe.", "word " * 200, ["start"], max_length=60)
    assert len(enc.input_ids) == 60
    with pytest.raises(ValueError, match="max_length"):
        tok.format_prompt("Describe.", "ok", ["start", "end"], max_length=50)


def test_left_and_right_padding(tiny_tokenizer):
    tok = tiny_tokenizer
    a, b = tok.format_prompt("Hi?", "Yes."), tok.format_prompt("A longer question here?", "No.")
    right, left = tok.pad([a, b], "right"), tok.pad([a, b], "left")
    assert right["attention_mask"][0, 0] == 1 and right["attention_mask"][0, -1] == 0
    assert left["attention_mask"][0, 0] == 0 and left["attention_mask"][0, -1] == 1
    assert (left["input_ids"][left["attention_mask"] == 0] == tok.pad_id).all()


def test_special_token_strings_in_text_stay_text(tiny_tokenizer):
    tok = tiny_tokenizer
    enc = tok.format_prompt("Is <image> a word here?", "Yes </s> <image_patch> it is.", [])
    assert tok.image_start_id not in enc.input_ids and tok.image_patch_id not in enc.input_ids
    assert enc.input_ids.count(tok.eos_id) == 1 and enc.input_ids[-1] == tok.eos_id
    assert tok.decode(enc.input_ids) == "Is <image> a word here? Yes </s> <image_patch> it is."


def test_decode_drops_special_tokens_from_tensors_and_lists(tiny_tokenizer):
    import torch

    tok = tiny_tokenizer
    ids = tok.encode_text("Yes, a nodule.") + [tok.eos_id, tok.pad_id, tok.pad_id]
    assert tok.decode(ids) == tok.decode(torch.tensor(ids)) == "Yes, a nodule."
