"""The importers' shared bookkeeping (radfm.data.importers.run): seeded split assignment."""

from __future__ import annotations

from radfm.data.importers import assign_split


def test_assign_split_is_stable_seeded_and_proportional() -> None:
    ids = [f"s{i}" for i in range(4000)]
    splits = [assign_split(i) for i in ids]
    assert splits == [assign_split(i) for i in ids]
    frac = {s: splits.count(s) / len(ids) for s in ("train", "val", "test")}
    assert abs(frac["train"] - 0.8) < 0.03 and abs(frac["val"] - 0.1) < 0.03 and abs(frac["test"] - 0.1) < 0.03
    assert [assign_split(i, seed=1) for i in ids] != splits
    assert {assign_split(i, fractions=(0, 0, 1)) for i in ids[:50]} == {"test"}
