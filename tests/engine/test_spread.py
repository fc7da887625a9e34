"""A run that the plan gives fewer calls than the encoder keeps in flight is dealt into that many
calls (encoder.SPREAD_MIN_TOKENS): a second call fills the gaps a call alone leaves in the
session's threads. The vectors are those of one call at a time."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from bert_serving.server.config import EngineConfig
from bert_serving.server.engine import encoder as encoder_module
from bert_serving.server.engine.encoder import ATTENTION_WIDTHS, SPREAD_MIN_TOKENS, Encoder
from bert_serving.server.engine.features import batch_sizes
from test_invariants import CountingRunner

ATOL = 1e-5


def _planner(parallel_calls: int, max_batch_size: int = 256, max_batch_tokens: int = 4096) -> Encoder:
    """An Encoder's planning alone (no graph), MiniLM's width."""
    encoder = Encoder.__new__(Encoder)
    encoder.max_batch_size, encoder.max_batch_tokens, encoder._longest = max_batch_size, max_batch_tokens, 512
    encoder._sizes = batch_sizes(max_batch_size)
    encoder._attention_tokens = ATTENTION_WIDTHS * 384
    encoder.runner = SimpleNamespace(packs=True)
    encoder.parallel_calls = parallel_calls
    return encoder


def _features(lengths):
    return [SimpleNamespace(input_ids=range(n)) for n in lengths]


def _order(features):
    return sorted(range(len(features)), key=lambda i: len(features[i].input_ids))


def _plan(encoder: Encoder, features):
    return encoder._spread(list(encoder._batches(_order(features), features)), features)


# 28 one-sentence requests of a crowd, 4 to 60 word pieces (946 in all): one call in the plan.
CROWD = [int(n) for n in np.linspace(4, 60, 28)]


def test_a_crowds_batch_is_dealt_round_robin_in_length_order_into_calls_of_about_the_same_work():
    features = _features(CROWD[::-1])  # the inputs' order does not matter
    assert len(list(_planner(1)._batches(_order(features), features))) == 1
    calls = _plan(_planner(2), features)
    assert len(calls) == 2
    assert sorted(i for call in calls for i in call) == list(range(28))
    lengths = [[len(features[i].input_ids) for i in call] for call in calls]
    assert lengths == [CROWD[0::2], CROWD[1::2]]  # each call sorted, every other input


def test_three_calls_in_flight_deal_three_ways():
    calls = _plan(_planner(3), _features(CROWD))
    assert [len(c) for c in calls] == [10, 9, 9]


@pytest.mark.parametrize('lengths, why', [
    ([20] * 12, 'under 2 x SPREAD_MIN_TOKENS word pieces'),
    ([60], 'one input'),
])
def test_a_small_run_stays_one_call(lengths, why):
    assert sum(lengths) < 2 * SPREAD_MIN_TOKENS
    assert len(_plan(_planner(2), _features(lengths))) == 1, why


@pytest.mark.parametrize('lengths, k', [([300], 2), ([200, 200], 3)])
def test_fewer_inputs_than_calls_in_flight_keep_the_plan(lengths, k):
    """One long input (-max_seq_len 512, say) is one call, not a call and an empty one."""
    assert sum(lengths) >= k * SPREAD_MIN_TOKENS
    features = _features(lengths)
    plan = list(_planner(k)._batches(_order(features), features))
    assert _planner(k)._spread(plan, features) == plan


def test_without_packed_rows_the_plan_is_kept():
    """With -xla the dense layers compute every padded slot: dealing would pad short inputs."""
    features = _features([10] * 20 + [100] * 2)
    plan = [list(range(20)), [20, 21]]
    assert _planner(2)._spread(plan, features) != plan  # packed: dealt
    planner = _planner(2)
    planner.runner = SimpleNamespace(packs=False)
    assert planner._spread(plan, features) == plan


def test_the_threshold_is_the_word_pieces_of_the_run():
    just = _features([SPREAD_MIN_TOKENS // 4] * 8)  # 2 x SPREAD_MIN_TOKENS in all
    assert len(_plan(_planner(2), just)) == 2
    short = _features([SPREAD_MIN_TOKENS // 4] * 7 + [SPREAD_MIN_TOKENS // 4 - 1])
    assert len(_plan(_planner(2), short)) == 1


def test_one_call_in_flight_or_a_plan_of_more_calls_is_kept():
    features = _features(CROWD)
    assert len(_plan(_planner(1), features)) == 1
    big = _features([30] * 400)  # 12,000 word pieces: several calls of 4,096 slots
    planner = _planner(2)
    plan = list(planner._batches(list(range(400)), big))
    assert len(plan) > 2
    assert planner._spread(plan, big) == plan


def test_a_dealt_call_over_the_budget_keeps_the_plan():
    """30 short inputs and 2 long ones, two calls in the plan within 512 slots each: dealt, each
    call would pad 16 inputs to 200 word pieces (3,200 slots)."""
    features = _features([10] * 30 + [200] * 2)
    plan = [list(range(30)), [30, 31]]
    assert _planner(2, max_batch_tokens=512)._spread(plan, features) == plan
    assert len(_planner(2)._spread(plan, features)) == 2  # within 4,096 slots: dealt
    assert _planner(2)._spread(plan, features) != plan


@pytest.mark.parametrize('pooling', ['REDUCE_MEAN', 'NONE'])
def test_a_dealt_run_gives_the_vectors_of_one_call(pooling, tiny_google_dir, graph_cache_dir, monkeypatch):
    """The tiny model, split in two parts as a CPU worker of two cores runs it: a run of 12 inputs
    becomes two calls of 6, and each vector is the one the single call gives (with NONE pooling, the
    call without the longest input fills its rows to its own length, and the rest stays zero)."""
    monkeypatch.setattr(encoder_module, 'SPREAD_MIN_TOKENS', 8)
    config = EngineConfig(model_dir=str(tiny_google_dir), graph_tmp_dir=str(graph_cache_dir), max_seq_len=None,
                          layer_shards=2, pooling_strategy=pooling)
    one, two = Encoder(config, parallel_calls=1), Encoder(config)
    try:
        assert two.parallel_calls == 2
        texts = [' '.join(['fox'] * (8 + n % 3)) for n in range(11)] + ['fox ' * 12]  # 10 to 14 word pieces
        features = one.featurize(texts)
        expected = one.run(features)
        one.runner = single = CountingRunner(one.runner)
        one.run(features)
        two.runner = dealt = CountingRunner(two.runner)
        got = two.run(features)
        assert len(single.shapes) == 1
        assert sorted(b for b, _ in dealt.shapes) == [6, 6]  # batch size 6 is one of the allowed ones
        assert dealt.most <= 2
        np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)
        long = two.featurize([' '.join(['fox'] * 20)])  # one input over 2 x the threshold: one call
        np.testing.assert_allclose(two.run(long), one.run(long), atol=ATOL, rtol=0)
    finally:
        one.close()
        two.close()


def test_one_long_input_of_the_bundled_model_is_one_call(bundled_model_dir, encoders):
    """-max_seq_len NONE lets one input hold up to 512 word pieces, more than 2 x SPREAD_MIN_TOKENS:
    a worker of two cores runs it as one call (it once made an empty second call and failed)."""
    encoder = encoders.get(model_dir=str(bundled_model_dir), max_seq_len=None, layer_shards=2)
    assert encoder.parallel_calls == 2
    features = encoder.featurize([' '.join(['the quick brown fox jumps over the lazy dog'] * 40)])
    assert len(features[0].input_ids) > 2 * SPREAD_MIN_TOKENS
    runner = encoder.runner
    encoder.runner = recorder = CountingRunner(runner)
    try:
        alone = encoder.run(features)
        twice = encoder.run(features * 2)  # two inputs: two calls of one
    finally:
        encoder.runner = runner
    assert [b for b, _ in recorder.shapes] == [1, 1, 1]
    np.testing.assert_allclose(twice, np.concatenate([alone, alone]), atol=ATOL, rtol=0)
