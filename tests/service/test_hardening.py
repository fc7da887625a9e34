"""Defects an outside review found, each shown fixed on a real ``-engine fake`` server: a stranger on
the worker port cannot pose as a local worker, a sink that falls silent stops the server instead of
hanging it, inputs that crash workers do not stop the server, a hung remote worker leaves by itself,
and a client that reads slowly gets every reply (the 1.10 ``encode(blocking=False)`` pattern)."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zmq

from bert_serving.client import BertServerError
from bert_serving.server.pipeline import messages as msg

from service_support import FAKE, fake_expected, paused, sentence, wait_until

pytestmark = [pytest.mark.e2e]

EXPECTED = fake_expected()


def test_a_stranger_on_the_worker_port_cannot_pose_as_a_local_worker(server_factory, pick_port):
    """1.10-era code trusted any identity: here a peer on -port_worker naming itself worker-0-0 can
    neither stop the server with FATAL nor receive batches with READY."""
    port_worker = pick_port()
    running = server_factory(FAKE, ['-num_worker', '1', '-port_worker', str(port_worker),
                                     '-port_worker_sink', str(pick_port())])  # not port_worker + 1: it may be taken
    with zmq.Context() as ctx:
        stranger = ctx.socket(zmq.DEALER)
        stranger.setsockopt(zmq.LINGER, 0)
        stranger.setsockopt(zmq.IDENTITY, b'worker-0-0')
        stranger.connect(f'tcp://127.0.0.1:{port_worker}')
        stranger.send_multipart(msg.pack_fatal('forged by a stranger'))
        stranger.send_multipart(msg.pack_ready(50, 1, 'cpu'))
        with running.client() as bc:
            texts = [sentence(i) for i in range(40)]
            np.testing.assert_allclose(bc.encode(texts), EXPECTED.many(texts), atol=1e-6)
            names = [w['name'] for w in bc.server_status['workers']]
        replies = []
        while stranger.poll(500):
            replies.append(stranger.recv_multipart())
        stranger.close()
    assert running.server.is_alive() and running.server.failure is None
    assert names == ['WORKER-0']
    kinds = {r[0] for r in replies}
    assert msg.BATCH not in kinds, 'a stranger received user data'
    assert kinds <= {msg.REGISTER_AGAIN}, kinds


def test_a_silent_sink_stops_the_server_with_the_reason(server_factory):
    running = server_factory(FAKE, ['-num_worker', '1'])
    sink = next(p for p in running.server.processes if p.name == 'SINK')
    with paused(sink.pid):
        running.server.join(timeout=60)
        assert not running.server.is_alive(), 'the server waits forever on a frozen sink'
    assert 'SINK sent nothing' in (running.server.failure or '')


def test_inputs_that_crash_workers_fail_their_requests_and_the_server_serves_on(server_factory):
    """Each __crash__ kills two workers (its first try and its retry): six replacements within a
    minute, past the restart budget of five. The server backs off instead of stopping."""
    running = server_factory(FAKE, ['-num_worker', '1'])
    with running.client() as bc:
        for i in range(3):
            with pytest.raises(BertServerError, match='lost twice'):
                bc.encode([f'crash number {i} __crash__'])
        assert running.server.is_alive() and running.server.failure is None
        texts = [sentence(i) for i in range(5)]
        np.testing.assert_allclose(bc.encode(texts), EXPECTED.many(texts), atol=1e-6)


def test_a_hung_remote_worker_leaves_by_itself(server_factory, pick_port, tmp_path):
    """A remote worker's process is nobody's child on the server: past -batch_timeout its watchdog
    ends it (exit 1), so systemd or Kubernetes can start a fresh one."""
    port_worker = pick_port()
    running = server_factory(FAKE, ['-num_worker', '1', '-port_worker', str(port_worker), '-batch_timeout', '2',
                                     '-port_worker_sink', str(pick_port())])
    log = tmp_path / 'remote.log'
    with open(log, 'w') as out:
        remote = subprocess.Popen(
            [sys.executable, '-c', 'import sys; from bert_serving.server.cli import worker; sys.exit(worker())',
             '-engine', 'fake', '-cpu', '-ip', '127.0.0.1', '-port_worker', str(port_worker)],
            stdout=out, stderr=subprocess.STDOUT)
    try:
        assert wait_until(lambda: len(running.server.scheduler.workers) == 2, 30), log.read_text()
        # Freeze the local worker so that the hanging input goes to the remote one.
        local = running.workers()[0]
        with paused(local.pid), running.client(timeout=60000) as bc:
            with pytest.raises(BertServerError):
                bc.encode(['this one hangs __hang__'])
            assert remote.wait(30) == 1, log.read_text()
        assert 'leaving so that a fresh worker takes over' in log.read_text()
    finally:
        if remote.poll() is None:
            remote.send_signal(signal.SIGKILL)
            remote.wait()


def test_a_slow_reader_gets_every_reply(server_factory):
    """12,000 requests sent with blocking=False before reading any reply (more than ZeroMQ queues per
    client): 1.10 delivered them all, and so must we."""
    running = server_factory(FAKE, ['-num_worker', '1'])
    n = 12_000
    with running.client(timeout=120000) as bc:
        started = time.monotonic()
        for i in range(n):
            assert bc.encode([sentence(i % 50)], blocking=False) is None
        got = bc.fetch_all(concat=True)
        print(f'{n} requests sent and fetched in {time.monotonic() - started:.1f}s')
    assert got.shape == (n, 8)
    np.testing.assert_allclose(got[:50], EXPECTED.many([sentence(i) for i in range(50)]), atol=1e-6)
