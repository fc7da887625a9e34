"""A worker killed with SIGKILL while requests flow: no request hangs or comes back wrong, a new
worker takes its place, and the server goes on serving."""
from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest
import zmq

from bert_serving.client import BertServerError
from bert_serving.client.protocol import unpack_reply
from bert_serving.server.pipeline import messages as msg

from service_support import FAKE, sentence, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

RECOVERY_SECONDS = 30  # a new fake worker is ready in about a second


class Traffic(threading.Thread):
    """Sends requests of 1 to 20 known inputs, one after another, until stopped.

    Attributes:
        outcomes: ('ok' | 'server error' | 'wrong' | 'other', detail), one per request.
    """

    def __init__(self, running, expected):
        super().__init__(name='traffic', daemon=True)
        self.running, self.expected = running, expected
        self.outcomes = []
        self.stop = threading.Event()

    def run(self):
        texts_pool = [sentence(i) for i in range(2000, 2060)]
        with self.running.client() as bc:
            i = 0
            while not self.stop.is_set():
                texts = texts_pool[i % 40:i % 40 + 1 + i % 20]
                i += 1
                try:
                    vectors = bc.encode(texts)
                except BertServerError as e:
                    self.outcomes.append(('server error', str(e)))
                    continue
                except Exception as e:  # noqa: BLE001 - a timeout means a request was lost
                    self.outcomes.append(('other', repr(e)))
                    continue
                ok = np.allclose(vectors, self.expected.many(texts), atol=1e-5)
                self.outcomes.append(('ok' if ok else 'wrong', len(texts)))


def test_killed_worker_is_replaced_and_no_request_is_lost(server_factory, fake_vectors):
    running = server_factory(FAKE, ['-num_worker', '2', '-max_batch_size', '4'])
    before = running.workers()
    assert sorted(p.name for p in before) == ['WORKER-0', 'WORKER-1']
    traffic = Traffic(running, fake_vectors)
    traffic.start()
    try:
        assert wait_until(lambda: len(traffic.outcomes) >= 20, 60, 0.05), 'no traffic before the kill'
        victim = before[0]
        with running.client() as bc:
            os.kill(victim.pid, signal.SIGKILL)
            sent_before_kill = len(traffic.outcomes)
            ready_workers = lambda: bc.server_status['num_ready_worker']  # noqa: E731
            assert wait_until(lambda: ready_workers() == 1, 30, 0.05), 'the server did not notice the dead worker'

            def replaced():
                alive = running.workers()
                return (victim.pid not in {p.pid for p in alive}
                        and sorted(p.name for p in alive) == ['WORKER-0', 'WORKER-1'])

            assert wait_until(replaced, RECOVERY_SECONDS), 'no new worker took the place of the killed one'
            assert wait_until(lambda: ready_workers() == 2, RECOVERY_SECONDS), 'the new worker never became ready'
            done_after_recovery = len(traffic.outcomes)
            assert wait_until(lambda: len(traffic.outcomes) >= done_after_recovery + 20, 60, 0.05)
            assert ready_workers() == 2
    finally:
        traffic.stop.set()
        traffic.join(timeout=60)
    assert not traffic.is_alive(), 'a request hangs'
    kinds = [kind for kind, _ in traffic.outcomes]
    assert 'wrong' not in kinds, 'a request came back with wrong vectors'
    assert 'other' not in kinds, [detail for kind, detail in traffic.outcomes if kind == 'other']
    assert kinds.count('ok') > sent_before_kill
    new = next(p for p in running.workers() if p.name == victim.name)
    assert new.pid != victim.pid
    texts = [sentence(i) for i in range(3000, 3010)]
    with running.client() as bc:
        np.testing.assert_allclose(bc.encode(texts), fake_vectors.many(texts), atol=1e-5)

    # An idle worker killed just before a burst: batches may go to it before its death is seen
    # (lost in its pipe, or refused by the ROUTER); all must still come back right.
    idle = next(p for p in running.workers() if p.name == 'WORKER-1')
    chunks = [[sentence(3100 + 10 * k + j) for j in range(1 + k % 7)] for k in range(40)]
    with running.client() as bc:
        os.kill(idle.pid, signal.SIGKILL)
        for chunk in chunks:
            bc.encode(chunk, blocking=False)
        results = bc.fetch_all()
        for chunk, got in zip(chunks, results):
            np.testing.assert_allclose(got, fake_vectors.many(chunk), atol=1e-5)
        assert wait_until(lambda: bc.server_status['num_ready_worker'] == 2 and len(running.workers()) == 2,
                          RECOVERY_SECONDS)
        time.sleep(1)
        assert bc.server_status['num_ready_worker'] == 2  # counted once, not 3


