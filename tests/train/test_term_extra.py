"""term_extra: answer words weighted like the clinical terms (the demo weighs the closed answers yes/no)."""

from __future__ import annotations

import pytest
import torch

from radfm.data.datamodule import Collator
from radfm.model import presets
from radfm.train.module import RadFMLitModule
from radfm.train.objectives import AnswerLoss


def _weights(module: RadFMLitModule, tokenizer, answer: str) -> tuple[torch.Tensor, torch.Tensor]:
    enc = tokenizer.format_prompt("Is there a cyst?", answer, ["start"])
    batch = Collator(tokenizer)([{"id": "a", "task": "diagnosis", "encoded": enc,
                                  "images": [torch.zeros(3, 64, 64, 4)]}])
    labels = batch["labels"]
    return module.objectives["answer"].weighter(labels)[labels != -100], labels[labels != -100]


def test_extra_words_take_the_term_weight(tiny_tokenizer):
    plain = RadFMLitModule(presets.tiny(), tiny_tokenizer, objectives=[AnswerLoss(term_weight=5.0)])
    extra = RadFMLitModule(presets.tiny(), tiny_tokenizer,
                           objectives=[AnswerLoss(term_weight=5.0, term_extra=["yes", "no"])])
    assert extra.hparams["objectives"]["answer"]["term_extra"] == ["yes", "no"]
    assert plain.hparams["objectives"]["answer"]["term_extra"] == []
    for answer in ("yes", "no"):
        w_plain, _ = _weights(plain, tiny_tokenizer, answer)
        w_extra, ids = _weights(extra, tiny_tokenizer, answer)
        assert set(w_plain.tolist()) == {1.0}  # not a clinical term: weight 1 without term_extra
        assert len(ids) >= 2 and w_extra[:-1].tolist() == [5.0] * (len(ids) - 1)  # the word's tokens
        assert float(w_extra[-1]) == 1.0  # the end-of-answer token keeps weight 1
    # a term of the list keeps its weight either way
    w_plain, _ = _weights(plain, tiny_tokenizer, "cyst")
    assert 5.0 in w_plain.tolist()


def test_term_extra_refuses_yaml_booleans() -> None:
    """A bare yes/no in YAML is a boolean: refused with how to quote it, never weighed as "True"."""
    from omegaconf import OmegaConf

    from radfm.train.objectives.answer import term_words

    assert term_words(OmegaConf.create({"t": ["yes", "no"]}).t) == ["yes", "no"]
    assert term_words(None) == [] and term_words([]) == []
    with pytest.raises(ValueError, match="quote it in YAML"):
        term_words(OmegaConf.create("t: [yes, no]").t)
    with pytest.raises(ValueError, match="quote it in YAML"):  # the objective refuses them when it is built
        AnswerLoss(term_weight=5.0, term_extra=OmegaConf.create("t: [yes, no]").t)
