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
from bert_serving.server.engine import devices
from bert_serving.server.engine.modeling import NARROW_PREFIX, OUTPUT_NAME


@pytest.mark.parametrize('env, machine, expected', [
    (None, 'x86_64', True),      # TensorFlow's default on x86-64
    (None, 'aarch64', False),
    ('0', 'x86_64', False),
    ('false', 'x86_64', False),
    ('1', 'aarch64', True),
])
def test_onednn_is_read_from_the_environment_as_tensorflow_reads_it(monkeypatch, env, machine, expected):
    if env is None:
        monkeypatch.delenv('TF_ENABLE_ONEDNN_OPTS', raising=False)
    else:
        monkeypatch.setenv('TF_ENABLE_ONEDNN_OPTS', env)
    monkeypatch.setattr(devices.platform, 'machine', lambda: machine)
    assert devices.onednn_enabled() is expected


def test_layer_norms_are_fused_only_in_a_cpu_graph_with_onednn(monkeypatch):
    monkeypatch.setenv('TF_ENABLE_ONEDNN_OPTS', '1')
    assert EngineConfig().fused_layer_norm
    assert not EngineConfig(on_gpu=True).fused_layer_norm
    fused_key = EngineConfig().graph_key_fields()
    monkeypatch.setenv('TF_ENABLE_ONEDNN_OPTS', '0')
    assert not EngineConfig().fused_layer_norm
    assert EngineConfig().graph_key_fields() != fused_key  # a cached graph of the other form is not reused
    assert EngineConfig().output_key_fields() == EngineConfig(on_gpu=True).output_key_fields()


def _executed_ops(encoder, fetch: str, rows: int) -> list:
    """The op types TensorFlow ran (after Grappler's rewrites) to compute ``fetch`` for one batch."""
    from tensorflow.core.protobuf import config_pb2

    runner = encoder.runner
    graph = runner._graph
    ids = np.full((1, rows), 2000 % encoder.bert_config.vocab_size, np.int32)
    feeds = {graph.get_tensor_by_name(f'{n}:0'): v
             for n, v in zip(('input_ids', 'input_mask', 'input_type_ids'), (ids, np.ones_like(ids), np.zeros_like(ids)))}
    meta = config_pb2.RunMetadata()
    runner._session.run(graph.get_tensor_by_name(fetch + ':0'), feeds,
                        options=config_pb2.RunOptions(output_partition_graphs=True), run_metadata=meta)
    return [node.op for part in meta.partition_graphs for node in part.node]


@pytest.mark.parametrize('layer_shards', [1, 2], ids=['whole', 'split2'])
def test_the_wide_tower_runs_one_onednn_kernel_per_layer_norm_and_the_narrow_tower_none(
        monkeypatch, tiny_google_dir, graph_cache_dir, layer_shards):
    from bert_serving.server.engine.encoder import Encoder

    monkeypatch.setenv('TF_ENABLE_ONEDNN_OPTS', '1')
    encoder = Encoder(EngineConfig(model_dir=str(tiny_google_dir), pooling_layer=(-1,), layer_shards=layer_shards,
                                   graph_tmp_dir=str(graph_cache_dir)))
    try:
        norms = 1 + 2 * encoder.bert_config.num_hidden_layers  # the embeddings', then two per block
        wide = _executed_ops(encoder, OUTPUT_NAME, 12)
        narrow = _executed_ops(encoder, NARROW_PREFIX + OUTPUT_NAME, 12)
        assert wide.count('_MklLayerNorm') == norms
        assert 'SquaredDifference' not in wide
        assert narrow.count('_MklLayerNorm') == 0
        assert narrow.count('SquaredDifference') == norms  # tf.nn.moments' variance
    finally:
        encoder.close()


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

