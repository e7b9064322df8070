"""glibc ``malloc`` settings for a training process: keep freed memory for the next step.

Why: a training step allocates and frees the same tensors every step (activations, gradients, the loader's
arrays). glibc serves blocks over its mmap threshold (128 KiB at start) with fresh ``mmap`` pages and trims
freed memory back to the kernel, so every step faults its memory in again. On the reference 2-core VM a demo
warm-up step took ~6,000 page faults (~3 µs each) and a joint step ~12,000; with the settings below, almost
none; in one 600-step pair a warm-up step ran ~113 ms against ~150 ms, and the demo's train stage took
459 s against 496 s (BENCHMARKS.md, "Main job"). The cost is that the
process keeps what it freed (its RSS stays at its peak).

``RADFM_KEEP_FREED_MEMORY=0`` turns this off. Elsewhere than glibc Linux it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # mallopt parameters (glibc malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest allowed value on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 2**30


def keep_freed_memory() -> bool:
    """Raise glibc's mmap threshold to 32 MiB and its trim threshold to 1 GiB for this process.

    Returns whether both settings took effect (False off glibc Linux or with ``RADFM_KEEP_FREED_MEMORY=0``).
    Only allocations made after the call are affected, so call it before the model and loaders are built.
    """
    if os.environ.get("RADFM_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt  # glibc only (musl has none)
    except (OSError, AttributeError):
        return False
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if not ok:
        log.debug("mallopt refused the allocator settings; training runs with glibc's defaults")
    return ok
