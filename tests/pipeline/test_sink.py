"""Sink: a real Sink.run() in a thread, fed through its PULL, answering a SUB client and confirming to a
PULL that stands in for the ventilator. Every wait is a bounded poll on a socket."""
import logging
import threading
import time

import numpy as np
import pytest
import zmq

from bert_serving.client import protocol
from bert_serving.client.protocol import ErrorCode
from bert_serving.server.pipeline import messages as msg
from bert_serving.server.pipeline import publisher as publisher_module
from bert_serving.server.pipeline.messages import Piece
from bert_serving.server.pipeline.sink import Sink, SinkConfig

WAIT_SECONDS = 10.0  # bound of every wait; a healthy sink answers in milliseconds
SECRET = bytes(range(32))  # the tag key the ventilator would share with the sink


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)

    def messages(self, level=logging.WARNING):
        return [r.getMessage() for r in self.records if r.levelno >= level]


class SinkHarness:
    """The sink's neighbours: a PUSH feeding it, a PULL on its feedback address, SUB clients."""

    def __init__(self, tmp_path, port_out):
        self.ctx = zmq.Context()
        self.settings = SinkConfig(sink_addr=f'ipc://{tmp_path}/sink', port_out=port_out,
                                     feedback_addr=f'ipc://{tmp_path}/feedback', bind_host='127.0.0.1',
                                     tag_secret=SECRET.hex())
        self.feedback = self._socket(zmq.PULL)
        self.feedback.bind(self.settings.feedback_addr)
        self.push = self._socket(zmq.PUSH)
        self.push.connect(self.settings.sink_addr)
        self.subs = []
        self.confirmed, self.finished = [], []
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.sink = Sink(self.settings, self.stop, on_ready=self.ready.set)
        self.thread = threading.Thread(target=self.sink.run, name='sink', daemon=True)

    def _socket(self, kind):
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        return sock

    def start(self):
        self.thread.start()
        assert self.ready.wait(WAIT_SECONDS), 'the sink did not bind its sockets'

    def close(self):
        self.stop.set()
        self.thread.join(WAIT_SECONDS)
        alive = self.thread.is_alive()
        for sock in [self.push, self.feedback] + self.subs:
            sock.close()
        self.ctx.term()
        assert not alive, 'the sink did not stop on its stop event'

    def send(self, frames):
        self.push.send_multipart(frames)

    def client(self, identity: bytes):
        sub = self._socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, identity)
        sub.connect(f'tcp://127.0.0.1:{self.settings.port_out}')
        self.subs.append(sub)
        return sub

    def wait_subscribed(self, *identities: bytes, refused: int = 0):
        """Waits until the sink has taken these identities' subscriptions (and refused ``refused``)."""
        publisher = self.sink.publisher
        deadline = time.monotonic() + WAIT_SECONDS
        while not (set(identities) <= set(publisher.subscribers) and publisher.refused >= refused):
            if time.monotonic() > deadline:
                pytest.fail(f'subscriptions so far: {sorted(publisher.subscribers)}, {publisher.refused} refused')
            time.sleep(0.01)

    def reply(self, sub) -> protocol.Reply:
        if not sub.poll(WAIT_SECONDS * 1000):
            pytest.fail(f'no reply within {WAIT_SECONDS:g}s')
        return protocol.unpack_reply(sub.recv_multipart())

    def wait_feedback(self, confirmed=(), finished=()):
        """Reads feedback until these piece ids were confirmed and these serials finished."""
        deadline = time.monotonic() + WAIT_SECONDS
        while not (set(confirmed) <= set(self.confirmed) and set(finished) <= set(self.finished)):
            left = deadline - time.monotonic()
            if left <= 0 or not self.feedback.poll(left * 1000):
                pytest.fail(f'feedback so far: confirmed {self.confirmed}, finished {self.finished}')
            fb = msg.unpack_feedback(self.feedback.recv_multipart())
            (self.confirmed if fb.kind == msg.CONFIRM else self.finished).extend(fb.ids)


