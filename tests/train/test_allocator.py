"""glibc allocator settings of a training process (radfm.train.allocator)."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHILD = """
import resource, sys
import numpy as np
from radfm.train.allocator import keep_freed_memory
ok = keep_freed_memory() if sys.argv[1] == "on" else False
def step():  # a step's tensors: 40 blocks of 2 MiB allocated, then all freed
    blocks = [np.ones(2**18) for _ in range(40)]
    del blocks
for _ in range(3):  # warm: the first rounds fault in whatever the settings
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print(ok, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    """80 MiB of blocks allocated and freed each round: with glibc's defaults the freed top of the heap is
    trimmed back to the kernel and faulted in again the next round (~20,000 page faults a round); with
    keep_freed_memory it is kept and reused, and (nearly) nothing faults."""
    on_ok, on = faults("on")
    _, off = faults("off")
    assert on_ok
    assert off > 20 * 10_000  # the defaults really do fault every round: the comparison has teeth
    assert on < off / 20


def test_the_switch_turns_it_off(monkeypatch):
    from radfm.train.allocator import keep_freed_memory

    monkeypatch.setenv("RADFM_KEEP_FREED_MEMORY", "0")
    assert keep_freed_memory() is False
