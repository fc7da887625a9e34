"""Strangers on port_out, the sink's XPUB: what a peer that reaches it can read or stall.

A subscription matches one whole identity (and, with -auth_dir, only the Curve key that sent the
request): a subscribe-all or prefix subscriber reads nothing, another authorised key that learned an
identity reads nothing, and a subscriber that never reads holds up only its own replies.
"""
from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
import zmq

from bert_serving.client import BertClient, BertServerError, BertTimeoutError
from bert_serving.client.protocol import pack_request

from security_support import curve_socket, key_files, percentile
from service_support import FAKE, sentence

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SILENCE_MS = 1000  # a spy that got nothing in this long after the last reply got nothing at all
# How long 8 clients run beside a peer that never reads. The measure is 60 s
# (BERT_SERVING_STALL_SECONDS=60); before the fix, replies stalled after ~20 s of this traffic.
STALL_SECONDS = float(os.environ.get('BERT_SERVING_STALL_SECONDS', '30'))
CLIENT_TIMEOUT_MS = 10000


@pytest.fixture(scope='module')
def server(launch):
    with launch(FAKE, ['-num_worker', '1']) as running:
        yield running


def _spy(ctx, port_out: int, topic: bytes, sock=None, rcvhwm: int = 1000) -> zmq.Socket:
    sock = sock or ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, rcvhwm)
    sock.setsockopt(zmq.SUBSCRIBE, topic)
    sock.connect(f'tcp://127.0.0.1:{port_out}')
    return sock


def _received(sock, wait_ms: int = SILENCE_MS) -> list:
    got = []
    while sock.poll(wait_ms):
        got.append(sock.recv_multipart())
        wait_ms = 100
    return got


def test_a_subscribe_all_or_prefix_peer_reads_nothing(server, fake_vectors):
    identity = b'victim-4f1c9a2e'
    with zmq.Context() as ctx:
        spies = {topic: _spy(ctx, server.port_out, topic) for topic in (b'', b'v', b'victim-4f1c', identity[:-1])}
        time.sleep(0.3)  # the subscriptions reach the sink before the first reply
        with server.client(identity=identity) as bc:
            texts = [sentence(i) for i in range(6)]
            for _ in range(3):
                np.testing.assert_allclose(bc.encode(texts), fake_vectors.many(texts), atol=1e-5)
            assert bc.server_status['ready']
        for topic, spy in spies.items():
            assert _received(spy) == [], f'a peer subscribed to {topic!r} read another client\'s replies'


def test_a_peer_that_never_reads_stalls_no_one(server, fake_vectors):
    """Two silent peers: one subscribed to everything, one that floods requests under its own
    identity and never reads its replies. Eight normal clients meanwhile: no timeout, no wrong vector."""
    outcome = {'latencies': [], 'errors': [], 'wrong': 0}
    lock = threading.Lock()
    stop = time.monotonic() + STALL_SECONDS

    def normal(k: int):
        with server.client(timeout=CLIENT_TIMEOUT_MS) as bc:
            i = 0
            while time.monotonic() < stop and i < 100_000:
                text = sentence(k * 100_000 + i)
                i += 1
                t0 = time.perf_counter()
                try:
                    got = bc.encode([text])
                except (BertTimeoutError, BertServerError) as e:
                    with lock:
                        outcome['errors'].append(repr(e)[:200])
                    continue
                with lock:
                    outcome['latencies'].append(time.perf_counter() - t0)
                    outcome['wrong'] += not np.allclose(got[0], fake_vectors.one(text), atol=1e-5)

    with zmq.Context() as ctx:
        silent_all = _spy(ctx, server.port_out, b'', rcvhwm=1)
        silent_own = _spy(ctx, server.port_out, b'never-reads', rcvhwm=1)
        flood = ctx.socket(zmq.PUSH)
        flood.setsockopt(zmq.LINGER, 0)
        flood.setsockopt(zmq.SNDHWM, 10)
        flood.connect(f'tcp://127.0.0.1:{server.port}')
        time.sleep(0.3)
        threads = [threading.Thread(target=normal, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        payload = ('["' + '", "'.join(['a rather long sentence that fills the reply'] * 64) + '"]').encode()
        sent = 0
        while any(t.is_alive() for t in threads) and sent < 100_000:  # ~3,200 inputs/s: busy, not overloaded
            try:
                flood.send_multipart(pack_request(b'never-reads', payload, sent, 64), zmq.NOBLOCK)
                sent += 1
            except zmq.Again:
                pass
            time.sleep(0.02)
        for t in threads:
            t.join(CLIENT_TIMEOUT_MS / 1000 + 30)
        silent_all.close()
        silent_own.close()
    lat = outcome['latencies']
    print(f'{STALL_SECONDS:g}s, 8 clients beside 2 silent peers ({sent} flood requests): {len(lat)} replies, '
          f'p50 {1000 * percentile(lat, 0.5):.1f} ms, p99 {1000 * percentile(lat, 0.99):.1f} ms, '
          f'{len(outcome["errors"])} errors')
    assert outcome['errors'] == [], f'{len(outcome["errors"])} requests failed: {outcome["errors"][:3]}'
    assert outcome['wrong'] == 0 and len(lat) > 0


def test_an_authorised_client_cannot_read_anothers_replies(launch, keys, fake_vectors):
    """bob holds a valid key and learned alice's identity: subscribing to it brings him nothing."""
    identity = b'alice-7d3e11'
    with launch(FAKE, ['-num_worker', '1', '-auth_dir', str(keys / 'dir')]) as running:
        with zmq.Context() as ctx:
            bob = _spy(ctx, running.port_out, identity, sock=curve_socket(ctx, zmq.SUB, keys, 'bob'))
            bob_all = _spy(ctx, running.port_out, b'', sock=curve_socket(ctx, zmq.SUB, keys, 'bob'))
            time.sleep(0.3)
            with BertClient(port=running.port, port_out=running.port_out, identity=identity, timeout=CLIENT_TIMEOUT_MS,
                            **key_files(keys, 'alice')) as alice:
                texts = [sentence(i) for i in range(4)]
                for _ in range(3):
                    np.testing.assert_allclose(alice.encode(texts), fake_vectors.many(texts), atol=1e-5)
                alice.server_config
            assert _received(bob) == [] and _received(bob_all) == []
            # bob asks under alice's identity: the reply goes to bob's key, never to alice.
            with BertClient(port=running.port, port_out=running.port_out, identity=identity, timeout=CLIENT_TIMEOUT_MS,
                            **key_files(keys, 'bob')) as bob_as_alice:
                assert bob_as_alice.encode(['hello']).shape == (1, 8)
