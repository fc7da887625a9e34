"""One text of the largest size a request may have (-max_request_bytes, 64 MiB by default), on the
tiny TensorFlow model: it is encoded (from the part of it that max_seq_len can use), the worker keeps
its heartbeats and is not replaced, and clients sending one sentence at a time are served meanwhile."""
from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from bert_serving.client import BertServerError, BertTimeoutError
from bert_serving.client.protocol import pack_request

from security_support import percentile
from service_support import Expected, RawPeer, sentence

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MAX_REQUEST_BYTES = 64 * 1024 * 1024
CLIENT_TIMEOUT_MS = 10000
BIG_REPLY_MS = 180000


@pytest.fixture(scope='module')
def tiny_server(launch, tiny_hf_dir, graph_cache_dir):
    with launch(tiny_hf_dir, ['-num_worker', '1', '-max_seq_len', '32']) as running:
        yield running


@pytest.fixture(scope='module')
def tiny_32(tiny_hf_dir, graph_cache_dir):
    from bert_serving.server.config import EngineConfig
    from bert_serving.server.engine.encoder import Encoder

    encoder = Encoder(EngineConfig(model_dir=str(tiny_hf_dir), graph_tmp_dir=str(graph_cache_dir), max_seq_len=32))
    yield Expected(encoder)
    encoder.close()


def test_one_text_of_the_largest_request_size_stalls_no_one(tiny_server, tiny_32):
    words = 'the quick brown fox jumps over the lazy dog '
    big = (words * (MAX_REQUEST_BYTES // len(words)))[:MAX_REQUEST_BYTES - 16]
    payload = json.dumps([big]).encode()
    assert len(payload) <= MAX_REQUEST_BYTES
    workers = [p.pid for p in tiny_server.workers()]
    outcome = {'latencies': [], 'errors': []}
    done = threading.Event()

    def one_at_a_time(k: int):
        with tiny_server.client(timeout=CLIENT_TIMEOUT_MS) as bc:
            i = 0
            while not done.is_set() and i < 100_000:
                text = sentence(1000 * k + i)
                i += 1
                t0 = time.perf_counter()
                try:
                    got = bc.encode([text])
                except (BertTimeoutError, BertServerError) as e:
                    outcome['errors'].append(repr(e)[:200])
                    continue
                outcome['latencies'].append(time.perf_counter() - t0)
                np.testing.assert_allclose(got[0], tiny_32.one(text), atol=1e-4)

    threads = [threading.Thread(target=one_at_a_time, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(1)
        peer = RawPeer(tiny_server, b'one-huge-text')
        try:
            time.sleep(0.3)
            t0 = time.perf_counter()
            peer.send(pack_request(peer.identity, payload, 1, 1))
            reply = peer.recv(timeout_ms=BIG_REPLY_MS)
            big_seconds = time.perf_counter() - t0
        finally:
            peer.close()
        time.sleep(1)
    finally:
        done.set()
        for t in threads:
            t.join(CLIENT_TIMEOUT_MS / 1000 + 30)
    assert reply is not None, 'the huge text got no reply'
    from bert_serving.client.protocol import unpack_reply
    vector = unpack_reply(reply).array
    np.testing.assert_allclose(vector[0], tiny_32.one(big[:2000]), atol=1e-4)  # max_seq_len uses only the start
    lat = outcome['latencies']
    print(f'one text of {len(payload)} bytes answered in {big_seconds:.1f}s; 4 clients meanwhile: {len(lat)} replies, '
          f'p50 {1000 * percentile(lat, 0.5):.1f} ms, p99 {1000 * percentile(lat, 0.99):.1f} ms, '
          f'max {1000 * max(lat):.0f} ms, {len(outcome["errors"])} errors')
    assert outcome['errors'] == []
    assert [p.pid for p in tiny_server.workers()] == workers, 'the worker was replaced'
