"""RadFM's batch sampler: homogeneous 2D/3D batches, seeded, sharded across ranks without overlap."""

from __future__ import annotations

from radfm.data.sampler import ModalityBatchSampler

FLAGS = [i % 3 == 0 for i in range(50)]  # 17 3D, 33 2D


def indices(batch):
    return [i for i, _ in batch]


def test_batches_are_homogeneous_and_cover_everything_once():
    sampler = ModalityBatchSampler(FLAGS, batch_size_2d=4, batch_size_3d=2, seed=1)
    seen = []
    for batch in sampler:
        kinds = {FLAGS[i] for i in indices(batch)}
        assert len(kinds) == 1
        assert len(batch) <= (2 if kinds.pop() else 4)
        seen += indices(batch)
    assert sorted(seen) == list(range(50))
    assert len(sampler) == len(list(sampler))


def test_seeded_and_epoch_dependent():
    a = ModalityBatchSampler(FLAGS, 4, 2, seed=1)
    b = ModalityBatchSampler(FLAGS, 4, 2, seed=1)
    assert [indices(x) for x in a] == [indices(x) for x in b]
    first = [indices(x) for x in a]
    a.set_epoch(1)
    assert [indices(x) for x in a] != first
    assert all(epoch == 1 for batch in a for _, epoch in batch)


def test_no_shuffle_is_ordered():
    s = ModalityBatchSampler(FLAGS, 4, 2, shuffle=False)
    flat = [i for batch in s for i in indices(batch)]
    assert flat == [i for i in range(50) if not FLAGS[i]] + [i for i in range(50) if FLAGS[i]]


def test_ranks_partition_batches_with_equal_length():
    shards = [ModalityBatchSampler(FLAGS, 4, 2, seed=3, rank=r, world_size=2) for r in range(2)]
    lists = [[indices(b) for b in s] for s in shards]
    assert len(lists[0]) == len(lists[1])
    union = {i for lst in lists for b in lst for i in b}
    assert union == set(range(50))


def test_drop_last():
    s = ModalityBatchSampler(FLAGS, 4, 2, drop_last=True, shuffle=False)
    assert all(len(b) == (2 if FLAGS[b[0][0]] else 4) for b in s)
