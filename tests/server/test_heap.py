"""heap.heap_kept_while_building: inside, a freed block stays in the heap for the next copy; on
leaving, the memory goes back to the kernel. Measured in resident memory (/proc/self/statm)."""
from __future__ import annotations

import resource

from bert_serving.server.heap import heap_kept_while_building

SIZE = 64 << 20  # above the 32 MiB past which glibc maps a block by itself and unmaps it when freed


def _resident_bytes() -> int:
    with open('/proc/self/statm', encoding='ascii') as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _written_block() -> bytes:
    return b'x' * SIZE  # written, so every page is resident


def test_a_freed_block_stays_in_the_heap_inside_and_is_handed_back_after():
    with heap_kept_while_building():
        block = _written_block()
        held = _resident_bytes()
        del block
        kept = _resident_bytes()
    after = _resident_bytes()

    assert held - kept < SIZE // 4, f'{(held - kept) >> 20} MiB went back to the kernel when a {SIZE >> 20} MiB block was freed inside'
    assert kept - after > SIZE // 2, f'only {(kept - after) >> 20} MiB handed back on leaving'


def test_nested_uses_keep_the_heap_until_the_outermost_ends():
    with heap_kept_while_building():
        with heap_kept_while_building():
            pass
        block = _written_block()
        held = _resident_bytes()
        del block
        kept = _resident_bytes()
    assert held - kept < SIZE // 4


def test_without_it_a_freed_block_leaves_at_once():
    """The case the helper exists for, so that the tests above cannot pass on their own."""
    block = _written_block()
    held = _resident_bytes()
    del block
    assert held - _resident_bytes() > SIZE // 2
