"""How a CPU worker splits each transformer block, and the threads its session gets for that.

The vectors of a split graph are checked against the reference (test_reference.py) and against
the numpy BERT (test_layouts.py); here: the plan, and that the parts really are independent.
"""
from __future__ import annotations

import pytest

from bert_serving.server.config import EngineConfig
from bert_serving.server.engine.checkpoint import BertConfig
from bert_serving.server.engine.devices import planned_layer_shards, session_threads
from bert_serving.server.engine.modeling import NARROW_PREFIX, build_graph_def, layer_shards
from bert_serving.server.errors import ConfigError


def _bert(heads: int, intermediate: int) -> BertConfig:
    return BertConfig(vocab_size=10, hidden_size=heads * 4, num_hidden_layers=1, num_attention_heads=heads,
                      intermediate_size=intermediate)


@pytest.mark.parametrize('requested, heads, intermediate, expected', [
    (1, 12, 1536, 1),
    (2, 12, 1536, 2),
    (4, 12, 1536, 4),
    (2, 3, 36, 1),    # three heads cannot be split in two
    (2, 4, 30, 2),
    (2, 4, 31, 1),    # nor 31 feed-forward units
    (4, 6, 24, 3),    # the largest count up to 4 that divides both
])
def test_a_block_is_split_only_where_heads_and_units_divide_evenly(requested, heads, intermediate, expected):
    assert layer_shards(requested, _bert(heads, intermediate)) == expected


@pytest.mark.parametrize('threads, shards, intra_inter', [
    (1, 1, (1, 1)),
    (2, 1, (2, 1)),   # a whole block: the cores go to each op, as before the split
    (2, 2, (1, 2)),   # one inter-op thread per part, each op on its own core
    (8, 2, (4, 2)),
])
def test_session_threads_give_one_inter_op_thread_per_part(threads, shards, intra_inter):
    assert session_threads(threads, shards) == intra_inter


@pytest.mark.parametrize('threads, shards', [(1, 1), (2, 2), (3, 2), (16, 2)])
def test_a_worker_splits_in_two_when_it_has_two_cores_or_more(threads, shards):
    assert planned_layer_shards(threads) == shards
    assert planned_layer_shards(threads, on_gpu=True) == 1  # a graph that also serves a GPU stays whole


def test_an_engine_config_survives_its_json_form():
    config = EngineConfig(pooling_strategy='CLS_TOKEN', pooling_layer=(-1, -2), layer_shards=2, max_seq_len=None)
    assert EngineConfig(**config.to_json()) == config


def test_layer_shards_below_one_is_a_config_error():
    with pytest.raises(ConfigError, match='layer_shards must be >= 1'):
        EngineConfig(layer_shards=0)


def test_layer_shards_is_part_of_the_graph_key_but_not_of_the_worker_fingerprint():
    whole, split = EngineConfig(), EngineConfig(layer_shards=2)
    assert whole.graph_key_fields() != split.graph_key_fields()
    assert whole.output_key_fields() == split.output_key_fields()  # a remote worker may split differently


def test_the_parts_of_a_split_block_do_not_depend_on_each_other(tiny_google_dir):
    """Within a block, part 1's attention output reads nothing of part 0's heads, and its second
    feed-forward layer nothing of part 0's units (and the other way round), so the parts can run
    side by side; the split graph has twice the dense layers of the whole one."""
    from bert_serving.server.engine.checkpoint import load_bert_config, load_weights, locate_model

    whole_cfg = EngineConfig(model_dir=str(tiny_google_dir), pooling_layer=(-1,))
    files = locate_model(whole_cfg)
    bc = load_bert_config(files)
    weights = load_weights(files, bc, num_layers=bc.num_hidden_layers, pooler=False)
    split = build_graph_def(EngineConfig(model_dir=str(tiny_google_dir), pooling_layer=(-1,), layer_shards=2),
                            bc, weights, cls_id=101, sep_id=102)
    whole = build_graph_def(whole_cfg, bc, weights, cls_id=101, sep_id=102)
    nodes = {n.name: n for n in split.node}

    def ancestors(name: str) -> set:
        seen, todo = set(), [name]
        while todo:
            node = nodes[todo.pop().lstrip('^').split(':')[0]]
            if node.name not in seen:
                seen.add(node.name)
                todo.extend(node.input)
        return seen

    def matmul_reading(const_name: str, narrow: bool) -> str:
        (found,) = [n.name for n in split.node if n.op == 'MatMul' and n.input[1].split(':')[0] == const_name
                    and n.name.startswith(NARROW_PREFIX) == narrow]
        return found

    def count(graph_def) -> int:
        return sum(1 for n in graph_def.node if n.op == 'MatMul')

    assert count(split) == 2 * count(whole) == 2 * 2 * 4 * bc.num_hidden_layers  # two towers each
    for narrow in (False, True):
        for layer in range(bc.num_hidden_layers):
            p = f'encoder_layer_{layer}_'
            for mine, other in ((0, 1), (1, 0)):
                attention_out = ancestors(matmul_reading(f'{p}attention_out_{mine}', narrow))
                assert f'{p}qkv_{mine}' in attention_out and f'{p}qkv_{other}' not in attention_out
                second = ancestors(matmul_reading(f'{p}output_{mine}', narrow))
                assert f'{p}intermediate_{mine}' in second and f'{p}intermediate_{other}' not in second
