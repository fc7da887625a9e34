"""The graph's two towers: one for narrow batches, one for the rest, sharing inputs and weights.

The wide tower's layer norms are each one oneDNN kernel (``_MklLayerNorm``) where oneDNN is on; the
narrow tower keeps plain ones, which answered one sentence sooner. Their vectors are checked
against the reference in test_reference.py (both towers: one input takes the narrow one, batches
the wide one), and against each other in test_weight_layout.py.
"""
from __future__ import annotations

import numpy as np
import pytest

from bert_serving.server.config import EngineConfig
from bert_serving.server import cpu
from bert_serving.server.engine.modeling import NARROW_PREFIX


@pytest.mark.parametrize('env, machine, flags, expected', [
    (None, 'x86_64', {'avx2', 'avx512_vnni'}, True),   # TensorFlow's default: on with VNNI, BF16 or AMX
    (None, 'x86_64', {'avx2', 'avx512_bf16'}, True),
    (None, 'x86_64', {'avx2', 'amx_tile'}, True),
    (None, 'x86_64', {'avx2', 'avx512f'}, False),      # e.g. Zen 2/3, Skylake: off by default
    (None, 'aarch64', {'asimd'}, False),
    ('0', 'x86_64', {'avx512_vnni'}, False),
    ('false', 'x86_64', {'avx512_vnni'}, False),
    ('1', 'x86_64', {'avx2'}, True),
    ('1', 'aarch64', set(), True),
])
def test_onednn_is_read_as_tensorflow_decides_it(monkeypatch, env, machine, flags, expected):
    if env is None:
        monkeypatch.delenv('TF_ENABLE_ONEDNN_OPTS', raising=False)
    else:
        monkeypatch.setenv('TF_ENABLE_ONEDNN_OPTS', env)
    monkeypatch.setattr(cpu.platform, 'machine', lambda: machine)
    monkeypatch.setattr(cpu.sys, 'platform', 'linux')
    monkeypatch.setattr(cpu, '_cpu_flags', lambda: frozenset(flags))
    assert cpu.onednn_enabled() is expected


def test_layer_norms_are_fused_only_in_a_cpu_graph_with_onednn(monkeypatch):
    monkeypatch.setenv('TF_ENABLE_ONEDNN_OPTS', '1')
    assert EngineConfig().fused_layer_norm
    assert not EngineConfig(on_gpu=True).fused_layer_norm
    fused_key = EngineConfig().graph_key_fields()
    monkeypatch.setenv('TF_ENABLE_ONEDNN_OPTS', '0')
    assert not EngineConfig().fused_layer_norm
    assert EngineConfig().graph_key_fields() != fused_key  # a cached graph of the other form is not reused
    assert EngineConfig().output_key_fields() == EngineConfig(on_gpu=True).output_key_fields()


# Runs in a fresh process: TensorFlow reads TF_ENABLE_ONEDNN_OPTS once, when it is imported.
SCRIPT = r"""
import json, sys
import numpy as np
from tensorflow.core.protobuf import config_pb2
from bert_serving.server.config import EngineConfig
from bert_serving.server.engine.encoder import Encoder
from bert_serving.server.engine.modeling import ATTENTION_SLOTS_NAME, NARROW_PREFIX, OUTPUT_NAME, TOKEN_INDEX_NAME

encoder = Encoder(EngineConfig(model_dir=sys.argv[1], graph_tmp_dir=sys.argv[2], pooling_layer=(-1,),
                               layer_shards=int(sys.argv[3]), bf16=sys.argv[4] == 'bf16'))
graph = encoder.runner._graph
ids = np.full((1, 12), 2000, np.int32)
feeds = {graph.get_tensor_by_name(n + ':0'): v for n, v in
         zip(('input_ids', 'input_mask', 'input_type_ids', TOKEN_INDEX_NAME, ATTENTION_SLOTS_NAME),
             encoder.runner.wide_feeds(ids, np.ones_like(ids), np.zeros_like(ids)))}
ops = {}
for tower, fetch in (('wide', OUTPUT_NAME), ('narrow', NARROW_PREFIX + OUTPUT_NAME)):
    meta = config_pb2.RunMetadata()  # the graph TensorFlow ran, after Grappler's rewrites
    encoder.runner._session.run(graph.get_tensor_by_name(fetch + ':0'), feeds,
                                options=config_pb2.RunOptions(output_partition_graphs=True), run_metadata=meta)
    ops[tower] = [node.op for part in meta.partition_graphs for node in part.node]
print(json.dumps({'ops': ops, 'layers': encoder.bert_config.num_hidden_layers}))
"""


