"""RadFM's sampler: every batch is all-2D or all-3D, so a 2D batch never pads to a 3D depth.

Optionally class-balanced: with ``classes`` given, each epoch oversamples every class of a modality to the size
of its largest class and interleaves them, so each batch holds the classes in (nearly) equal numbers.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence

import numpy as np
import torch.distributed as dist


class ModalityBatchSampler:
    """Yields index lists, each all-2D (``batch_size_2d``) or all-3D (``batch_size_3d``).

    Shuffling is seeded by ``seed + epoch`` (call :meth:`set_epoch`); under torch.distributed each rank
    takes every ``world_size``-th batch of the same global order, so ranks never share a sample.

    ``classes`` (one hashable per sample, e.g. its label) turns on class balancing for training: within each
    modality every class is drawn as often as the largest one (minority samples repeat, in a fresh random
    order each pass), and the classes alternate inside the stream, so a batch of 32 from two classes holds
    16 of each. An epoch then has ``n_classes × largest class`` samples per modality. Without shuffling
    (evaluation) ``classes`` is ignored: every sample once, in order.
    """

    def __init__(self, is_3d: Sequence[bool], batch_size_2d: int, batch_size_3d: int, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False, rank: int | None = None,
                 world_size: int | None = None, classes: Sequence[Hashable] | None = None) -> None:
        if batch_size_2d < 1 or batch_size_3d < 1:
            raise ValueError("batch sizes must be >= 1")
        self.is_3d = np.asarray(is_3d, dtype=bool)
        if classes is not None and len(classes) != len(self.is_3d):
            raise ValueError(f"classes has {len(classes)} entries for {len(self.is_3d)} samples")
        self.classes = list(classes) if classes is not None else None
        self.bs = {False: batch_size_2d, True: batch_size_3d}
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.epoch = 0
        self.skip = 0  # batches of this epoch already consumed before a resume
        if world_size is None:
            initialised = dist.is_available() and dist.is_initialized()
            world_size = dist.get_world_size() if initialised else 1
            rank = dist.get_rank() if initialised else 0
        self.rank, self.world_size = rank or 0, world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _balanced(self, idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``idx`` (one modality) → a stream where classes alternate, each as long as the largest class."""
        assert self.classes is not None
        groups: dict[Hashable, list[int]] = {}
        for i in idx.tolist():
            groups.setdefault(self.classes[i], []).append(i)
        if len(groups) < 2:
            return rng.permutation(idx)
        # In order of first occurrence, not sorted: class values need not be comparable with each other.
        members = list(groups.values())
        longest = max(len(m) for m in members)
        streams = []
        for m in members:
            reps = -(-longest // len(m))
            # Whole permutations back to back: every minority sample repeats about equally often.
            streams.append(np.concatenate([rng.permutation(m) for _ in range(reps)])[:longest])
        # Class k of round r sits at r·n_classes + (position of k in a per-round shuffle): balanced in every
        # window of n_classes, yet no fixed class order inside a batch.
        rounds = np.stack(streams, axis=1)  # longest × n_classes
        return rng.permuted(rounds, axis=1).reshape(-1)

    def _batches(self) -> list[list[int]]:
        rng = np.random.default_rng(self.seed + self.epoch)
        batches: list[list[int]] = []
        for flag in (False, True):
            idx = np.flatnonzero(self.is_3d == flag)
            if self.shuffle and self.classes is not None and len(idx):
                idx = self._balanced(idx, rng)
            elif self.shuffle:
                idx = rng.permutation(idx)
            size = self.bs[flag]
            for start in range(0, len(idx), size):
                chunk = idx[start:start + size].tolist()
                if len(chunk) == size or not self.drop_last:
                    batches.append(chunk)
        if self.shuffle:
            order = rng.permutation(len(batches))
            batches = [batches[i] for i in order]
        if self.world_size > 1:
            # Every rank needs the same number of steps: pad by wrapping around.
            per_rank = -(-len(batches) // self.world_size)
            batches = (batches * 2)[: per_rank * self.world_size] if batches else batches
            batches = batches[self.rank::self.world_size]
        return batches

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        # Each index travels with its epoch so per-sample augmentation differs between epochs even in
        # persistent worker processes, yet is reproducible from (seed, epoch, index).
        skip, self.skip = self.skip, 0
        for batch in self._batches()[skip:]:
            yield [(i, self.epoch) for i in batch]

    def __len__(self) -> int:
        return len(self._batches())