@pytest.fixture
def records():
    handler = _Records()
    logger = logging.getLogger('bert_serving.SINK')
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


@pytest.fixture
def harness(tmp_path, free_port, records):
    h = SinkHarness(tmp_path, free_port())
    h.start()
    yield h
    h.close()


def piece(client, req_id, serial, piece_id, rows=(0,)):
    """A piece as the ventilator dispatches it to a local worker: with its tag."""
    tag = msg.piece_tag(SECRET, msg.LOCAL_CHANNEL, client, req_id, serial, piece_id)
    return Piece(client, req_id, rows=list(rows), texts=[''] * len(rows), serial=serial, piece_id=piece_id, tag=tag)


def result(client, req_id, serial, piece_id, rows, array, tokens=None):
    return msg.pack_result(piece(client, req_id, serial, piece_id, rows), np.asarray(array, dtype=np.float32), tokens)


def rows_of(n, width=4, offset=0.0):
    """Row i is filled with i + offset: [n, width] float32."""
    return np.repeat(np.arange(n, dtype=np.float32)[:, None] + offset, width, axis=1)


def test_pieces_out_of_order_and_before_register_come_back_in_request_order(harness):
    sub = harness.client(b'c1')
    full = rows_of(6)
    order = [[4, 1], [5, 0, 3]]
    harness.send(result(b'c1', 1, 10, 101, order[0], full[order[0]]))
    harness.send(result(b'c1', 1, 10, 102, order[1], full[order[1]]))
    harness.send(msg.pack_register(b'c1', 1, n=6, serial=10, timeout=None))
    harness.send(result(b'c1', 1, 10, 103, [2], full[[2]], ))
    reply = harness.reply(sub)
    assert (reply.kind, reply.req_id) == ('result', 1)
    np.testing.assert_array_equal(reply.array, full)
    harness.wait_feedback(confirmed=[101, 102, 103], finished=[10])


def test_one_register_and_one_result_answer_many_requests(harness):
    """What a worker sends after one model call: the pieces of several clients' requests in one
    RESULT, after one REGISTER of them all; a piece with a forged tag among them is dropped alone."""
    subs = {c: harness.client(c) for c in (b'a', b'b', b'c')}
    harness.wait_subscribed(*subs)
    harness.send(msg.pack_registers([msg.register_entry(c, 7, n=1, serial=s, timeout=None)
                                     for s, c in enumerate(subs, 1)]))
    forged = msg.result_entry(Piece(b'c', 7, [0], [''], serial=3, piece_id=33, tag='0' * 32), rows_of(1, offset=9), None)
    harness.send(msg.pack_results([msg.result_entry(piece(b'a', 7, 1, 31), rows_of(1, offset=1), None), forged,
                                   msg.result_entry(piece(b'b', 7, 2, 32), rows_of(1, offset=2), None)]))
    for c, value in ((b'a', 1), (b'b', 2)):
        reply = harness.reply(subs[c])
        assert (reply.kind, reply.req_id) == ('result', 7)
        np.testing.assert_array_equal(reply.array, rows_of(1, offset=value))
    harness.wait_feedback(confirmed=[31, 32], finished=[1, 2])
    assert harness.sink.dropped_messages == 1 and 33 not in harness.confirmed
    assert not subs[b'c'].poll(200)  # its real piece is still to come
    harness.send(result(b'c', 7, 3, 34, [0], rows_of(1, offset=3)))
    np.testing.assert_array_equal(harness.reply(subs[b'c']).array, rows_of(1, offset=3))


def test_tokens_come_back_in_request_order(harness):
    sub = harness.client(b'c')
    harness.send(msg.pack_register(b'c', 2, n=3, serial=1, timeout=None))
    harness.send(result(b'c', 2, 1, 1, [2, 0], rows_of(3)[[2, 0]], tokens=[['t2'], ['t0']]))
    harness.send(result(b'c', 2, 1, 2, [1], rows_of(3)[[1]], tokens=[['t1']]))
    assert harness.reply(sub).tokens == [['t0'], ['t1'], ['t2']]


