"""Dataset, collate and the LightningDataModule: manifest rows → interleaved token batches with images."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from radfm.data import prompts
from radfm.data.errors import Quarantine, SampleError, check_on_error
from radfm.data.manifest import Sample, read_manifest, resolve_image_path
from radfm.data.sampler import ModalityBatchSampler
from radfm.data.synth_turns import contrast_yesno, every_yesno, extra_yesno_count, redraw_yesno
from radfm.data.transforms import TransformConfig, preprocess
from radfm.model.tokenizer import RadFMTokenizer

log = logging.getLogger(__name__)


class RadFMDataset(Dataset):
    """Item ``i`` → token ids/labels of sample ``i`` and its images (``3×H×W×D`` each, in text order)."""

    def __init__(self, samples: Sequence[Sample], data_root: str | Path, tokenizer: RadFMTokenizer,
                 transform: TransformConfig, train: bool, seed: int = 0, max_length: int | None = None,
                 cache: Any = None, epoch: int = 0, packs: Sequence[Sequence[int]] | None = None,
                 label_source: str = "labels", pack_layout: str = "inline", redraw_yesno: bool = False,
                 yesno_extra: str = "none", images_only: bool = False) -> None:
        if label_source not in LABEL_SOURCES:
            raise ValueError(f"label_source {label_source!r} is not one of {LABEL_SOURCES}")
        if pack_layout not in PACK_LAYOUTS:
            raise ValueError(f"pack_layout {pack_layout!r} is not one of {PACK_LAYOUTS}")
        if yesno_extra not in YESNO_EXTRA:
            raise ValueError(f"yesno_extra {yesno_extra!r} is not one of {YESNO_EXTRA}")
        self.samples = list(samples)
        self.label_source = label_source
        self.pack_layout = pack_layout
        self.redraw_yesno = redraw_yesno
        self.yesno_extra = yesno_extra
        # images_only: items without text (no tokenizing), for the vision warm-up, which reads only the images
        # and label names; see __getitem__.
        self.images_only = images_only
        # packs: items made of several samples that share their images (see pack_samples); None = one each.
        self.packs = [list(p) for p in packs] if packs is not None else None
        self.data_root = data_root
        self.tokenizer = tokenizer
        self.transform = transform
        self.train = train
        self.seed = seed
        self.max_length = max_length
        self.cache = cache
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.packs) if self.packs is not None else len(self.samples)

    def load_images(self, sample: Sample, rng: Any = None) -> list[torch.Tensor]:
        import numpy as np

        images = []
        np_rng = np.random.default_rng(rng.getrandbits(32)) if rng is not None else None
        for ref in sample.images:
            path = resolve_image_path(self.data_root, ref.path)
            images.append(preprocess(path, self.transform, sample_id=sample.id, cache=self.cache,
                                     train=self.train, rng=np_rng))
        return images

    def _image_positions(self, sample: Sample, rng: random.Random | None) -> list[Any]:
        """Where each image block goes: training re-draws start/end (RadFM); other positions are kept."""
        return [prompts.image_position(rng, ref.position if not (self.train and ref.position in ("start", "end"))
                                       else None) for ref in sample.images]

    def _training_turn(self, sample: Sample, rng: random.Random | None) -> tuple[str, str]:
        """The (question, answer) a row is trained on: templates re-drawn, yes/no re-asked (``redraw_yesno``)."""
        if rng is None:
            return sample.question, sample.answer
        if self.redraw_yesno:
            turn = redraw_yesno(sample.meta, rng)
            if turn is not None:
                return turn
        return prompts.training_question(sample.question, sample.meta, rng), sample.answer

    def _extra_turns(self, members: Sequence[Sample], turns: list[tuple[str, str]],
                     rng: random.Random) -> list[tuple[int, tuple[str, str]]]:
        """(index of the turn it follows, turn) of each extra yes/no turn (``yesno_extra``), in pack order.

        ``twin``: after each yes/no turn, one about the same image with the other answer
        (:func:`radfm.data.synth.contrast_yesno`); ``all``: after it, one about each other finding of the
        protocol (:func:`radfm.data.synth.every_yesno`).
        """
        extra: list[tuple[int, tuple[str, str]]] = []
        for k, (sample, turn) in enumerate(zip(members, turns, strict=True)):
            if self.yesno_extra == "twin":
                twin = contrast_yesno(sample.meta, turn[1], rng)
                extra += [(k, twin)] if twin is not None else []
            elif self.yesno_extra == "all":
                extra += [(k, t) for t in every_yesno(sample.meta, rng)]
        return extra

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        i, epoch = key if isinstance(key, tuple) else (key, self.epoch)
        # A per-(seed, epoch, index) RNG keeps augmentation and prompts reproducible across workers.
        rng = random.Random(f"{self.seed}:{epoch}:{i}") if self.train else None
        if self.packs is not None:
            return self._packed_item(self.packs[i], rng)
        sample = self.samples[i]
        question, answer = self._training_turn(sample, rng)
        positions = self._image_positions(sample, rng)
        if self.images_only:
            return self._images_item(sample, self.load_images(sample, rng))
        try:
            enc = self.tokenizer.format_prompt(question, answer, positions, max_length=self.max_length)
        except ValueError as exc:
            raise SampleError(sample.id, None, str(exc)) from None
        images = self.load_images(sample, rng)
        return {"id": sample.id, "task": sample.task, "encoded": enc,
                "images": [images[k] for k in enc.image_order], "is_3d": sample.is_3d,
                "label_names": label_names(sample, self.label_source)}

    def _packed_item(self, pack: Sequence[int], rng: random.Random | None) -> dict[str, Any]:
        """All turns of a pack in one sequence (see ``format_turns``); its images are loaded and encoded once.

        The inline layout draws each turn's image positions as an unpacked sample's would be drawn;
        ``image_blocks`` maps every image block of the sequence to its image.
        """
        members = [self.samples[j] for j in pack]
        first = members[0]
        turns = [self._training_turn(s, rng) for s in members]
        positions = None
        if self.pack_layout == "inline":
            positions = [self._image_positions(s, rng) for s in members]
        extra = self._extra_turns(members, turns, rng) if self.yesno_extra != "none" and rng is not None else []
        if self.images_only:
            return self._images_item(first, self.load_images(first, rng))
        n = len(first.images)
        enc = None
        # Extra yes/no turns go in while the pack fits max_length (pack_samples measured it without them): the
        # last ones are left out first; they are augmentation, the manifest's rows are all kept.
        for keep in range(len(extra), -1, -1):
            all_turns, all_positions = interleave(turns, positions, extra[:keep])
            try:
                enc = self.tokenizer.format_turns(all_turns, n, max_length=self.max_length, positions=all_positions)
                break
            except ValueError:
                continue
        if enc is None:
            # A re-drawn template can be a few tokens longer than the manifest's question, which
            # pack_samples measured: fall back to those (they fit), rather than drop or cut a turn.
            try:
                enc = self.tokenizer.format_turns([(s.question, s.answer) for s in members], n,
                                                  max_length=self.max_length,
                                                  positions=None if positions is None else [["start"] * n] * len(members))
            except ValueError as exc:
                raise SampleError(f"{first.id} (+{len(members) - 1} packed)", None, str(exc)) from None
        images = self.load_images(first, rng)
        return {"id": first.id, "task": PACKED_TASK, "encoded": enc, "images": images,
                "image_blocks": list(enc.image_order), "is_3d": first.is_3d,
                "label_names": label_names(first, self.label_source)}

    def _images_item(self, sample: Sample, images: list[torch.Tensor]) -> dict[str, Any]:
        """An ``images_only`` item: the images (in the sample's order) and label names, no text.

        Why: the vision warm-up reads only these, and tokenizing a pack (~12 ms a batch in the demo) was ~10 % of a
        warm-up step. The random draws of the text (templates, image positions, extra turns) are still made
        before the images are loaded, so the augmentation of item i in epoch e is the one the full item gets.
        The label head pools over a row's images, so their order within the row does not matter.
        """
        return {"id": sample.id, "task": PACKED_TASK if self.packs is not None else sample.task,
                "images": images, "is_3d": sample.is_3d, "label_names": label_names(sample, self.label_source)}


def interleave(turns: Sequence[tuple[str, str]], positions: Sequence[Any] | None,
               extra: Sequence[tuple[int, tuple[str, str]]]) -> tuple[list[tuple[str, str]], list[Any] | None]:
    """``turns`` with each ``(k, turn)`` of ``extra`` placed right after turn k (in ``extra``'s order); an
    extra turn takes its turn k's image positions."""
    after: dict[int, list[tuple[str, str]]] = {}
    for k, turn in extra:
        after.setdefault(k, []).append(turn)
    out: list[tuple[str, str]] = []
    out_pos: list[Any] = []
    for k, turn in enumerate(turns):
        for t in (turn, *after.get(k, ())):
            out.append(t)
            if positions is not None:
                out_pos.append(positions[k])
    return out, (out_pos if positions is not None else None)


LABEL_SOURCES = ("labels", "findings", "scene")
PACK_LAYOUTS = ("inline", "shared")  # see RadFMTokenizer.format_turns
YESNO_EXTRA = ("none", "twin", "all")  # extra yes/no turns in training packs (see RadFMDataset._extra_turns)
TEMPLATE_SLACK = 8  # tokens kept per extra turn beyond its row's own: another template may be a little longer


def label_names(sample: Sample, source: str = "labels") -> list[str] | None:
    """What the training-only label head learns of a row; None: nothing known (the row gets no target).

    ``labels``: the manifest's ``labels`` list. ``findings``: from structured findings (``meta["findings"]``,
    MedMD-synth's form: dicts with ``type`` and an optional ``side``), each finding's type and, when sided,
    ``"<type> <side>"`` — so the head also learns where a lesion is, which reports and rationales must name.
    ``scene``: the findings' names plus ``"modality <m>"``, ``"plane <p>"``, ``"count <n>"``, ``"<type> <size>"``
    and ``"<type> <side> <region>"`` (MedMD-synth's meta).
    """
    if source == "labels":
        return None if sample.labels is None else list(sample.labels)
    meta = sample.meta or {}
    findings = meta.get("findings")
    if findings is None:
        return None
    names = {str(f["type"]) for f in findings}
    names |= {f"{f['type']} {f['side']}" for f in findings if f.get("side")}
    if source == "scene":
        # Everything a question about the image asks: the study (modality, plane), the lesion count, and
        # per finding its size and full location ("nodule right upper"), so that the warm-up and the head
        # teach the image tokens every answer, not only which lesions are present.
        names |= {f"{k} {meta[k]}" for k in ("modality", "plane") if meta.get(k)}
        names.add(f"count {len(findings)}")
        names |= {f"{f['type']} {f['size']}" for f in findings if f.get("size")}
        names |= {" ".join(str(f[k]) for k in ("type", "side", "region") if f.get(k)) for f in findings
                  if f.get("region")}
    return sorted(names)


PACKED_TASK = "packed"  # the task logged for a packed training row (its turns may belong to several tasks)


def pack_samples(samples: Sequence[Sample], tokenizer: RadFMTokenizer, max_length: int | None,
                 layout: str = "inline", extra_turns: Callable[[Sample], int] | None = None) -> list[list[int]]:
    """Group the indices of samples that ask about the same images, each group within ``max_length`` tokens.

    Samples with the same image list (paths and kinds, in order) and at least one image are packed in manifest
    order; a group that would exceed ``max_length`` (measured with the manifest's questions) is cut into
    several packs. Text-only samples stay alone. Every sample lands in exactly one pack. ``extra_turns``: how
    many extra turns of about its own size a sample will bring at training time (``yesno_extra``); their room
    is kept (with a few tokens to spare for a longer template), so that the extras fit.
    """
    groups: dict[tuple[tuple[str, str], ...], list[int]] = {}
    packs: list[list[int]] = []
    for i, s in enumerate(samples):
        if s.images:
            groups.setdefault(tuple((ref.path, ref.kind) for ref in s.images), []).append(i)
        else:
            packs.append([i])
    for idx in groups.values():
        n_images = len(samples[idx[0]].images)
        # The shared prefix: BOS + the image blocks (shared layout) or BOS alone (inline: blocks in every turn).
        prefix = tokenizer.format_turns([("q", "a")], n_images, positions=None if layout == "shared" else
                                        [["start"] * n_images]).segments.count(0)
        current: list[int] = []
        used = prefix
        for i in idx:
            cost = len(tokenizer.format_prompt(samples[i].question, samples[i].answer,
                                               ["start"] * n_images).input_ids) - prefix
            if extra_turns is not None:
                cost += extra_turns(samples[i]) * (cost + TEMPLATE_SLACK)
            if current and max_length is not None and used + cost > max_length:
                packs.append(current)
                current, used = [], prefix
            current.append(i)
            used += cost
        packs.append(current)
    return packs


@dataclass
class Collator:
    """Pads a list of items into ``input_ids``/``attention_mask``/``labels`` (B×T) + a list of images.

    Also per row: ``n_images`` (how many of ``images`` are its own, in order) and ``label_names`` (the
    manifest's ``labels``, None where the row has none), which the optional label head trains on. When an
    item repeats its images (inline packs), ``images`` holds each once and ``image_blocks`` (a LongTensor)
    maps every image block to it.
    """

    tokenizer: RadFMTokenizer
    side: str = "right"

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        # images_only items (RadFMDataset) carry no text: their batch has no input_ids/labels.
        batch = (self.tokenizer.pad([it["encoded"] for it in items], side=self.side)
                 if all("encoded" in it for it in items) else {})
        batch["images"] = [img for it in items for img in it["images"]]
        batch["ids"] = [it["id"] for it in items]
        batch["tasks"] = [it["task"] for it in items]
        batch["n_images"] = [len(it["images"]) for it in items]
        if any("image_blocks" in it for it in items):
            # Image block j of the batch (row by row) shows batch["images"][image_blocks[j]].
            blocks, offset = [], 0
            for it in items:
                blocks += [offset + k for k in it.get("image_blocks", range(len(it["images"])))]
                offset += len(it["images"])
            batch["image_blocks"] = torch.tensor(blocks, dtype=torch.long)
        batch["label_names"] = [it.get("label_names") for it in items]
        return batch


class ResumableDataLoader(DataLoader):
    """A DataLoader whose position inside the epoch travels in Lightning checkpoints.

    Lightning saves ``state_dict()`` of a stateful loader with the checkpoint and calls ``load_state_dict``
    on resume; the sampler then skips the batches already trained on, so a resumed run sees exactly the
    batches an uninterrupted run would. Counting happens where batches reach the consumer (not in the
    sampler), because worker processes prefetch ahead.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._consumed = 0
        self._resume_at = 0

    def __iter__(self):  # type: ignore[override]
        sampler = self.batch_sampler
        sampler.skip, self._consumed, self._resume_at = self._resume_at, self._resume_at, 0
        for batch in super().__iter__():
            self._consumed += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(self.batch_sampler.epoch), "consumed": self._consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.batch_sampler.set_epoch(state["epoch"])
        self._resume_at = state["consumed"]


@dataclass
class DataConfig:
    manifest: str = ""
    data_root: str = ""
    batch_size_2d: int = 8
    batch_size_3d: int = 4
    num_workers: int = 0
    seed: int = 0
    on_error: str = "raise"
    max_length: int | None = None
    prevalidate: bool = True
    transform: TransformConfig = field(default_factory=TransformConfig)
    # Class-balanced training batches: None (off), "label" (meta["label"], else the sorted label list) or
    # "answer" (the answer text, for any closed question). Evaluation loaders are never rebalanced.
    balance: str | None = None
    # Training only: every question about the same images in one sequence (pack_samples / format_turns),
    # each turn masked from the others, so one image encoding serves all of its questions.
    pack_questions: bool = False
    # What each row's `label_names` holds for the training-only label head (see label_names).
    label_source: str = "labels"
    # Packed sequences: "inline" (each turn with its own image blocks, placed as unpacked samples place them)
    # or "shared" (the images once, first; cheaper, but trains only the images-first layout).
    pack_layout: str = "inline"
    # Training only: re-draw which finding a MedMD-synth yes/no row asks about each time it is trained
    # (radfm.data.synth.redraw_yesno); other rows and other datasets are untouched.
    redraw_yesno: bool = False
    # Training only, packed MedMD-synth: extra yes/no turns after each yes/no turn of a pack, about the same
    # image: "none", "twin" (one with the other answer, radfm.data.synth.contrast_yesno) or "all" (one per
    # other finding of the protocol, radfm.data.synth.every_yesno); needs pack_questions.
    yesno_extra: str = "none"

    def __post_init__(self) -> None:
        if self.yesno_extra not in YESNO_EXTRA:
            raise ValueError(f"data yesno_extra {self.yesno_extra!r} is not one of {YESNO_EXTRA}")
        if self.yesno_extra != "none" and not self.pack_questions:
            raise ValueError(f"data yesno_extra={self.yesno_extra} needs data pack_questions: the extra yes/no "
                             "turns are turns of their row's pack")
        if self.balance not in BALANCE_KEYS:
            raise ValueError(f"data balance {self.balance!r} is not one of {BALANCE_KEYS}")
        if self.label_source not in LABEL_SOURCES:
            raise ValueError(f"data label_source {self.label_source!r} is not one of {LABEL_SOURCES}")
        if self.pack_layout not in PACK_LAYOUTS:
            raise ValueError(f"data pack_layout {self.pack_layout!r} is not one of {PACK_LAYOUTS}")


BALANCE_KEYS = (None, "label", "answer")


def class_of(sample: Sample, key: str) -> Hashable:
    """The class a balanced sampler groups ``sample`` under (see :attr:`DataConfig.balance`)."""
    if key == "answer":
        return sample.answer.strip().lower()
    if key == "label":
        meta = sample.meta or {}
        if "label" in meta:
            label = meta["label"]
            return tuple(label) if isinstance(label, list) else label
        return tuple(sorted(sample.labels or ()))
    raise ValueError(f"data balance {key!r} is not one of {BALANCE_KEYS}")


class RadFMDataModule(L.LightningDataModule):
    """Reads the manifest, checks every sample once (which also fills the tensor cache), serves loaders.

    With ``on_error="quarantine"`` bad samples are set aside with their reason and written to
    ``quarantine.jsonl``; ``len(manifest) == kept + quarantined`` always holds.
    """

    def __init__(self, cfg: DataConfig, tokenizer: RadFMTokenizer, cache: Any = None,
                 quarantine_path: str | Path | None = None) -> None:
        super().__init__()
        check_on_error(cfg.on_error)
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.cache = cache
        self.quarantine = Quarantine()
        self.quarantine_path = quarantine_path
        self.splits: dict[str, list[Sample]] = {}
        self.n_rows = 0

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        samples = read_manifest(self.cfg.manifest, self.cfg.on_error, self.quarantine)
        self.n_rows = len(samples) + len(self.quarantine)
        kept = []
        for s in samples:
            try:
                if self.cfg.prevalidate:
                    self._dataset([s], train=False)[0]
                kept.append(s)
            except SampleError as err:
                if self.cfg.on_error == "raise":
                    raise
                self.quarantine.add(err, "load")
        if len(self.quarantine) and self.quarantine_path is not None:
            self.quarantine.write(self.quarantine_path)
            log.warning("%d samples quarantined: see %s", len(self.quarantine), self.quarantine_path)
        assert len(kept) + len(self.quarantine) == self.n_rows
        self.splits = {name: [s for s in kept if s.split == name] for name in ("train", "val", "test")}

    def _dataset(self, samples: Sequence[Sample], train: bool,
                 packs: Sequence[Sequence[int]] | None = None, images_only: bool = False) -> RadFMDataset:
        return RadFMDataset(samples, self.cfg.data_root, self.tokenizer, self.cfg.transform, train,
                            self.cfg.seed, self.cfg.max_length, self.cache, packs=packs,
                            label_source=self.cfg.label_source, pack_layout=self.cfg.pack_layout,
                            redraw_yesno=self.cfg.redraw_yesno, yesno_extra=self.cfg.yesno_extra,
                            images_only=images_only)

    def _loader(self, split: str, train: bool, images_only: bool = False) -> DataLoader:
        samples = self.splits.get(split, [])
        if not samples:
            raise ValueError(f"the {split} split of {self.cfg.manifest} is empty")
        extra = (None if self.cfg.yesno_extra == "none" or not train
                 else lambda s: extra_yesno_count(s.meta, s.answer, self.cfg.yesno_extra))
        packs = (pack_samples(samples, self.tokenizer, self.cfg.max_length, self.cfg.pack_layout, extra)
                 if train and self.cfg.pack_questions else None)
        ds = self._dataset(samples, train, packs, images_only)
        # The sampler sees one entry per item: a pack is 3D / of a class as its first sample is.
        heads = [samples[p[0]] for p in packs] if packs is not None else samples
        classes = [class_of(s, self.cfg.balance) for s in heads] if train and self.cfg.balance else None
        sampler = ModalityBatchSampler([s.is_3d for s in heads], self.cfg.batch_size_2d,
                                       self.cfg.batch_size_3d, shuffle=train, seed=self.cfg.seed,
                                       classes=classes)
        loader_cls = ResumableDataLoader if train else DataLoader
        return loader_cls(ds, batch_sampler=sampler, collate_fn=Collator(self.tokenizer),
                          num_workers=self.cfg.num_workers,
                          persistent_workers=self.cfg.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def warmup_dataloader(self) -> DataLoader:
        """The training batches without their text (``images_only``): the same items, batches and augmentation
        as :meth:`train_dataloader` (same sampler, same per-item random draws), for the vision warm-up."""
        return self._loader("train", True, images_only=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)

    def texts(self) -> list[str]:
        """Every question and answer of the train split: what a tiny tokenizer is trained on."""
        out = []
        for s in self.splits.get("train", []):
            out += [s.question, s.answer]
        return out
