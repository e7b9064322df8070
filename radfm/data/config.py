"""``DataConfig``: what the loaders read and how; ``instantiate(cfg.data)`` builds it from ``conf/data/*.yaml``.

The defaults written here are the only ones: a data config file states what it chooses.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from radfm.data.labels import LABEL_SOURCES
from radfm.data.limits import DEFAULT_MAX_BYTES, DEFAULT_MAX_VOXELS, ImageLimits
from radfm.data.manifest import Sample
from radfm.data.packing import PACK_LAYOUTS
from radfm.data.transforms import TransformConfig
from radfm.data.turns import TurnAugment

BALANCE_KEYS = (None, "label", "answer", "family")


@dataclass
class DataConfig:
    """A data set and its loaders.

    ``name``/``root``/``manifest``: the data set, its data root (image paths are relative to it) and manifest.
    ``synth`` (a :class:`radfm.data.synth.SynthConfig` as a mapping) or ``npz`` (a MedMNIST file): how the data
    set is made on first use, when it is (``radfm.train.data_prep.ensure_dataset``); ``version``: its data version
    when the pipeline has computed it already. ``transform``: the
    preprocessing (a :class:`TransformConfig` or its mapping). ``balance``: class-balanced training batches:
    None, ``"label"`` (``meta["label"]``, else the sorted label list), ``"answer"`` (the answer text, for any
    closed question) or ``"family"`` (each image's answer to the closed question asked about the most training
    images, read through the data profile: :func:`radfm.data.answer_targets.primary_classes`); evaluation loaders are never rebalanced. ``pack_questions``: training only, every
    question about the same images in one sequence, each turn masked from the others, so one image encoding
    serves all of its questions; ``pack_layout``: ``inline`` (each turn with its own image blocks, placed as
    unpacked samples place them) or ``shared`` (the images once, first; cheaper, but trains only the
    images-first layout). ``label_source``: what each row's ``label_names`` holds for the training-only heads
    (:func:`radfm.data.labels.label_names`). ``turns``: the data set's training-time turn augmentation
    (:class:`radfm.data.turns.TurnAugment`), or None. ``max_voxels`` / ``max_bytes``: the largest image the
    readers decode, checked on each file's header before any pixel is (:mod:`radfm.data.limits` says why the
    defaults fit a 512×512×512 CT); a file over them is a bad sample, raised or quarantined per ``on_error``.
    """

    manifest: str = ""
    root: str = ""
    name: str = "custom"
    synth: dict[str, Any] | None = None
    npz: str | None = None
    version: str | None = None
    batch_size_2d: int = 8
    batch_size_3d: int = 4
    num_workers: int = 0
    seed: int = 0
    on_error: str = "raise"
    max_length: int | None = None
    prevalidate: bool = True
    transform: TransformConfig = field(default_factory=TransformConfig)
    balance: str | None = None
    pack_questions: bool = False
    pack_layout: str = "inline"
    label_source: str = "labels"
    turns: TurnAugment | None = None
    max_voxels: int = DEFAULT_MAX_VOXELS
    max_bytes: int = DEFAULT_MAX_BYTES

    def __post_init__(self) -> None:
        self.manifest, self.root = str(self.manifest), str(self.root)
        if not isinstance(self.transform, TransformConfig):
            self.transform = TransformConfig(**dict(self.transform))
        if self.turns is not None and self.turns.adds_turns and not self.pack_questions:
            raise ValueError("data.turns adds turns to packs and needs data.pack_questions=true: the extra turns "
                             "are turns of their row's pack")
        if self.balance not in BALANCE_KEYS:
            raise ValueError(f"data balance {self.balance!r} is not one of {BALANCE_KEYS}")
        if self.label_source not in LABEL_SOURCES:
            raise ValueError(f"data label_source {self.label_source!r} is not one of {LABEL_SOURCES}")
        if self.pack_layout not in PACK_LAYOUTS:
            raise ValueError(f"data pack_layout {self.pack_layout!r} is not one of {PACK_LAYOUTS}")
        ImageLimits(self.max_voxels, self.max_bytes)  # refuses a non-positive limit, naming its key

    @property
    def limits(self) -> ImageLimits:
        """The readers' resource limits (``max_voxels``, ``max_bytes``)."""
        return ImageLimits(self.max_voxels, self.max_bytes)

    @property
    def data_root(self) -> str:
        """The data root (``root``), under the name the evaluation configs use."""
        return self.root


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


