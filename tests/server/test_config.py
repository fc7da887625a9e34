"""EngineConfig (config.py) refuses a bad flag value while parsing, naming the flag and the values it takes."""

from __future__ import annotations

import pytest

from bert_serving.server.config import EngineConfig


@pytest.mark.parametrize('value, fragment', [
    (3, 'greater than 3'),
    (0, 'greater than 3'),
    (-1, 'greater than 3'),
    ('abc', "'abc'"),
])
def test_bad_max_seq_len(value, fragment):
    with pytest.raises(ValueError, match='max_seq_len') as info:
        EngineConfig(max_seq_len=value)
    assert fragment in str(info.value) and 'NONE' in str(info.value)


@pytest.mark.parametrize('value, expected', [(4, 4), ('128', 128), ('NONE', None), ('none', None), (None, None)])
def test_good_max_seq_len(value, expected):
    assert EngineConfig(max_seq_len=value).max_seq_len == expected


def test_unknown_pooling_strategy_lists_the_choices():
    with pytest.raises(ValueError, match="unknown pooling_strategy 'AVG'") as info:
        EngineConfig(pooling_strategy='AVG')
    for name in ('NONE', 'REDUCE_MEAN', 'REDUCE_MAX', 'REDUCE_MEAN_MAX', 'CLS_TOKEN', 'SEP_TOKEN', 'CLS_POOLED',
                 'CLASSIFICATION', 'REGRESSION'):
        assert name in str(info.value)


@pytest.mark.parametrize('value', ['x', (), ('-1', 'last')])
def test_bad_pooling_layer(value):
    with pytest.raises(ValueError, match='pooling_layer'):
        EngineConfig(pooling_layer=value)


def test_num_labels_must_be_positive():
    with pytest.raises(ValueError, match='num_labels'):
        EngineConfig(num_labels=0)
