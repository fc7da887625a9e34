"""heap.heap_kept_while_building: inside, a freed block's pages serve the next copy; after, glibc
maps big blocks anew and the freed memory has gone back to the kernel. Counted in page faults."""
from __future__ import annotations

import resource

from bert_serving.server.heap import heap_kept_while_building

SIZE = 64 << 20  # above the 32 MiB past which glibc maps a block by itself
PAGES = SIZE // resource.getpagesize()


def _faults_of_a_written_block() -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = b'x' * SIZE  # written, so every page is touched
    del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_a_freed_block_serves_the_next_copy_inside_and_is_handed_back_after():
    with heap_kept_while_building():
        _faults_of_a_written_block()
        inside = _faults_of_a_written_block()
    after = _faults_of_a_written_block()

    assert inside < PAGES // 10, f'{inside} page faults for a block of {PAGES} pages that was freed just before'
    assert after > PAGES // 2, f'only {after} page faults for {PAGES} pages: the memory was not handed back'


def test_nested_uses_keep_the_heap_until_the_outermost_ends():
    with heap_kept_while_building():
        with heap_kept_while_building():
            _faults_of_a_written_block()
        inside = _faults_of_a_written_block()
    assert inside < PAGES // 10
