"""RequestMetrics, the sink's record of every data request: by door (the HTTP proxy's identities, or
any other ZeroMQ client) and outcome, where an answered request's time went, the model calls' rows
and padding, and the last minute's rates and quantiles from snapshots. A test clock drives it."""
import pytest
from bert_serving.client.protocol import HTTP_PROXY_PREFIX, ErrorCode
from bert_serving.server.pipeline.request_metrics import (
    OUTCOMES,
    SNAPSHOT_SECONDS,
    WINDOW_SECONDS,
    RequestMetrics,
    door_of,
    outcome_of,
)

PROXY = HTTP_PROXY_PREFIX + b'0f3c'


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock()


def _series(block, **labels):
    [series] = [s for s in block['series'] if s['labels'] == labels]
    return series


def test_the_door_is_http_for_the_proxys_identities_only():
    assert door_of(PROXY) == 'http'
    assert door_of(b'5f1a-client') == 'zmq' and door_of(b'http-prox') == 'zmq'


@pytest.mark.parametrize('code, outcome, expected', [
    (ErrorCode.BUSY, None, 'busy'), (ErrorCode.BAD_REQUEST, None, 'bad_request'),
    (ErrorCode.TIMEOUT, None, 'timeout'), (ErrorCode.SHUTTING_DOWN, None, 'shutting_down'),
    (ErrorCode.FAILED, None, 'failed'), (None, None, 'failed'), ('odd', None, 'failed'),
    (ErrorCode.FAILED, 'worker_lost', 'worker_lost'), (ErrorCode.FAILED, 'made-up', 'failed'),
])
def test_outcome_of_a_failure(code, outcome, expected):
    assert outcome_of(code, outcome) == expected
    assert expected in OUTCOMES


def test_every_request_counts_by_door_and_outcome_and_answered_ones_by_part(clock):
    m = RequestMetrics(clock)
    m.answered(b'zmq-a', 'ok', 0.030, rows=3, queue=0.010, model=0.015, sink=0.001)
    m.answered(PROXY, 'ok', 0.200, rows=1, queue=0.150, model=0.040, sink=0.002)
    m.answered(PROXY, 'busy', 0.0004)
    m.answered(b'zmq-b', 'bad_request', None)  # the ventilator did not say when it got it: counted, not timed
    j = m.to_json()
    assert j['requests'] == [{'door': 'http', 'outcome': 'busy', 'count': 1},
                             {'door': 'http', 'outcome': 'ok', 'count': 1},
                             {'door': 'zmq', 'outcome': 'bad_request', 'count': 1},
                             {'door': 'zmq', 'outcome': 'ok', 'count': 1}]
    hist = j['histograms']
    duration = hist['request_duration_seconds']
    assert duration['labels'] == ['door', 'outcome']
    assert _series(duration, door='http', outcome='busy')['count'] == 1
    assert _series(duration, door='zmq', outcome='ok')['sum'] == pytest.approx(0.030)
    assert not [s for s in duration['series'] if s['labels']['outcome'] == 'bad_request']
    for name, zmq_sum, http_sum in (('request_queue_seconds', 0.010, 0.150), ('request_model_seconds', 0.015, 0.040),
                                    ('request_sink_seconds', 0.001, 0.002)):
        assert _series(hist[name], door='zmq')['count'] == 1 and _series(hist[name], door='http')['count'] == 1
        assert _series(hist[name], door='zmq')['sum'] == pytest.approx(zmq_sum)
        assert _series(hist[name], door='http')['sum'] == pytest.approx(http_sum)
    assert j['sentences'] == {'zmq': 3, 'http': 1}


def test_model_calls_record_rows_padding_and_each_inputs_length(clock):
    m = RequestMetrics(clock)
    m.model_call(rows=3, padded_tokens=3 * 12, lengths=[5, 12, 7])
    m.model_call(rows=1, padded_tokens=4, lengths=[4])
    hist = m.to_json()['histograms']
    assert _series(hist['batch_rows'])['count'] == 2 and _series(hist['batch_rows'])['sum'] == 4
    assert _series(hist['batch_padded_tokens'])['sum'] == 40
    lengths = _series(hist['input_word_pieces'])
    assert lengths['count'] == 4 and lengths['sum'] == 28
    assert lengths['counts'][:3] == [1, 2, 1]  # <= 4, (4, 8], (8, 16]
    minute = m.last_minute()
    assert minute['batch_rows_avg'] == 2 and minute['padding_fill'] == pytest.approx(28 / 40)


def test_last_minute_covers_the_last_sixty_seconds_from_snapshots(clock):
    m = RequestMetrics(clock)
    for _ in range(100):  # an old burst: fast requests
        m.answered(b'c', 'ok', 0.002, rows=2, queue=0.001, model=0.001, sink=0.0)
    for _ in range(int(WINDOW_SECONDS / SNAPSHOT_SECONDS) + 2):  # a quiet minute and more, then slow ones
        clock.now += SNAPSHOT_SECONDS
        m.tick()
    for _ in range(30):
        m.answered(b'c', 'ok', 0.4, rows=1, queue=0.3, model=0.09, sink=0.01)
    m.answered(b'c', 'timeout', 30.0)
    clock.now += 10
    m.tick()  # the sink ticks each turn of its loop
    minute = m.last_minute()
    assert WINDOW_SECONDS <= minute['seconds'] <= WINDOW_SECONDS + SNAPSHOT_SECONDS
    assert minute['sentences_per_second'] == pytest.approx(30 / minute['seconds'])
    assert minute['requests_per_second'] == pytest.approx(31 / minute['seconds'])
    assert minute['errors_per_second'] == pytest.approx(1 / minute['seconds'])
    assert 0.25 < minute['latency_p50'] <= 0.5 and minute['latency_p99'] <= 0.5, 'the old fast burst fell out'
    assert minute['queue_seconds_avg'] == pytest.approx(0.3) and minute['model_seconds_avg'] == pytest.approx(0.09)
    assert minute['sink_seconds_avg'] == pytest.approx(0.01)
    assert len(m._snapshots) <= WINDOW_SECONDS / SNAPSHOT_SECONDS + 2, 'the snapshots kept are bounded'


def test_just_after_the_start_the_window_is_what_there_is(clock):
    m = RequestMetrics(clock)
    empty = m.last_minute()
    assert empty['latency_p50'] is None and empty['batch_rows_avg'] is None and empty['queue_seconds_avg'] is None
    clock.now += 2
    m.answered(PROXY, 'ok', 0.01, rows=4, queue=0.002, model=0.006, sink=0.001)
    minute = m.last_minute()
    assert minute['seconds'] == pytest.approx(2) and minute['sentences_per_second'] == pytest.approx(2)
