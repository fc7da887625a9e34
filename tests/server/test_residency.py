"""residency.release_start_up_pages: the resident pages of read-only, unmodified file mappings go,
and come back with the file's bytes when read again; a mapping holding a private copy of a page
(relocated data made read-only after loading) and a writable one keep theirs. Each case maps a file
of its own with libc's mmap, as the dynamic loader maps a library."""
from __future__ import annotations

import ctypes
import mmap
import os

import pytest

from bert_serving.server.residency import file_mappings, release_start_up_pages

pytestmark = pytest.mark.skipif(not os.path.exists('/proc/self/smaps'), reason='needs Linux /proc')

PAGES = 256
SIZE = PAGES * mmap.PAGESIZE

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


@pytest.fixture
def mapped(tmp_path):
    """map(prot) -> (address, path): a private mapping of a new file of random bytes, every page read."""
    made = []

    def map_file(prot: int):
        path = tmp_path / f'lib{len(made)}.so'
        path.write_bytes(os.urandom(SIZE))
        fd = os.open(path, os.O_RDWR if prot & mmap.PROT_WRITE else os.O_RDONLY)
        try:
            address = _libc.mmap(None, SIZE, prot, mmap.MAP_PRIVATE, fd, 0)
        finally:
            os.close(fd)
        assert address not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        made.append(address)
        ctypes.string_at(address, SIZE)  # every page read: resident
        return address, path

    yield map_file
    for address in made:
        _libc.munmap(address, SIZE)


def _mapping(address: int):
    [m] = [m for m in file_mappings() if m.start == address]
    return m


def test_clean_read_only_pages_go_and_come_back_with_the_files_bytes(mapped):
    address, path = mapped(mmap.PROT_READ)
    assert _mapping(address).rss_kb == SIZE // 1024
    assert release_start_up_pages() >= SIZE // 1024
    assert _mapping(address).rss_kb == 0
    assert ctypes.string_at(address, SIZE) == path.read_bytes()


def test_a_page_copied_before_it_was_made_read_only_is_kept(mapped):
    """As the loader relocates a library's data and then protects it (RELRO)."""
    address, path = mapped(mmap.PROT_READ | mmap.PROT_WRITE)
    ctypes.memset(address, 0x5A, mmap.PAGESIZE)  # one private copy
    assert _libc.mprotect(address, SIZE, mmap.PROT_READ) == 0
    before = _mapping(address)
    assert before.perms.startswith('r--') and before.anonymous_kb == mmap.PAGESIZE // 1024
    release_start_up_pages()
    assert _mapping(address).rss_kb == before.rss_kb
    assert ctypes.string_at(address, mmap.PAGESIZE) == b'\x5a' * mmap.PAGESIZE
    assert ctypes.string_at(address + mmap.PAGESIZE, SIZE - mmap.PAGESIZE) == path.read_bytes()[mmap.PAGESIZE:]


def test_a_writable_mapping_is_left_alone(mapped):
    address, _ = mapped(mmap.PROT_READ | mmap.PROT_WRITE)
    release_start_up_pages()
    assert _mapping(address).rss_kb == SIZE // 1024


def test_file_mappings_reads_paths_permissions_and_sizes(tmp_path):
    smaps = tmp_path / 'smaps'
    smaps.write_text(
        '00400000-00452000 r-xp 00000000 fd:01 1234    /usr/lib/lib with space.so\n'
        'Size:                328 kB\nRss:                 200 kB\nAnonymous:             0 kB\n'
        'VmFlags: rd ex mr mw me dw\n'
        '7f0000000000-7f0000021000 rw-p 00000000 00:00 0 \n'
        'Rss:                 132 kB\nAnonymous:           132 kB\n'
        '7f1000000000-7f1000001000 r--p 00010000 fd:01 1235    /usr/lib/libc.so.6\n'
        'Rss:                   4 kB\nAnonymous:             4 kB\n')
    assert list(file_mappings(str(smaps))) == [
        (0x400000, 0x452000, 'r-xp', '/usr/lib/lib with space.so', 200, 0),
        (0x7f1000000000, 0x7f1000001000, 'r--p', '/usr/lib/libc.so.6', 4, 4)]
