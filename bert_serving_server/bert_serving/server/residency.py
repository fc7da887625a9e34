"""A worker's resident library pages: the ones it touched only while starting are handed back.

Starting a TensorFlow worker reads much of TensorFlow's libraries: op and kernel registration,
graph import, Grappler, the first runs' oneDNN set-up. Those pages stay mapped, and counted in the
worker's RSS, although serving never touches them again: on the 2-core development machine a worker
held 288 MiB of library pages after its warm-up, and serving the bench workload with those dropped
touched 48 MiB of them again.

``release_start_up_pages`` unmaps the clean pages of every read-only file mapping (code and
read-only data of the libraries) with ``madvise(MADV_DONTNEED)``. The kernel keeps the files in its
page cache, so a page needed again faults back in from memory (a minor fault), with nothing
lost: a mapping that holds no private copy of a page (``Anonymous: 0`` in ``/proc/self/smaps``)
shows exactly the file's bytes. Mappings that do (relocated data made read-only after loading) and
writable ones are left alone. Linux only; elsewhere it does nothing.
"""
from __future__ import annotations

import ctypes
import logging
import sys
from typing import Iterator, NamedTuple, Optional

__all__ = ['Mapping', 'file_mappings', 'release_start_up_pages']

_MADV_DONTNEED = 4
_SMAPS = '/proc/self/smaps'


class Mapping(NamedTuple):
    """One file mapping of ``/proc/self/smaps``; sizes in kB."""
    start: int
    end: int
    perms: str  # e.g. 'r-xp'
    path: str
    rss_kb: int
    anonymous_kb: int


def file_mappings(smaps: str = _SMAPS) -> Iterator[Mapping]:
    """The file-backed mappings of a smaps file (default: this process's)."""
    head, fields = None, {}

    def done() -> Optional[Mapping]:
        if head is None or not head[3].startswith('/'):
            return None
        return Mapping(*head, fields.get('Rss', 0), fields.get('Anonymous', 0))

    with open(smaps, encoding='utf-8', errors='replace') as f:
        for line in f:
            key, sep, rest = line.partition(':')
            if sep and ' ' not in key:  # "Rss:        1234 kB"
                value = rest.split()
                if value and value[0].isdigit():
                    fields[key] = int(value[0])
                continue
            mapping = done()
            if mapping:
                yield mapping
            parts = line.split(maxsplit=5)  # range perms offset dev inode [path]
            start, end = (int(x, 16) for x in parts[0].split('-'))
            head, fields = (start, end, parts[1], parts[5].strip() if len(parts) > 5 else ''), {}
    mapping = done()
    if mapping:
        yield mapping


def release_start_up_pages(logger: Optional[logging.Logger] = None) -> int:
    """Unmaps the resident pages of this process's read-only, unmodified file mappings (see the
    module's docstring); the ones still in use fault back in from the page cache.

    Returns:
        the kB of resident pages released (0 off Linux, or when nothing could be read).
    """
    if not sys.platform.startswith('linux'):
        return 0
    try:
        mappings = list(file_mappings())
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
    except (OSError, AttributeError, ValueError) as e:
        if logger:
            logger.debug('start-up pages kept: %s', e)
        return 0
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    released = 0
    for m in mappings:
        # A private copy of any page (Anonymous) means the mapping no longer equals its file:
        # dropping that copy would bring back the file's bytes. Writable ones may get one any time.
        if 'w' in m.perms or m.anonymous_kb or not m.rss_kb:
            continue
        if madvise(m.start, m.end - m.start, _MADV_DONTNEED) == 0:
            released += m.rss_kb
    if logger:
        logger.debug('released %.0f MiB of library pages read only while starting', released / 1024)
    return released