def test_token_level_pieces_are_zero_padded_to_the_longest(harness):
    sub = harness.client(b'c')
    rng = np.random.default_rng(0)
    short, long = rng.standard_normal((2, 3, 4)), rng.standard_normal((1, 5, 4))
    harness.send(msg.pack_register(b'c', 1, n=3, serial=1, timeout=None))
    harness.send(result(b'c', 1, 1, 1, [0, 2], short))
    harness.send(result(b'c', 1, 1, 2, [1], long))
    reply = harness.reply(sub)
    assert reply.array.shape == (3, 5, 4)
    np.testing.assert_array_equal(reply.array[[0, 2], :3], short.astype(np.float32))
    np.testing.assert_array_equal(reply.array[[0, 2], 3:], 0)
    np.testing.assert_array_equal(reply.array[1], long[0].astype(np.float32))


def test_a_duplicate_piece_counts_once_and_is_confirmed(harness):
    sub = harness.client(b'c')
    harness.send(msg.pack_register(b'c', 1, n=3, serial=4, timeout=None))
    harness.send(result(b'c', 1, 4, 7, [0, 1], rows_of(2)))
    harness.send(result(b'c', 1, 4, 7, [0, 1], rows_of(2, offset=100)))  # computed again after a loss
    harness.wait_feedback(confirmed=[7])
    harness.send(result(b'c', 1, 4, 8, [2], rows_of(3)[[2]]))
    np.testing.assert_array_equal(harness.reply(sub).array, rows_of(3))
    harness.wait_feedback(confirmed=[8], finished=[4])
    assert harness.confirmed.count(7) == 2  # both copies confirmed, so neither stays in flight
    assert harness.finished == [4]
    # Once more after the request finished: confirmed, not answered again.
    harness.send(result(b'c', 1, 4, 7, [0, 1], rows_of(2)))
    harness.send(msg.pack_json_reply(b'c', 99, b'{"marker": 1}'))
    marker = harness.reply(sub)
    assert (marker.kind, marker.req_id) == ('json', 99)
    harness.wait_feedback(confirmed=[7, 7, 7])


def test_a_failed_piece_fails_the_request_and_is_confirmed(harness):
    sub = harness.client(b'c')
    harness.send(msg.pack_register(b'c', 3, n=4, serial=6, timeout=None))
    harness.send(result(b'c', 3, 6, 60, [0, 1], rows_of(2)))
    harness.send(msg.pack_piece_fail(piece(b'c', 3, 6, 61), 'WORKER-0 failed on this piece: boom', ErrorCode.FAILED))
    reply = harness.reply(sub)
    assert (reply.kind, reply.req_id, reply.code) == ('error', 3, ErrorCode.FAILED)
    assert 'boom' in reply.error
    harness.wait_feedback(confirmed=[60, 61], finished=[6])
    # The rest of the request arriving late is confirmed and dropped.
    harness.send(result(b'c', 3, 6, 62, [2, 3], rows_of(2)))
    harness.send(msg.pack_json_reply(b'c', 100, b'{}'))
    assert harness.reply(sub).req_id == 100
    harness.wait_feedback(confirmed=[62])
    assert harness.finished == [6]


def test_a_refusal_before_register_is_published_with_its_code(harness):
    sub = harness.client(b'c')
    harness.send(msg.pack_fail(b'c', 5, 'server busy: retry shortly', code=ErrorCode.BUSY))
    reply = harness.reply(sub)
    assert (reply.kind, reply.req_id, reply.code) == ('error', 5, ErrorCode.BUSY)
    assert reply.retry_after is not None and reply.retry_after > 0


