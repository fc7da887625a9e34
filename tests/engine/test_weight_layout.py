"""The dense weights are reordered for oneDNN once per graph copy, never again per call.

TensorFlow keeps one reordered copy of each MatMul's frozen weights, in the layout of that node's
first call; oneDNN wants AB16b32a for 7 to 80 rows and AB16b64a otherwise (this machine's AVX-512).
A graph with one copy of its nodes reordered all 42 MB on every call of the other kind: a worker that
warmed up on a 4-row input took twice as long for each one-sentence request. These tests read
oneDNN's own log of what it executes, in a fresh process.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow

# (B, T): rows B x T on both sides of both layout boundaries, first a 4-row call as a worker's warm-up.
SHAPES = [(1, 4), (1, 16), (8, 64), (1, 30), (1, 5), (2, 20), (32, 40), (1, 80), (1, 81)]

SCRIPT = r'''
import os, sys
import numpy as np
from bert_serving.server.config import EngineConfig
from bert_serving.server.engine.encoder import Encoder
enc = Encoder(EngineConfig(model_dir=sys.argv[1], max_seq_len=128, pooling_layer=(-1,),
                           layer_shards=int(sys.argv[2])))
for rnd in ('first', 'again'):
    for b, t in %r:
        ids = np.full((b, t), 2000, np.int32)
        os.write(2, f'CALL {rnd} {b}x{t}\n'.encode())
        enc.runner(ids, np.ones_like(ids), np.zeros_like(ids))
os.write(2, b'CALL end\n')
''' % (SHAPES,)


def _weight_reorders_per_call(model_dir, layer_shards: int) -> dict:
    """{'first 1x4': n, ...}: oneDNN reorders of a weight matrix (a transposed 2-D source, 'ba') per call."""
    env = dict(os.environ, ONEDNN_VERBOSE='1', TF_CPP_MIN_LOG_LEVEL='2')
    # One pipe for both streams keeps oneDNN's lines (stdout, flushed per line) in order with ours.
    proc = subprocess.run([sys.executable, '-c', SCRIPT, str(model_dir), str(layer_shards)], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:]
    counts, current = {}, None
    for line in proc.stdout.splitlines():
        if line.startswith('CALL '):
            current = line[5:]
            counts[current] = 0
        elif current and 'primitive,exec' in line and ',reorder,' in line and 'blocked:ba::' in line:
            counts[current] += 1
    assert ',inner_product,' in proc.stdout, \
        'oneDNN logged no inner product: is oneDNN off (TF_ENABLE_ONEDNN_OPTS=0)?'
    return counts


# A block split in two parts has twice as many (half as large) dense kernels: 48 instead of 24.
@pytest.mark.parametrize('layer_shards', [1, 2], ids=['whole', 'split2'])
def test_each_graph_copy_reorders_the_weights_once_whatever_the_order_of_shapes(bundled_model_dir, layer_shards):
    kernels = 24 * layer_shards
    counts = _weight_reorders_per_call(bundled_model_dir, layer_shards)
    again = {k: v for k, v in counts.items() if k.startswith('again')}
    assert len(again) == len(SHAPES)
    assert all(v == 0 for v in again.values()), f'weights reordered on a repeated call: {again}'
    first = [counts[f'first {b}x{t}'] for b, t in SHAPES]
    # One graph copy per layout: its first call reorders the dense kernels, no later call does.
    assert sum(first) == 2 * kernels, f'reorders per first call: {dict(zip(SHAPES, first))}'


def test_both_graph_copies_give_the_same_vectors(bundled_model_dir):
    from bert_serving.server.config import EngineConfig
    from bert_serving.server.engine.encoder import Encoder

    enc = Encoder(EngineConfig(model_dir=str(bundled_model_dir), max_seq_len=128, pooling_layer=(-1,)))
    try:
        rng = np.random.default_rng(0)
        ids = rng.integers(1000, 20000, size=(2, 20), dtype=np.int32)
        mask = np.ones_like(ids)
        mask[1, 13:] = 0
        wide = enc.runner.run_tower(False, ids, mask, np.zeros_like(ids))
        narrow = enc.runner.run_tower(True, ids, mask, np.zeros_like(ids))
        np.testing.assert_allclose(narrow, wide, atol=1e-5, rtol=0)
    finally:
        enc.close()
