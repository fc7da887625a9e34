"""glibc's heap while a graph is built: freed memory kept for the next copy, handed back after.

A build of the bundled model copies its ~90 MB of weights about twenty times: numpy arrays,
TensorFlow constants, the GraphDef, Grappler's input and output protos. glibc maps every block of
32 MiB or more by itself and unmaps it when it is freed, and hands the top of the heap back to the
kernel past a small threshold, so each copy faults its pages in again: about 700,000 page faults,
1.5 s of system CPU, per build (measured on the 2-core development machine). With both thresholds
raised for the build, a copy reuses the memory the previous one freed; the build then costs half
the CPU, and ``malloc_trim`` returns what is left free at the end.

Elsewhere (musl, macOS) this does nothing.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import threading
from typing import Iterator, Optional

__all__ = ['heap_kept_while_building']

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_BUILD_THRESHOLD = 1 << 30  # bigger than any block a build frees
# After the build: the most glibc's own sliding mmap threshold reaches on 64-bit, and its trim
# threshold at that point (twice the mmap threshold).
_AFTER_MMAP_THRESHOLD = 32 << 20
_AFTER_TRIM_THRESHOLD = 64 << 20

_lock = threading.Lock()
_depth = 0


def _glibc() -> Optional[ctypes.CDLL]:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
        return libc if hasattr(libc, 'mallopt') and hasattr(libc, 'malloc_trim') else None
    except OSError:
        return None


@contextlib.contextmanager
def heap_kept_while_building() -> Iterator[None]:
    """Raises glibc's mmap and trim thresholds for the enclosed build; nested uses act once."""
    global _depth
    libc = _glibc()
    if libc is None:
        yield
        return
    with _lock:
        _depth += 1
        if _depth == 1:
            libc.mallopt(_M_MMAP_THRESHOLD, _BUILD_THRESHOLD)
            libc.mallopt(_M_TRIM_THRESHOLD, _BUILD_THRESHOLD)
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                libc.mallopt(_M_MMAP_THRESHOLD, _AFTER_MMAP_THRESHOLD)
                libc.mallopt(_M_TRIM_THRESHOLD, _AFTER_TRIM_THRESHOLD)
                libc.malloc_trim(0)
