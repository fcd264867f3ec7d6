"""glibc's heap settings while a job runs on the CPU.

PyTorch's CPU tensors come straight from ``malloc``. glibc serves blocks above its mmap threshold (at most 32 MiB)
with fresh ``mmap`` calls and unmaps them on free, so each such tensor is page-faulted in again, 4 KiB at a time,
every time it is made. Stage B's first level at 1024² makes several 40 MiB activations per block: 156 000 page
faults (610 MiB) per forward pass, about 8 % of its time on two Zen 4 cores (``benchmarks/pipeline.py``; the same
forward with the heap kept: 5 000 faults).

:func:`kept_heap` serves every block from the heap and stops glibc from returning freed memory to the system while
a job runs, so blocks are reused instead of faulted in; when the job ends it restores glibc's defaults and hands the
free memory back (``malloc_trim``), so an idle app keeps no more than before. Elsewhere (other C libraries,
macOS, Windows) it does nothing.
"""

from __future__ import annotations

import ctypes
import functools
import platform
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_DEFAULT_TRIM_THRESHOLD = 128 * 1024
_DEFAULT_MMAP_MAX = 65536
_NEVER_TRIM = 2**31 - 1  # mallopt takes an int

_lock = threading.Lock()
_depth = 0


@functools.cache
def _glibc():
    """glibc's handle, or None where the C library is another."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    return libc


def available() -> bool:
    return _glibc() is not None


@contextmanager
def kept_heap() -> Iterator[None]:
    """Within this, large blocks come from the heap and freed memory stays with the process (nested and concurrent
    uses share one setting; the last to leave restores the defaults and trims)."""
    global _depth
    libc = _glibc()
    if libc is None:
        yield
        return
    with _lock:
        if _depth == 0:
            libc.mallopt(_M_MMAP_MAX, 0)
            libc.mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
                libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
                libc.malloc_trim(0)


def hand_back() -> None:
    """Return the heap's free memory to the system now (``malloc_trim``), e.g. between the stages of a kept-heap job,
    whose working sets differ: the next stage then grows from what is live, not on top of the last stage's free
    blocks. Does nothing where the C library is not glibc."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