def _tagged(server, piece):
    """The piece as the ventilator hands it to a local worker: tagged with the server's secret."""
    piece.tag = msg.piece_tag(server.tag_secret, msg.LOCAL_CHANNEL, piece.client, piece.req_id, piece.serial,
                              piece.piece_id)
    return piece


def test_sink_ignores_a_piece_delivered_twice(shared_server, raw_peer):
    """A worker that dies after sending a piece's result, but before the ventilator hears DONE,
    has that piece re-queued and computed again: the sink gets the same rows twice and must
    neither finish the request early (a row still missing) nor count rows twice."""
    client, req_id = b'sink-duplicate-test', 9
    peer = raw_peer(shared_server, client)
    first = _tagged(shared_server.server, msg.Piece(client, req_id, [0, 2], ['a', 'c'], serial=7, piece_id=1))
    second = _tagged(shared_server.server, msg.Piece(client, req_id, [1], ['b'], serial=7, piece_id=2))
    ones, twos = np.ones((2, 4), np.float32), np.full((1, 4), 2, np.float32)
    with zmq.Context() as ctx:
        push = ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 2000)
        push.connect(shared_server.server.addresses.sink)
        push.send_multipart(msg.pack_register(client, req_id, 3, 7, None))
        push.send_multipart(msg.pack_result(first, ones, None))
        # The re-queued copy arrives before the missing row: one PUSH socket keeps the order.
        push.send_multipart(msg.pack_result(first, ones, None))
        push.send_multipart(msg.pack_result(second, twos, None))
        push.close()
    reply = peer.recv()
    assert reply is not None, 'no reply'
    parsed = unpack_reply(reply)
    assert parsed.kind == 'result' and parsed.req_id == req_id
    np.testing.assert_array_equal(parsed.array, [[1] * 4, [2] * 4, [1] * 4])
    assert peer.recv(timeout_ms=500) is None, 'a second reply for the same request'


def test_sink_serves_a_reused_identity_and_request_id(shared_server, raw_peer):
    """A client restarted with a fixed identity sends req_id 1 again: a new request (new serial),
    answered even though the old request with the same identity and id was answered already,
    while a late duplicate of the old one is still dropped."""
    client, req_id = b'fixed-identity-test', 1
    peer = raw_peer(shared_server, client)
    with zmq.Context() as ctx:
        push = ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 2000)
        push.connect(shared_server.server.addresses.sink)
        for serial, value in ((11, 1.0), (12, 2.0)):
            piece = _tagged(shared_server.server, msg.Piece(client, req_id, [0], ['a'], serial=serial, piece_id=serial))
            push.send_multipart(msg.pack_register(client, req_id, 1, serial, None))
            push.send_multipart(msg.pack_result(piece, np.full((1, 4), value, np.float32), None))
            reply = peer.recv()
            assert reply is not None, f'no reply for serial {serial}'
            np.testing.assert_array_equal(unpack_reply(reply).array, [[value] * 4])
        late = _tagged(shared_server.server, msg.Piece(client, req_id, [0], ['a'], serial=11, piece_id=11))
        push.send_multipart(msg.pack_result(late, np.full((1, 4), 9.0, np.float32), None))
        push.close()
    assert peer.recv(timeout_ms=500) is None, 'a late piece of a finished request was published'


def test_dead_sink_stops_the_server(server_factory):
    """Without its sink a server could take requests but answer none: it stops and says why."""
    running = server_factory(FAKE, ['-num_worker', '1'])
    sink = next(p for p in running.server.processes if p.name == 'SINK')
    os.kill(sink.pid, signal.SIGKILL)
    running.server.join(timeout=30)
    assert not running.server.is_alive(), 'the server runs on without its sink'
    assert 'SINK' in (running.server.failure or '')
    assert not any(p.is_alive() for p in running.server.processes)
