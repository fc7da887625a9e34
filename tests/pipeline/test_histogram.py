"""Histogram: observations land in the bucket whose bound is the first at or above them (Prometheus'
``le``), quantiles interpolate within a bucket as ``histogram_quantile`` does, and a window is the
difference of two copies. Memory is the buckets, whatever was observed."""
import pytest
from bert_serving.server.pipeline.histogram import (
    LENGTH_BUCKETS,
    ROWS_BUCKETS,
    SECONDS_BUCKETS,
    TOKENS_BUCKETS,
    Histogram,
)


def test_a_value_on_a_bound_counts_in_that_bucket_and_the_rest_in_inf():
    h = Histogram((1, 2, 4))
    for value in (0.5, 1, 1.5, 2, 4, 4.01, 1000):
        h.observe(value)
    assert h.counts == [2, 2, 1, 2]
    assert h.count == 7 and h.sum == pytest.approx(1013.01)
    assert h.to_json() == {'counts': [2, 2, 1, 2], 'sum': pytest.approx(1013.01), 'count': 7}


def test_memory_does_not_grow_with_observations():
    h = Histogram(SECONDS_BUCKETS)
    for i in range(10000):
        h.observe(i / 1000)
    assert len(h.counts) == len(SECONDS_BUCKETS) + 1 and h.count == 10000


def test_quantiles_interpolate_within_the_bucket_like_prometheus():
    h = Histogram((0.1, 0.2, 0.4))
    for _ in range(50):
        h.observe(0.05)  # bucket (0, 0.1]
    for _ in range(50):
        h.observe(0.3)  # bucket (0.2, 0.4]
    assert h.quantile(0.5) == pytest.approx(0.1)  # rank 50: the top of the first bucket
    assert h.quantile(0.75) == pytest.approx(0.3)  # rank 75: halfway through (0.2, 0.4]
    assert h.quantile(0.99) == pytest.approx(0.396)
    assert Histogram((1,)).quantile(0.5) is None
    over = Histogram((1, 2))
    over.observe(50)
    assert over.quantile(0.99) == 2  # in +Inf: the highest bound, as histogram_quantile says


def test_since_gives_the_observations_after_a_copy():
    h = Histogram((1, 10))
    h.observe(0.5)
    before = h.copy()
    h.observe(5)
    h.observe(50)
    window = h.since(before)
    assert window.counts == [0, 1, 1] and window.sum == pytest.approx(55)
    assert before.counts == [1, 0, 0], 'a copy does not move with the histogram'
    assert h.since(None).counts == h.counts


@pytest.mark.parametrize('bounds', [SECONDS_BUCKETS, ROWS_BUCKETS, TOKENS_BUCKETS, LENGTH_BUCKETS])
def test_the_server_bucket_sets_increase(bounds):
    assert list(bounds) == sorted(set(bounds)) and bounds[0] > 0
