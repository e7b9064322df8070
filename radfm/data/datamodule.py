"""Dataset, collate and the LightningDataModule: manifest rows → interleaved token batches with images."""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from radfm.data import prompts
from radfm.data.answer_targets import image_key, primary_classes, split_targets
from radfm.data.config import DataConfig, class_of
from radfm.data.errors import Quarantine, SampleError, check_on_error
from radfm.data.labels import label_names
from radfm.data.limits import ImageLimits
from radfm.data.manifest import Sample, read_manifest, resolve_image_path
from radfm.data.packing import PACK_LAYOUTS, PACKED_TASK, pack_samples
from radfm.data.profile import with_profile
from radfm.data.sampler import ModalityBatchSampler
from radfm.data.transforms import TransformConfig, preprocess
from radfm.data.turns import TurnAugment, interleave
from radfm.model.tokenizer import RadFMTokenizer

log = logging.getLogger(__name__)


class RadFMDataset(Dataset):
    """Item ``i`` → token ids/labels of sample ``i`` and its images (``3×H×W×D`` each, in text order)."""

    def __init__(self, samples: Sequence[Sample], data_root: str | Path, tokenizer: RadFMTokenizer,
                 transform: TransformConfig, train: bool, seed: int = 0, max_length: int | None = None,
                 cache: Any = None, epoch: int = 0, packs: Sequence[Sequence[int]] | None = None,
                 label_source: str = "labels", pack_layout: str | None = None, turns: TurnAugment | None = None,
                 images_only: bool = False, targets: dict[Any, dict[str, float]] | None = None,
                 limits: ImageLimits | None = None) -> None:
        if packs is not None and pack_layout not in PACK_LAYOUTS:
            raise ValueError(f"packed items need a pack_layout, one of {PACK_LAYOUTS}; got {pack_layout!r}")
        self.samples = list(samples)
        self.label_source = label_source
        # targets: each image's {name: 0/1} for label_source="answers" (radfm.data.answer_targets).
        self.targets = targets
        self.pack_layout = pack_layout
        # turns: the data set's training-time turn augmentation (radfm.data.turns), None for none.
        self.turns = turns
        # images_only: items without text (no tokenizing), for the vision warm-up, which reads only the images
        # and label names; see __getitem__.
        self.images_only = images_only
        # limits: the readers' max voxels/bytes (data.max_voxels/max_bytes); an image over them is a SampleError,
        # so the datamodule's prevalidation quarantines it like any bad image. None: the defaults.
        self.limits = limits
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
                                     train=self.train, rng=np_rng, limits=self.limits))
        return images

    def _image_positions(self, sample: Sample, rng: random.Random | None) -> list[Any]:
        """Where each image block goes: training re-draws start/end (RadFM); other positions are kept."""
        return [prompts.image_position(rng, ref.position if not (self.train and ref.position in ("start", "end"))
                                       else None) for ref in sample.images]

    def _training_turn(self, sample: Sample, rng: random.Random | None) -> tuple[str, str]:
        """The (question, answer) a row is trained on: the data set's re-draw if it makes one, else the row's
        turn with its question template re-drawn."""
        if rng is None:
            return sample.question, sample.answer
        if self.turns is not None:
            turn = self.turns.training_turn(sample, rng)
            if turn is not None:
                return turn
        return prompts.training_question(sample.question, sample.meta, rng), sample.answer

    def _extra_turns(self, members: Sequence[Sample], turns: list[tuple[str, str]],
                     rng: random.Random) -> list[tuple[int, tuple[str, str]]]:
        """(index of the turn it follows, turn) of each extra turn the data set adds, in pack order."""
        assert self.turns is not None
        return [(k, t) for k, (sample, turn) in enumerate(zip(members, turns, strict=True))
                for t in self.turns.extra_turns(sample, turn, rng)]

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
                "label_names": label_names(sample, self.label_source, self.targets)}

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
        adds = self.turns is not None and self.turns.adds_turns and rng is not None
        extra = self._extra_turns(members, turns, rng) if adds else []
        if self.images_only:
            return self._images_item(first, self.load_images(first, rng))
        n = len(first.images)
        enc = None
        # Extra turns go in while the pack fits max_length (pack_samples measured it without them): the
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
                "label_names": label_names(first, self.label_source, self.targets)}

    def _images_item(self, sample: Sample, images: list[torch.Tensor]) -> dict[str, Any]:
        """An ``images_only`` item: the images (in the sample's order) and label names, no text.

        Why: the vision warm-up reads only these, and tokenizing a pack (~12 ms a batch in the demo) was ~10 % of a
        warm-up step. The random draws of the text (templates, image positions, extra turns) are still made
        before the images are loaded, so the augmentation of item i in epoch e is the one the full item gets.
        The label head pools over a row's images, so their order within the row does not matter.
        """
        return {"id": sample.id, "task": PACKED_TASK if self.packs is not None else sample.task,
                "images": images, "is_3d": sample.is_3d, "label_names": label_names(sample, self.label_source, self.targets)}


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
        self.targets: dict[str, dict[Any, dict[str, float]]] = {}
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
        # label_source=answers: each image's targets from the questions asked about it, per split.
        # The targets read each row's family and choices as the data profile gives them, so a plain table's
        # closed questions give class targets, not only report terms.
        # data.balance=family reads the same targets to find each image's answer to the most-asked question.
        if self.cfg.label_source == "answers" or self.cfg.balance == "family":
            profiled = with_profile(kept, self.cfg.manifest)
            self.targets = split_targets({name: [s for s in profiled if s.split == name]
                                          for name in ("train", "val", "test")})

    def _dataset(self, samples: Sequence[Sample], train: bool, packs: Sequence[Sequence[int]] | None = None,
                 images_only: bool = False, split: str | None = None) -> RadFMDataset:
        return RadFMDataset(samples, self.cfg.root, self.tokenizer, self.cfg.transform, train,
                            self.cfg.seed, self.cfg.max_length, self.cache, packs=packs,
                            label_source=self.cfg.label_source, pack_layout=self.cfg.pack_layout,
                            turns=self.cfg.turns if train else None, images_only=images_only,
                            targets=self.targets.get(split or "") if self.targets else None,
                            limits=self.cfg.limits)

    def _loader(self, split: str, train: bool, images_only: bool = False) -> DataLoader:
        samples = self.splits.get(split, [])
        if not samples:
            raise ValueError(f"the {split} split of {self.cfg.manifest} is empty")
        turns = self.cfg.turns
        extra = turns.extra_count if train and turns is not None and turns.adds_turns else None
        packs = (pack_samples(samples, self.tokenizer, self.cfg.max_length, self.cfg.pack_layout, extra)
                 if train and self.cfg.pack_questions else None)
        ds = self._dataset(samples, train, packs, images_only, split)
        # The sampler sees one entry per item: a pack is 3D / of a class as its first sample is.
        heads = [samples[p[0]] for p in packs] if packs is not None else samples
        classes: list[Any] | None = None
        if train and self.cfg.balance == "family":
            classes = primary_classes(self.targets.get("train", {}), [image_key(s) for s in heads])
        elif train and self.cfg.balance:
            classes = [class_of(s, self.cfg.balance) for s in heads]
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
