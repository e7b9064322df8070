"""Tokenizer wrapper: special image tokens, interleaved prompt formatting, answer-only labels, padding.

Every image becomes ``<image>`` + ``num_image_tokens`` × ``<image_patch>`` + ``</image>`` in the token
sequence; the model scatters the image's resampled features into the placeholder positions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

IMAGE_START = "<image>"
IMAGE_END = "</image>"
IMAGE_PATCH = "<image_patch>"
PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
IGNORE_INDEX = -100

# An image's place in the text: "start"/"end" of the question, a character index into the question,
# or RadFM's form {"question": idx} / {"answer": idx} (idx may also be "start"/"end").
ImagePosition = str | int | dict | tuple


@dataclass
class EncodedSample:
    """One tokenised sample. ``image_order[k]`` is the index (in the sample's image list) of the k-th image
    block as it appears in the token sequence; image tensors must be fed in that order."""

    input_ids: list[int]
    labels: list[int]
    image_order: list[int] = field(default_factory=list)
    prompt_length: int = 0
    # Packed turns (:meth:`RadFMTokenizer.format_turns`): 0 on the shared prefix, k on turn k; None = one turn.
    segments: list[int] | None = None


def _normalise_position(pos: ImagePosition, question: str, answer: str | None) -> tuple[int, int]:
    """Map a position to ``(segment, char_index)`` with segment 0 = question, 1 = answer."""
    segment, index = 0, pos
    if isinstance(pos, dict):
        if len(pos) != 1:
            raise ValueError(f"image position {pos!r} must have exactly one key, 'question' or 'answer'")
        (key, index), = pos.items()
        segment = {"question": 0, "answer": 1}.get(key, -1)
        if segment < 0:
            raise ValueError(f"image position key {key!r} is neither 'question' nor 'answer'")
    elif isinstance(pos, tuple):
        key, index = pos
        return _normalise_position({key: index}, question, answer)
    text = question if segment == 0 else (answer or "")
    if segment == 1 and answer is None:
        raise ValueError("an image is placed in the answer but the sample has no answer")
    if index == "start":
        return segment, 0
    if index == "end":
        return segment, len(text)
    if isinstance(index, bool) or not isinstance(index, int):
        raise ValueError(f"image position {pos!r} is not 'start', 'end' or a character index")
    if not 0 <= index <= len(text):
        raise ValueError(f"image position {index} lies outside the {len(text)}-character text")
    return segment, index


class RadFMTokenizer:
    """Wraps a Hugging Face fast tokenizer that holds the three image tokens."""

    def __init__(self, hf_tokenizer: Any, num_image_tokens: int = 32) -> None:
        self.hf = hf_tokenizer
        self.num_image_tokens = num_image_tokens
        missing = [t for t in (IMAGE_START, IMAGE_END, IMAGE_PATCH) if t not in hf_tokenizer.get_vocab()]
        if missing:
            raise ValueError(f"tokenizer lacks the image tokens {missing}")
        if hf_tokenizer.eos_token_id is None:
            raise ValueError("tokenizer has no EOS token")
        if hf_tokenizer.pad_token_id is None:
            # LLaMA tokenizers have no pad token; RadFM pads with id 0 (<unk>).
            hf_tokenizer.pad_token = hf_tokenizer.unk_token or hf_tokenizer.eos_token
        self.image_start_id = hf_tokenizer.convert_tokens_to_ids(IMAGE_START)
        self.image_end_id = hf_tokenizer.convert_tokens_to_ids(IMAGE_END)
        self.image_patch_id = hf_tokenizer.convert_tokens_to_ids(IMAGE_PATCH)

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def train_bpe(cls, texts: Iterable[str], vocab_size: int, num_image_tokens: int = 32) -> RadFMTokenizer:
        """Train a byte-level BPE on ``texts`` (offline, seconds). ``len(tokenizer) <= vocab_size``."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        from transformers import PreTrainedTokenizerFast

        specials = [PAD, BOS, EOS, UNK, IMAGE_START, IMAGE_END, IMAGE_PATCH]
        tok = Tokenizer(models.BPE(unk_token=UNK))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=specials, show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        tok.train_from_iterator(list(texts), trainer)
        hf = PreTrainedTokenizerFast(
            tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=UNK,
            additional_special_tokens=[IMAGE_START, IMAGE_END, IMAGE_PATCH],
        )
        return cls(hf, num_image_tokens)

    @classmethod
    def from_local(cls, path: str | Path, num_image_tokens: int = 32) -> RadFMTokenizer:
        """Load a local tokenizer directory (e.g. LLaMA's) and add the image tokens. Never downloads."""
        from transformers import AutoTokenizer

        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(
                f"tokenizer directory {path} does not exist: point model.tokenizer.path at a local "
                "tokenizer (radfm never downloads one)"
            )
        hf = AutoTokenizer.from_pretrained(str(path), local_files_only=True, use_fast=True)
        extra = [t for t in (IMAGE_START, IMAGE_END, IMAGE_PATCH) if t not in hf.get_vocab()]
        if extra:
            hf.add_special_tokens({"additional_special_tokens": extra})
        return cls(hf, num_image_tokens)

    def save(self, directory: str | Path) -> None:
        self.hf.save_pretrained(str(directory))

    @classmethod
    def load(cls, directory: str | Path, num_image_tokens: int = 32) -> RadFMTokenizer:
        return cls.from_local(directory, num_image_tokens)

    # ---- properties ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.hf)

    @property
    def pad_id(self) -> int:
        return int(self.hf.pad_token_id)

    @property
    def bos_id(self) -> int | None:
        return self.hf.bos_token_id

    @property
    def eos_id(self) -> int:
        return int(self.hf.eos_token_id)

    @property
    def image_token_ids(self) -> list[int]:
        return [self.image_start_id, self.image_end_id, self.image_patch_id]

    def image_block(self) -> list[int]:
        return [self.image_start_id] + [self.image_patch_id] * self.num_image_tokens + [self.image_end_id]

    def encode_text(self, text: str) -> list[int]:
        """Plain text → ids. Special-token strings in the text ("<image>", "</s>") stay text: a report that
        happens to contain them must never inject an image slot or an early end of sequence."""
        if not text:
            return []
        return self.hf(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def decode(self, ids: Sequence[int]) -> str:
        special = set(self.hf.all_special_ids)
        # int() first: a tensor row yields 0-d tensors, which never compare equal inside a set.
        return self.hf.decode([int(i) for i in ids if int(i) not in special]).strip()

    # ---- prompts ------------------------------------------------------------------------------
    def format_prompt(
        self,
        question: str,
        answer: str | None = None,
        image_positions: Sequence[ImagePosition] = (),
        max_length: int | None = None,
    ) -> EncodedSample:
        """Tokenise question (+ answer) with one image block per entry of ``image_positions``.

        Labels are -100 on BOS, the question, image blocks and padding; the answer's text tokens and the
        final EOS carry their ids. Without an answer the result is a generation prompt (no EOS).
        """
        placed = [(*_normalise_position(p, question, answer), i) for i, p in enumerate(image_positions)]
        placed.sort(key=lambda t: (t[0], t[1], t[2]))
        input_ids: list[int] = [self.bos_id] if self.bos_id is not None else []
        labels: list[int] = [IGNORE_INDEX] * len(input_ids)
        order: list[int] = []
        # The answer follows the question after one space; an image inside the answer at character k
        # sits at k + 1 in the spaced text (at 0 it goes before the space).
        segments = [question] if answer is None else [question, " " + answer]
        for seg, text in enumerate(segments):
            cuts = [(idx + (1 if seg == 1 and idx > 0 else 0), img) for s, idx, img in placed if s == seg]
            cursor = 0
            for cut, img in [*cuts, (len(text), None)]:
                chunk_ids = self.encode_text(text[cursor:cut])
                input_ids += chunk_ids
                labels += chunk_ids if seg == 1 else [IGNORE_INDEX] * len(chunk_ids)
                cursor = cut
                if img is not None:
                    block = self.image_block()
                    input_ids += block
                    labels += [IGNORE_INDEX] * len(block)
                    order.append(img)
        if answer is not None:
            input_ids.append(self.eos_id)
            labels.append(self.eos_id)
        prompt_length = next((i for i, lab in enumerate(labels) if lab != IGNORE_INDEX), len(labels))
        if max_length is not None and len(input_ids) > max_length:
            last_image_end = max((i for i, t in enumerate(input_ids) if t == self.image_end_id), default=-1)
            first_answer = next((i for i, lab in enumerate(labels) if lab != IGNORE_INDEX), len(labels))
            if last_image_end >= max_length or first_answer >= max_length:
                raise ValueError(
                    f"the prompt needs {max(last_image_end + 1, first_answer)} tokens with its images but "
                    f"max_length is {max_length}: shorten the question or use fewer images"
                )
            input_ids, labels = input_ids[:max_length], labels[:max_length]
        return EncodedSample(input_ids, labels, order, prompt_length)

    def format_turns(self, turns: Sequence[tuple[str, str]], n_images: int, max_length: int | None = None,
                     positions: Sequence[Sequence[ImagePosition]] | None = None) -> EncodedSample:
        """Several question–answer turns about the same images in one sequence.

        ``positions`` None (the *shared* layout): ``BOS, image blocks, q1 a1 EOS, q2 a2 EOS, …`` — the
        images and the prefix run through the LM once for all turns, but every turn is trained with its
        images first. ``positions`` one list per turn (the *inline* layout): ``BOS, turn 1, turn 2, …`` where
        turn k is :meth:`format_prompt` of (q_k, a_k, positions[k]) without its BOS — each turn has its own
        image blocks where its sample would (so image-after-question layouts are trained too);
        ``image_order`` then lists the image of every block of every turn, so an image appears once per turn
        (encode it once and index the features: ``radfm.data.datamodule.Collator``'s ``image_blocks``).
        ``segments`` marks the prefix (0) and each turn (1, 2, …); :class:`radfm.model.multimodal.RadFMModel`
        turns them into an attention mask under which a turn sees only the prefix and itself, with positions
        restarting after the prefix — so each turn is trained exactly as its own sample would be.
        """
        if not turns:
            raise ValueError("format_turns needs at least one (question, answer) turn")
        if positions is not None and len(positions) != len(turns):
            raise ValueError(f"format_turns got {len(positions)} position lists for {len(turns)} turns")
        per_turn = positions if positions is not None else [["start"] * n_images] * len(turns)
        encoded = [self.format_prompt(q, a, pos) for (q, a), pos in zip(turns, per_turn, strict=True)]
        first = encoded[0]
        if positions is None and n_images:
            prefix = max(i for i, t in enumerate(first.input_ids) if t == self.image_end_id) + 1
        else:
            prefix = int(self.bos_id is not None)
        input_ids, labels = list(first.input_ids[:prefix]), list(first.labels[:prefix])
        segments = [0] * prefix
        order: list[int] = list(first.image_order) if positions is None else []
        for k, enc in enumerate(encoded, start=1):
            input_ids += enc.input_ids[prefix:]
            labels += enc.labels[prefix:]
            segments += [k] * (len(enc.input_ids) - prefix)
            if positions is not None:
                order += enc.image_order
        if max_length is not None and len(input_ids) > max_length:
            raise ValueError(f"{len(turns)} packed turns need {len(input_ids)} tokens but max_length is "
                             f"{max_length}: pack fewer turns or raise data.max_length")
        return EncodedSample(input_ids, labels, order, first.prompt_length, segments)

    def pad(
        self, samples: Sequence[EncodedSample], side: str = "right", pad_to: int | None = None
    ) -> dict[str, torch.Tensor]:
        """Pad to a batch: ``input_ids``, ``attention_mask``, ``labels``, each ``B×T`` (long).

        When any sample holds packed turns, ``segment_ids`` (B×T) too: its segments, 1 on every token of an
        unpacked sample (one turn), -1 on padding.
        """
        if side not in ("left", "right"):
            raise ValueError(f"padding side must be 'left' or 'right', got {side!r}")
        length = max(len(s.input_ids) for s in samples)
        if pad_to is not None:
            length = max(length, pad_to)
        ids = torch.full((len(samples), length), self.pad_id, dtype=torch.long)
        labels = torch.full((len(samples), length), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(samples), length), dtype=torch.long)
        packed = any(s.segments is not None for s in samples)
        seg = torch.full((len(samples), length), -1, dtype=torch.long) if packed else None
        for row, s in enumerate(samples):
            n = len(s.input_ids)
            sl = slice(0, n) if side == "right" else slice(length - n, length)
            ids[row, sl] = torch.tensor(s.input_ids, dtype=torch.long)
            labels[row, sl] = torch.tensor(s.labels, dtype=torch.long)
            mask[row, sl] = 1
            if seg is not None:
                seg[row, sl] = torch.tensor(s.segments if s.segments is not None else [1] * n, dtype=torch.long)
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        if seg is not None:
            batch["segment_ids"] = seg
        return batch
