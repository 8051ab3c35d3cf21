"""Hand the C heap's freed memory back to the system after the local engine's forward passes.

Torch's CPU tensors come from malloc. glibc raises its mmap threshold after each large free (up to
32 MB), so the next passes' key/value copies and activations are carved out of per-thread arenas, and
what is freed there stays resident: a process running Qwen 1.5B through `llm/local.py` grew from 3.7
to 9.5 GB over four simulated units. `malloc_trim(0)` returns the free pages of every arena (about
0.1 s a call, next to a forward pass of seconds; figures in docs/llm-backends.md). Elsewhere than
glibc (macOS, musl) nothing is done. `AUTOINTERP_MALLOC_TRIM=0` turns it off (for measurement).
"""

from __future__ import annotations

import ctypes
import sys
import time
from functools import cache

from autointerp.llm.util import env_flag

ENV = "AUTOINTERP_MALLOC_TRIM"


def enabled() -> bool:
    """Whether trimming is on: unless AUTOINTERP_MALLOC_TRIM is 0, false, no or off."""
    return env_flag(ENV, default=True)


@cache
def glibc() -> ctypes.CDLL | None:
    """The process's glibc (looked up once), or None where there is none with `malloc_trim`."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        trim = libc.malloc_trim  # glibc only: musl and others have no malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return libc


def trim() -> float | None:
    """Return the heap's free memory to the system; the seconds it took, or None where not done."""
    libc = glibc() if enabled() else None
    if libc is None:
        return None
    t0 = time.perf_counter()
    libc.malloc_trim(0)
    return time.perf_counter() - t0
