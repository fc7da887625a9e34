"""heap.heap_kept_while_building: inside, a freed block stays in the heap for the next copy; on
leaving, the memory goes back to the kernel. Measured in resident memory (/proc/self/statm), each
case in a new Python: glibc's thresholds are per process, and whatever ran before in a test process
(an in-process graph build, a library calling mallopt) would change them."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SIZE = 64 << 20  # above the 32 MiB past which glibc maps a block by itself and unmaps it when freed

_MEASURE = textwrap.dedent('''
    import contextlib, json, resource, sys
    from bert_serving.server.heap import heap_kept_while_building

    def resident():
        with open('/proc/self/statm') as f:
            return int(f.read().split()[1]) * resource.getpagesize()

    helper = {'kept': heap_kept_while_building, 'nested': heap_kept_while_building,
              'without': contextlib.nullcontext}[sys.argv[1]]
    with helper():
        with helper() if sys.argv[1] == 'nested' else contextlib.nullcontext():
            pass
        block = b'x' * int(sys.argv[2])  # written, so every page is resident
        held = resident()
        del block
        kept = resident()
    print(json.dumps({'released_inside': held - kept, 'released_on_leaving': kept - resident()}))
''')


# What changes glibc's malloc from outside: the helper leaves such a process alone (see the last test).
_MALLOC_ENVIRONMENT = ('MALLOC_MMAP_THRESHOLD_', 'MALLOC_TRIM_THRESHOLD_', 'MALLOC_TOP_PAD_', 'MALLOC_MMAP_MAX_',
                       'GLIBC_TUNABLES', 'LD_PRELOAD')


def _measure(case: str, **extra_env: str) -> dict:
    env = {name: value for name, value in os.environ.items() if name not in _MALLOC_ENVIRONMENT}
    env.update(extra_env, PYTHONPATH=os.pathsep.join([str(REPO / 'bert_serving_server'),
                                                      str(REPO / 'bert_serving_client')]))
    out = subprocess.run([sys.executable, '-c', _MEASURE, case, str(SIZE)], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_a_freed_block_stays_in_the_heap_inside_and_is_handed_back_after():
    figures = _measure('kept')
    assert figures['released_inside'] < SIZE // 4, figures
    assert figures['released_on_leaving'] > SIZE // 2, figures


def test_nested_uses_keep_the_heap_until_the_outermost_ends():
    figures = _measure('nested')
    assert figures['released_inside'] < SIZE // 4, figures
    assert figures['released_on_leaving'] > SIZE // 2, figures


def test_without_it_a_freed_block_leaves_at_once():
    """The case the helper exists for, so that the tests above cannot pass on their own."""
    assert _measure('without')['released_inside'] > SIZE // 2


def test_a_process_whose_malloc_the_user_tuned_is_left_alone():
    assert _measure('kept', MALLOC_TOP_PAD_='131072')['released_inside'] > SIZE // 2