@pytest.mark.parametrize('code', ['no-such-code', 5, None, ['failed']])
def test_unknown_error_codes_become_failed(harness, code):
    sub = harness.client(b'c')
    harness.send(msg.pack_register(b'c', 1, n=2, serial=3, timeout=None))
    harness.send(msg.pack_fail(b'c', 1, 'odd code', code=code, serial=3))
    reply = harness.reply(sub)
    assert (reply.kind, reply.code, reply.error) == ('error', ErrorCode.FAILED, 'odd code')
    harness.wait_feedback(finished=[3])


def test_a_request_past_its_timeout_fails_with_timeout(harness):
    sub = harness.client(b'c')
    harness.send(msg.pack_register(b'c', 8, n=2, serial=12, timeout=0.3))
    harness.send(result(b'c', 8, 12, 120, [0], rows_of(1)))
    reply = harness.reply(sub)
    assert (reply.kind, reply.req_id, reply.code) == ('error', 8, ErrorCode.TIMEOUT)
    assert '-request_timeout 0.3s' in reply.error
    harness.wait_feedback(confirmed=[120], finished=[12])
    harness.send(result(b'c', 8, 12, 121, [1], rows_of(1)))  # too late: confirmed, no second reply
    harness.send(msg.pack_json_reply(b'c', 9, b'{}'))
    assert harness.reply(sub).req_id == 9
    harness.wait_feedback(confirmed=[121])


def test_a_request_that_keeps_making_progress_outlives_its_timeout(harness):
    # -request_timeout bounds the time without progress, not the request: ten pieces, each well
    # within the timeout of the one before, span twice the timeout.
    sub = harness.client(b'c')
    harness.send(msg.pack_register(b'c', 5, n=10, serial=20, timeout=1.5))
    for i in range(10):
        time.sleep(0.3)
        harness.send(result(b'c', 5, 20, 200 + i, [i], rows_of(1, offset=i)))
    reply = harness.reply(sub)
    assert (reply.kind, reply.req_id) == ('result', 5), reply.error
    np.testing.assert_array_equal(reply.array, rows_of(10))
    harness.wait_feedback(finished=[20])


def test_replies_wait_for_a_client_that_subscribes_late(harness):
    harness.send(msg.pack_register(b'late', 1, n=2, serial=1, timeout=None))
    harness.send(result(b'late', 1, 1, 1, [0, 1], rows_of(2)))
    harness.send(msg.pack_register(b'late', 2, n=1, serial=2, timeout=None))
    harness.send(msg.pack_fail(b'late', 2, 'failed', code=ErrorCode.FAILED, serial=2))
    harness.wait_feedback(finished=[1, 2])  # both replies are published (held) by now
    sub = harness.client(b'late')
    first, second = harness.reply(sub), harness.reply(sub)
    assert (first.kind, first.req_id, second.kind, second.req_id) == ('result', 1, 'error', 2)
    np.testing.assert_array_equal(first.array, rows_of(2))


def test_held_replies_are_bounded_oldest_dropped_first(harness, records, monkeypatch):
    monkeypatch.setattr(publisher_module, 'MAX_HELD', 2)
    for serial in (1, 2, 3):
        harness.send(msg.pack_register(b'away', serial, n=1, serial=serial, timeout=None))
        harness.send(msg.pack_fail(b'away', serial, f'reply {serial}', code=ErrorCode.FAILED, serial=serial))
    harness.wait_feedback(finished=[1, 2, 3])
    sub = harness.client(b'away')
    # Held replies go out oldest first: had reply 1 been kept, it would come first.
    assert [harness.reply(sub).req_id for _ in range(2)] == [2, 3]
    assert any('dropped a held reply' in m and "b'away'" in m for m in records.messages())