@pytest.mark.parametrize('layer_shards, precision', [(1, 'fp32'), (2, 'fp32'), (2, 'bf16')],
                         ids=['whole', 'split2', 'split2-bf16'])
def test_the_wide_tower_runs_one_onednn_kernel_per_layer_norm_and_gathers_attention_and_the_narrow_tower_neither(
        tiny_google_dir, graph_cache_dir, layer_shards, precision):
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS='1', TF_CPP_MIN_LOG_LEVEL='2')
    proc = subprocess.run([sys.executable, '-c', SCRIPT, str(tiny_google_dir), str(graph_cache_dir), str(layer_shards), precision],
                          env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    wide, narrow = report['ops']['wide'], report['ops']['narrow']
    norms = 1 + 2 * report['layers']  # the embeddings', then two per block
    assert wide.count('_MklLayerNorm') == norms
    assert 'SquaredDifference' not in wide
    assert narrow.count('_MklLayerNorm') == 0
    assert narrow.count('SquaredDifference') == norms  # tf.nn.moments' variance
    # The wide tower gathers Q, K and V of each part of each block from the packed rows straight
    # into attention's head-major layout and the context back (no transposes), and scatters only
    # the pooled layer into the padded layout; the narrow tower runs on the padded layout throughout.
    assert wide.count('ScatterNd') == 1
    assert not [op for op in wide if 'Transpose' in op]
    assert narrow.count('_MklTranspose') + narrow.count('Transpose') == 2 * layer_shards * report['layers']
    assert 'ScatterNd' not in narrow
    # In the wide tower the scores' batched matmul, their 1/sqrt(S) scale and the attention bias are
    # one oneDNN kernel (Grappler leaves the narrow tower's apart, which costs one sentence ~0.6%).
    assert wide.count('_MklFusedBatchMatMulV2') == layer_shards * report['layers']
    if precision == 'bf16':  # its norms and softmaxes read bfloat16: no casts in the blocks
        assert wide.count('Cast') <= 3, wide.count('Cast')  # ids to float, embeddings to bf16, the output


def test_the_towers_share_every_weight(tiny_google_dir):
    """Each weight is one constant of the graph (one variable in a worker), whichever tower reads it."""
    from bert_serving.server.engine.checkpoint import load_bert_config, load_weights, locate_model
    from bert_serving.server.engine.modeling import build_graph_def

    config = EngineConfig(model_dir=str(tiny_google_dir), pooling_layer=(-1,), layer_shards=2)
    files = locate_model(config)
    bc = load_bert_config(files)
    weights = load_weights(files, bc, num_layers=bc.num_hidden_layers, pooler=False)
    graph_def = build_graph_def(config, bc, weights, cls_id=101, sep_id=102)
    big = [n.name for n in graph_def.node if n.op == 'Const'
           and n.attr['value'].tensor.tensor_shape.dim and len(n.attr['value'].tensor.tensor_shape.dim) >= 1
           and np.prod([d.size for d in n.attr['value'].tensor.tensor_shape.dim]) >= bc.hidden_size]
    assert big and not [name for name in big if name.startswith(NARROW_PREFIX)]
    matmuls = [n for n in graph_def.node if n.op == 'MatMul']
    readers = {}
    for node in matmuls:
        readers.setdefault(node.input[1], []).append(node.name.startswith(NARROW_PREFIX))
    assert readers and all(sorted(towers) == [False, True] for towers in readers.values())

