"""Both model layouts load to the same network, and the graph agrees with a plain numpy BERT
(tests/numpy_bert.py), which proves it independently of the reference data.

Dimension legend: B batch, T tokens, H hidden width.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from numpy_bert import inputs_from_tokens, numpy_bert, numpy_pool, special_positions
from tiny_model import tiny_weights, write_tiny_model

# float32 graph against a float64 oracle; tiny-model activations are O(1).
ATOL, RTOL = 1e-5, 1e-4

STRATEGY_CASES = [
    dict(pooling_strategy='REDUCE_MEAN', pooling_layer=(-2,)),
    dict(pooling_strategy='REDUCE_MEAN', pooling_layer=(-1,), mask_cls_sep=True),
    dict(pooling_strategy='REDUCE_MAX', pooling_layer=(-1,)),
    dict(pooling_strategy='REDUCE_MEAN_MAX', pooling_layer=(0, -1)),
    dict(pooling_strategy='CLS_TOKEN', pooling_layer=(-1,)),
    dict(pooling_strategy='SEP_TOKEN', pooling_layer=(-2,)),
    dict(pooling_strategy='CLS_POOLED'),
    dict(pooling_strategy='NONE', pooling_layer=(-1,)),
]

# -mask_cls_sep masks [CLS]/[SEP] as attention keys too, so it changes every strategy's numbers.
MASK_CLS_SEP_CASES = [
    dict(pooling_strategy='REDUCE_MAX', pooling_layer=(-1,), mask_cls_sep=True),
    dict(pooling_strategy='CLS_TOKEN', pooling_layer=(-1,), mask_cls_sep=True),
    dict(pooling_strategy='SEP_TOKEN', pooling_layer=(-1,), mask_cls_sep=True),
    dict(pooling_strategy='CLS_POOLED', mask_cls_sep=True),
    dict(pooling_strategy='NONE', pooling_layer=(-2,), mask_cls_sep=True),
]


def _case_id(case: dict) -> str:
    return '-'.join(str(v) if not isinstance(v, tuple) else '_'.join(map(str, v)) for v in case.values())


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def tiny_hf_prefixed_dir(tmp_path_factory) -> Path:
    """The seed-0 tiny model as BertForSequenceClassification saves it: every key under ``bert.``."""
    return write_tiny_model(tmp_path_factory.mktemp('tiny-hf-prefixed'), 'hf', prefix='bert.')


@pytest.fixture(scope='module')
def base_weights() -> dict:
    return tiny_weights(0)


# --- layouts -------------------------------------------------------------------------------------


@pytest.mark.parametrize('case', STRATEGY_CASES, ids=_case_id)
def test_layouts_give_identical_vectors(case, tiny_hf_dir, tiny_hf_prefixed_dir, tiny_google_dir,
                                        tiny_texts, encoders):
    results = {}
    for name, model_dir in (('hf', tiny_hf_dir), ('hf-prefixed', tiny_hf_prefixed_dir),
                            ('google', tiny_google_dir)):
        encoder = encoders.get(model_dir=str(model_dir), **case)
        results[name] = encoder.encode(tiny_texts)

    vectors, tokens = results['hf']
    assert encoders.get(model_dir=str(tiny_google_dir), **case).graph.files.layout == 'google'
    assert encoders.get(model_dir=str(tiny_hf_dir), **case).graph.files.layout == 'hf'
    for name in ('hf-prefixed', 'google'):
        other_vectors, other_tokens = results[name]
        assert other_tokens == tokens
        np.testing.assert_allclose(other_vectors, vectors, atol=1e-6, rtol=0, err_msg=name)


# layer_shards 2: each block split into two heads and two halves of the feed-forward units.
@pytest.mark.parametrize('layer_shards', [1, 2], ids=['whole', 'split2'])
@pytest.mark.parametrize('case', STRATEGY_CASES + MASK_CLS_SEP_CASES, ids=_case_id)
def test_graph_equals_numpy_bert(case, layer_shards, tiny_google_dir, base_weights, tiny_texts, encoders):
    encoder = encoders.get(model_dir=str(tiny_google_dir), layer_shards=layer_shards, **case)
    vectors, tokens = encoder.encode(tiny_texts)

    ids, mask, types = inputs_from_tokens(tiny_google_dir / 'vocab.txt', tokens)
    masked_keys = special_positions(tokens) if case.get('mask_cls_sep') else None
    layers, pooled = numpy_bert(base_weights, ids, mask, types, masked_keys=masked_keys)
    expected = numpy_pool(case, layers, pooled, mask, tokens)

    if case['pooling_strategy'] == 'NONE':
        assert vectors.shape == (len(tiny_texts), 25, 32)  # T is max_seq_len (25 by default)
        assert not vectors[:, expected.shape[1]:].any()
        vectors = vectors[:, :expected.shape[1]]
    np.testing.assert_allclose(vectors, expected, atol=ATOL, rtol=RTOL)