def test_a_malformed_message_is_logged_and_dropped(harness, records):
    sub = harness.client(b'c')
    # JSON holds Infinity and integers of any size: int() of those raises OverflowError, which must
    # not end the sink's loop either.
    infinite = [msg.RESULT, b'{"pieces": [{"client": "c", "req_id": Infinity, "serial": 1, "piece": 1, "rows": [0], '
                            b'"dtype": "float32", "shape": [1, 1]}]}', b'\0' * 4]
    for frames in ([b'JUNK'], [msg.RESULT, b'c', b'1', b'{', b''], [msg.REGISTER, b'c', b'x', b'{}'],
                   [b'WHAT', b'c', b'1', b'{}'], infinite,
                   [msg.REGISTER, b'{"requests": [{"client": "c", "req_id": 1, "n": 1, "serial": 1e999}]}'],
                   [msg.FAIL, b'c', b'1', b'{"message": "m", "serial": Infinity}']):
        harness.send(frames)
    harness.send(msg.pack_register(b'c', 1, n=1, serial=1, timeout=None))
    harness.send(result(b'c', 1, 1, 1, [0], rows_of(1)))
    assert harness.reply(sub).kind == 'result'
    assert len([m for m in records.messages() if 'malformed internal message' in m]) == 7


def test_a_piece_that_cannot_be_assembled_fails_its_request(harness, records):
    # Pieces whose widths differ cannot be stacked: the client gets an error, not silence.
    sub = harness.client(b'c')
    harness.send(msg.pack_register(b'c', 1, n=2, serial=1, timeout=None))
    harness.send(result(b'c', 1, 1, 1, [0], rows_of(1, width=4)))
    harness.send(result(b'c', 1, 1, 2, [1], rows_of(1, width=5)))
    reply = harness.reply(sub)
    assert (reply.kind, reply.req_id, reply.code) == ('error', 1, ErrorCode.FAILED)
    harness.wait_feedback(confirmed=[1, 2], finished=[1])
    harness.send(msg.pack_json_reply(b'c', 2, b'{}'))
    assert harness.reply(sub).req_id == 2


def test_json_replies_are_published_as_is(harness):
    sub = harness.client(b'c')
    harness.send(msg.pack_json_reply(b'c', 4, b'{"server_version": "1.10.0"}'))
    reply = harness.reply(sub)
    assert (reply.kind, reply.req_id, reply.data) == ('json', 4, {'server_version': '1.10.0'})


def test_clients_get_only_their_own_replies(harness):
    a, b = harness.client(b'client-a'), harness.client(b'client-b')
    harness.send(msg.pack_json_reply(b'client-b', 1, b'"for b"'))
    harness.send(msg.pack_json_reply(b'client-a', 2, b'"for a"'))
    assert harness.reply(a).data == 'for a'
    assert harness.reply(b).data == 'for b'


