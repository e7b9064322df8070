"""RadFM's sampler: every batch is all-2D or all-3D, so a 2D batch never pads to a 3D depth."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch.distributed as dist


class ModalityBatchSampler:
    """Yields index lists, each all-2D (``batch_size_2d``) or all-3D (``batch_size_3d``).

    Shuffling is seeded by ``seed + epoch`` (call :meth:`set_epoch`); under torch.distributed each rank
    takes every ``world_size``-th batch of the same global order, so ranks never share a sample.
    """

    def __init__(self, is_3d: Sequence[bool], batch_size_2d: int, batch_size_3d: int, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False, rank: int | None = None,
                 world_size: int | None = None) -> None:
        if batch_size_2d < 1 or batch_size_3d < 1:
            raise ValueError("batch sizes must be >= 1")
        self.is_3d = np.asarray(is_3d, dtype=bool)
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

    def _batches(self) -> list[list[int]]:
        rng = np.random.default_rng(self.seed + self.epoch)
        batches: list[list[int]] = []
        for flag in (False, True):
            idx = np.flatnonzero(self.is_3d == flag)
            if self.shuffle:
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
