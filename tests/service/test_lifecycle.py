"""Nothing lost, nobody waits forever (issue 9): workers that die, hang, freeze or lose their
featurize thread, and a full queue, on ``-engine fake`` servers (workers ready in about a second).

Each test breaks its own server (``server_factory``). The scheduler runs in the BertServer thread of
this process, so a test can watch its state (``server.scheduler``) to act at the right moment; it
only reads it. Expected vectors come from an in-process FakeEngine (legend: B inputs, T tokens,
W = FAKE_WIDTH = 8).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from bert_serving.client import BertServerBusyError, BertServerError
from bert_serving.client.protocol import ErrorCode, pack_request, unpack_reply
from bert_serving.server import service
from bert_serving.server.engine.fake import FAKE_WIDTH
from bert_serving.server.launcher import ChildProcess

from broken_worker import BROKEN_WORD
from service_support import FAKE, fake_expected, paused, sentence, wait_until

pytestmark = [pytest.mark.e2e]

RECOVERY_SECONDS = 30  # a fake worker is ready about a second after it starts
EXPECTED = fake_expected()  # REDUCE_MEAN, max_seq_len 25: float32 [W] per input


def _replaced(running, old_pids, count: int) -> bool:
    """True once ``count`` workers run, none of them one of ``old_pids``, and all are ready."""
    alive = running.workers()
    return (len(alive) == count and not {p.pid for p in alive} & set(old_pids)
            and len(running.server.scheduler.workers) == count)


def test_worker_killed_after_done_before_its_result_reached_the_sink(server_factory, raw_peer):
    """The worker said DONE for every batch, but its results (bigger than the socket buffers) are
    still in its own memory because the sink is frozen; then it is killed. The pieces were never
    confirmed, so they are computed again: the request is answered once, and right."""
    running = server_factory(FAKE, ['-num_worker', '1', '-pooling_strategy', 'NONE', '-max_seq_len', '64'])
    scheduler = running.server.scheduler
    sink = next(p for p in running.server.processes if p.name == 'SINK')
    worker = running.workers()[0]
    texts = [sentence(i) for i in range(2048)]  # 8 pieces of 256 rows, each [256, 64, W] float32 = 512 KiB
    peer = raw_peer(running, b'lifecycle-killed-after-done')
    with paused(sink.pid):
        peer.send(pack_request(peer.identity, json.dumps(texts).encode(), 1, len(texts)))

        def all_done_none_confirmed():
            workers = list(scheduler.workers.values())
            return len(workers) == 1 and not workers[0].batches and len(scheduler.holder) == 8

        assert wait_until(all_done_none_confirmed, 30, 0.02), \
            f'never saw every batch DONE and unconfirmed (holder {len(scheduler.holder)})'
        os.kill(worker.pid, signal.SIGKILL)
        # Resume the sink only once the ventilator has written the worker off, so that nothing
        # of the dead worker can be confirmed first: every piece must be computed again.
        assert wait_until(lambda: not scheduler.workers, 30, 0.02), 'the dead worker was not noticed'
    reply = peer.recv()
    assert reply is not None, 'the request was lost'
    parsed = unpack_reply(reply)
    assert parsed.kind == 'result' and parsed.req_id == 1, parsed
    assert parsed.array.shape == (2048, 64, FAKE_WIDTH)
    expected = fake_expected(pooling_strategy='NONE', max_seq_len=64).encoder.encode(texts)[0]
    np.testing.assert_array_equal(parsed.array, expected)
    assert peer.recv(timeout_ms=1000) is None, 'the request was answered twice'
    assert scheduler.sequences_per_worker == {'0': 2 * 2048}, 'the lost pieces were not computed again'
    assert wait_until(lambda: _replaced(running, [worker.pid], 1), RECOVERY_SECONDS), 'no new worker came up'
    assert not scheduler.requests and not scheduler.holder


class Traffic(threading.Thread):
    """One client sending small known requests one after another until stopped.

    Attributes:
        outcomes: ('ok' | 'wrong' | 'error', seconds, detail), one per request.
    """

    def __init__(self, running, start: int):
        super().__init__(name=f'traffic-{start}', daemon=True)
        self.running, self.first = running, start
        self.outcomes = []
        self.stop = threading.Event()

    def run(self):
        with self.running.client() as bc:
            i = self.first
            while not self.stop.is_set():
                texts = [sentence(i + k) for k in range(1 + i % 5)]
                i += 5
                started = time.monotonic()
                try:
                    vectors = bc.encode(texts)
                except Exception as e:  # noqa: BLE001 - reported by the test
                    self.outcomes.append(('error', time.monotonic() - started, repr(e)))
                    continue
                ok = np.allclose(vectors, EXPECTED.many(texts), atol=1e-6)
                self.outcomes.append(('ok' if ok else 'wrong', time.monotonic() - started, len(texts)))

    def finish(self) -> list:
        self.stop.set()
        self.join(timeout=60)
        assert not self.is_alive(), 'a request of the traffic hangs'
        return self.outcomes


def test_hung_worker_is_replaced_and_its_request_fails_after_one_retry(server_factory):
    """``__hang__`` hangs run() (heartbeats go on) on every worker that gets it: the holder is
    replaced after -batch_timeout, the retry hangs too, and the request fails naming the
    batch timeout. Requests of another client are served all along."""
    running = server_factory(FAKE, ['-num_worker', '2', '-batch_timeout', '2'])
    originals = [p.pid for p in running.workers()]
    traffic = Traffic(running, 5000)
    traffic.start()
    try:
        assert wait_until(lambda: len(traffic.outcomes) >= 5, 30, 0.02), 'no traffic'
        with running.client() as bc:
            with pytest.raises(BertServerError) as failed:
                bc.encode(['this one will __hang__ forever'])
        served_during_the_hangs = len(traffic.outcomes)
        assert wait_until(lambda: _replaced(running, originals, 2), RECOVERY_SECONDS), 'the hung workers live on'
        assert wait_until(lambda: len(traffic.outcomes) >= served_during_the_hangs + 5, 30, 0.02)
    finally:
        outcomes = traffic.finish()
    message = str(failed.value)
    assert failed.value.code == ErrorCode.FAILED
    assert '-batch_timeout 2s' in message and 'lost twice' in message, message
    bad = [o for o in outcomes if o[0] != 'ok']
    assert not bad, f'other requests failed while a worker hung: {bad[:5]}'
    slowest = max(seconds for _, seconds, _ in outcomes)
    print(f'\nhung workers: {len(outcomes)} other requests served, the slowest in {slowest:.1f}s')


def test_request_queued_behind_a_hung_one_is_served(server_factory):
    """One worker, which holds two batches (its credit): the hanging request and, prefetched behind
    it, an innocent one. The innocent request was never computed, so losing the worker is not its
    fault: it must be served (by the replacement), while only the hanging request fails."""
    running = server_factory(FAKE, ['-num_worker', '1', '-batch_timeout', '2'])
    scheduler = running.server.scheduler
    innocent = [sentence(i) for i in range(5500, 5503)]
    with running.client() as bc:
        bc.encode(['__hang__'], blocking=False)
        hang_id = bc.request_id
        assert wait_until(lambda: len(scheduler.holder) == 1, 30, 0.02)
        bc.encode(innocent, blocking=False)
        outcomes = {}
        for _ in range(2):
            try:  # a failed request ends fetch(); a new one goes on with the rest
                response = next(bc.fetch())
                outcomes[response.id] = response.embedding
            except BertServerError as e:
                outcomes[e.req_id] = e
    assert isinstance(outcomes.get(hang_id), BertServerError), outcomes
    assert not isinstance(outcomes.get(hang_id + 1), BertServerError), \
        f'the request queued behind the hung one failed: {outcomes.get(hang_id + 1)}'
    np.testing.assert_allclose(outcomes[hang_id + 1], EXPECTED.many(innocent), atol=1e-6)


def test_frozen_worker_is_replaced_and_its_batch_goes_to_the_other(server_factory):
    """A worker frozen with SIGSTOP sends no heartbeat: after -heartbeat_timeout it is killed and
    replaced, and its batch is computed by the other worker. A request of 8 inputs with
    -max_batch_size 4 makes two batches, one per worker (the second goes to the one with more credit)."""
    running = server_factory(FAKE, ['-num_worker', '2', '-max_batch_size', '4', '-heartbeat_timeout', '2'])
    scheduler = running.server.scheduler
    frozen = next(p for p in running.workers() if p.name == 'WORKER-0')
    texts = [sentence(i) for i in range(6000, 6008)]
    with running.client() as bc, paused(frozen.pid):
        started = time.monotonic()
        vectors = bc.encode(texts)
        delay = time.monotonic() - started
    np.testing.assert_allclose(vectors, EXPECTED.many(texts), atol=1e-6)
    # WORKER-0 got a batch of 4 rows and never computed it; WORKER-1 computed both batches.
    assert scheduler.sequences_per_worker == {'0': 4, '1': 8}
    assert wait_until(lambda: _replaced(running, [frozen.pid], 2), RECOVERY_SECONDS), 'the frozen worker lives on'
    print(f'\nfrozen worker: the request waited {delay:.1f}s (-heartbeat_timeout 2s)')
    with running.client() as bc:  # both workers serve again
        chunks = [[sentence(7000 + 40 * k + j) for j in range(8)] for k in range(6)]
        for chunk in chunks:
            bc.encode(chunk, blocking=False)
        for chunk, got in zip(chunks, bc.fetch_all()):
            np.testing.assert_allclose(got, EXPECTED.many(chunk), atol=1e-6)
    assert scheduler.sequences_per_worker['0'] > 4


def test_full_queue_refuses_at_once_with_retry_after(server_factory):
    """-max_queue_rows 50 with both workers frozen: 50 accepted rows fill the queue, one more row
    is refused as busy (not queued, not waited for), and every accepted request is answered. A
    request bigger than the whole queue goes even so, one such request at a time."""
    running = server_factory(FAKE, ['-num_worker', '2', '-max_queue_rows', '50', '-heartbeat_timeout', '60'])
    scheduler = running.server.scheduler
    chunks = [[sentence(8000 + 10 * k + j) for j in range(10)] for k in range(5)]
    big = [sentence(i) for i in range(51)]
    with running.client() as filler, running.client() as late, running.client() as huge:
        with paused(*[p.pid for p in running.workers()]):
            for chunk in chunks:
                filler.encode(chunk, blocking=False)
            assert wait_until(lambda: scheduler.open_rows == 50, 30, 0.02), scheduler.open_rows
            with pytest.raises(BertServerBusyError, match=r'server busy: 50 inputs .* -max_queue_rows is 50') as busy:
                late.encode(['one more'])
            assert busy.value.retry_after is not None and busy.value.retry_after > 0
            huge.encode(big, blocking=False)
            assert wait_until(lambda: scheduler.open_rows == 101, 30, 0.02), scheduler.open_rows
            with pytest.raises(BertServerBusyError, match='another request bigger than the queue'):
                late.encode([sentence(i) for i in range(100, 160)])
        for chunk, got in zip(chunks, filler.fetch_all()):
            np.testing.assert_allclose(got, EXPECTED.many(chunk), atol=1e-6)
        [got] = huge.fetch_all()
        np.testing.assert_allclose(got, EXPECTED.many(big), atol=1e-6)
        np.testing.assert_allclose(late.encode(['one more']), EXPECTED.many(['one more']), atol=1e-6)
    assert wait_until(lambda: scheduler.open_rows == 0, 30, 0.02), scheduler.open_rows


# -- a worker whose featurize thread dies --------------------------------------------------------

BROKEN_WORKER = Path(__file__).with_name('broken_worker.py')


class _BrokenWorkerProcess(ChildProcess):
    """Starts ``broken_worker`` (a worker whose featurize raises KeyError on BROKEN_WORD) in place
    of the real worker module; other roles start as they are."""

    def __init__(self, name, module, spec):
        if module == 'bert_serving.server.pipeline.worker':
            module = 'broken_worker'
        super().__init__(name, module, spec)


def test_worker_whose_featurize_thread_dies_exits_and_is_replaced(server_factory, monkeypatch):
    """No input reaches an unexpected exception in the featurize thread of a real worker (malformed
    batches are dropped, bad inputs fail their piece), so a worker with a broken featurize stands in
    for a tokenizer bug. Each worker that gets the input exits with code 1 and is replaced; the
    request fails after its retry; other requests are served."""
    monkeypatch.setattr(service, 'ChildProcess', _BrokenWorkerProcess)
    monkeypatch.setenv('PYTHONPATH', os.pathsep.join([str(BROKEN_WORKER.parent), os.environ.get('PYTHONPATH', '')]))
    running = server_factory(FAKE, ['-num_worker', '2'])
    originals = running.workers()
    with running.client() as bc:
        with pytest.raises(BertServerError, match=r'lost twice .*died \(exit code 1\)') as failed:
            bc.encode([f'a {BROKEN_WORD} here'])
        assert failed.value.code == ErrorCode.FAILED
        assert wait_until(lambda: _replaced(running, [p.pid for p in originals], 2), RECOVERY_SECONDS)
        assert [p.exitcode for p in originals] == [1, 1]
        texts = [sentence(i) for i in range(9000, 9040)]
        np.testing.assert_allclose(bc.encode(texts), EXPECTED.many(texts), atol=1e-6)


# -- sends to a replaced worker --------------------------------------------------------------------

class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_sends_to_a_dead_worker_fail_and_the_server_serves_on_with_all_workers(server_factory):
    """A worker killed while idle: until the ventilator notices, it still has credit, and batches
    sent to it fail (its ROUTER peer is gone) or are lost with it. Those pieces go to the other
    worker; once replaced, both workers take batches again and none is sidelined."""
    running = server_factory(FAKE, ['-num_worker', '2', '-max_batch_size', '4'])
    scheduler = running.server.scheduler
    records = _Records()
    logger = logging.getLogger('bert_serving.VENTILATOR')
    logger.addHandler(records)
    try:
        with running.client() as bc:
            for round_ in range(2):
                victim = next(p for p in running.workers() if p.name == 'WORKER-0')
                chunks = [[sentence(10_000 + 1000 * round_ + 10 * k + j) for j in range(1 + k % 7)]
                          for k in range(40)]
                os.kill(victim.pid, signal.SIGKILL)
                for chunk in chunks:
                    bc.encode(chunk, blocking=False)
                for chunk, got in zip(chunks, bc.fetch_all()):
                    np.testing.assert_allclose(got, EXPECTED.many(chunk), atol=1e-6)
                assert wait_until(lambda: _replaced(running, [victim.pid], 2), RECOVERY_SECONDS)
            before = dict(scheduler.sequences_per_worker)
            chunks = [[sentence(12_000 + 20 * k + j) for j in range(16)] for k in range(8)]
            for chunk in chunks:
                bc.encode(chunk, blocking=False)
            for chunk, got in zip(chunks, bc.fetch_all()):
                np.testing.assert_allclose(got, EXPECTED.many(chunk), atol=1e-6)
            assert bc.server_status['num_ready_worker'] == 2
    finally:
        logger.removeHandler(records)
    after = scheduler.sequences_per_worker
    assert all(after[label] > before.get(label, 0) for label in ('0', '1')), (before, after)
    failed_sends = sum('cannot send a batch' in m for m in records.messages)
    print(f'\nsends to the dead worker that failed and were queued again: {failed_sends}')