def test_a_client_that_never_reads_holds_up_only_its_own_replies_within_a_byte_bound(harness, records, monkeypatch):
    monkeypatch.setattr(publisher_module, 'CLIENT_BACKLOG_BYTES', 300_000)
    slow = harness.client(b'slow')
    slow.setsockopt(zmq.RCVHWM, 1)
    fast = harness.client(b'fast')
    harness.wait_subscribed(b'slow', b'fast')
    body = b'"' + b'x' * 100_000 + b'"'
    for req_id in range(400):  # 40 MB: past ZeroMQ's queue (SNDHWM replies) and the socket buffers
        harness.send(msg.pack_json_reply(b'slow', req_id, body))
    harness.send(msg.pack_json_reply(b'fast', 1, b'{"served": true}'))
    reply = harness.reply(fast)
    assert (reply.kind, reply.data) == ('json', {'served': True})
    deadline = time.monotonic() + WAIT_SECONDS
    while not any('does not read its replies' in m for m in records.messages()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert any('does not read its replies' in m for m in records.messages())
    topic = protocol.reply_topic(b'slow')
    assert 0 < harness.sink.publisher.blocked.bytes[topic] <= 300_000 + len(body) + 100


def test_replies_reach_only_whole_identity_subscriptions(harness):
    spies = [harness.client(topic) for topic in (b'', b'c', b'cl', b'client-')]
    own = harness.client(b'client-a')
    harness.wait_subscribed(b'c', b'cl', b'client-', b'client-a', refused=1)  # b'' is no identity: refused
    harness.send(msg.pack_json_reply(b'client-a', 1, b'"mine"'))
    assert harness.reply(own).data == 'mine'
    poller = zmq.Poller()
    for spy in spies:
        poller.register(spy, zmq.POLLIN)
    assert poller.poll(300) == []


def _metric_series(block, **labels):
    return {tuple(sorted(s['labels'].items())): s for s in block['series']}.get(tuple(sorted(labels.items())))


def test_every_request_end_is_counted_and_a_status_carries_the_metrics(harness):
    """An answered request (two pieces, two model calls), a refusal, a request failed with a lost
    worker and one past its timeout: each counted once by door and outcome, the answered one timed
    from when the ventilator received it; SHOW_STATUS goes out with the sink's metrics added."""
    proxy = protocol.HTTP_PROXY_PREFIX + b'1'
    sub, proxy_sub = harness.client(b'c'), harness.client(proxy)
    received = time.monotonic()
    harness.send(msg.pack_register(b'c', 1, n=3, serial=1, timeout=None, received=received))
    first, second = piece(b'c', 1, 1, 10, [0, 1]), piece(b'c', 1, 1, 11, [2])
    harness.send(msg.pack_result(first, rows_of(2), None, queue=0.02, model=0.05,
                                 call={'rows': 2, 'padded': 20, 'lengths': [6, 10]}))
    harness.send(msg.pack_result(second, rows_of(1, offset=2), None, queue=0.01, model=0.03,
                                 call={'rows': 1, 'padded': 8, 'lengths': [8]}))
    assert harness.reply(sub).kind == 'result'
    harness.send(msg.pack_fail(proxy, 2, 'server busy', code=ErrorCode.BUSY, received=time.monotonic()))
    harness.send(msg.pack_register(proxy, 3, n=1, serial=2, timeout=None, received=time.monotonic()))
    harness.send(msg.pack_fail(proxy, 3, 'lost twice', code=ErrorCode.FAILED, serial=2, outcome='worker_lost'))
    harness.send(msg.pack_register(b'c', 4, n=1, serial=3, timeout=0.2, received=time.monotonic()))
    assert [harness.reply(proxy_sub).code for _ in range(2)] == [ErrorCode.BUSY, ErrorCode.FAILED]
    assert harness.reply(sub).code == ErrorCode.TIMEOUT
    harness.send(msg.pack_status(b'c', 5, b'{"ready": true}'))
    reply = harness.reply(sub)
    assert (reply.kind, reply.req_id, reply.data['ready']) == ('json', 5, True)
    metrics = reply.data['metrics']
    assert {(r['door'], r['outcome']): r['count'] for r in metrics['requests']} == {
        ('zmq', 'ok'): 1, ('http', 'busy'): 1, ('http', 'worker_lost'): 1, ('zmq', 'timeout'): 1}
    hist = metrics['histograms']
    ok = _metric_series(hist['request_duration_seconds'], door='zmq', outcome='ok')
    assert ok['count'] == 1 and 0 < ok['sum'] < time.monotonic() - received
    assert _metric_series(hist['request_duration_seconds'], door='zmq', outcome='timeout')['sum'] >= 0.2
    assert _metric_series(hist['request_queue_seconds'], door='zmq')['sum'] == pytest.approx(0.01)  # the first to start
    assert _metric_series(hist['request_model_seconds'], door='zmq')['sum'] == pytest.approx(0.08)  # both calls
    assert _metric_series(hist['request_sink_seconds'], door='zmq')['count'] == 1
    assert _metric_series(hist['request_queue_seconds'], door='http')['count'] == 0
    assert _metric_series(hist['batch_rows'])['sum'] == 3 and _metric_series(hist['batch_padded_tokens'])['sum'] == 28
    assert _metric_series(hist['input_word_pieces'])['count'] == 3
    assert metrics['sentences'] == {'zmq': 3, 'http': 0}
    assert metrics['last_minute']['batch_rows_avg'] == 1.5
