"""Many threads at once against the shared server (2 workers, batches of 4 rows): every answer is
correct, in order, and none is lost.

Each request draws 1 to 30 inputs from a fixed pool whose vectors are known in advance, so the
answer can be checked row by row; the shared server splits most requests and mixes the pieces of
different clients in one batch.
"""
from __future__ import annotations

import random
import threading

import numpy as np
import pytest

from service_support import sentence

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NUM_THREADS = 20
REQUESTS_PER_THREAD = 20
POOL = [sentence(i) for i in range(1000, 1120)]


@pytest.fixture(scope='module')
def pool_vectors(fake_vectors):
    """text -> float32 [FAKE_WIDTH], each input encoded alone in this process."""
    return {text: fake_vectors.one(text) for text in POOL}


def _hammer(encode_for_thread, pool_vectors):
    """Runs NUM_THREADS threads of REQUESTS_PER_THREAD requests; ``encode_for_thread(k)`` returns the
    encode function thread k uses (and may open a client, closed through the returned closer).

    Returns:
        (answers received, list of failure descriptions).
    """
    failures, answers = [], []
    lock = threading.Lock()
    start = threading.Barrier(NUM_THREADS)

    def run(k: int):
        rng = random.Random(k)
        try:
            encode, close = encode_for_thread(k)
        except Exception as e:  # noqa: BLE001 - reported below
            with lock:
                failures.append(f'thread {k} could not connect: {e!r}')
            start.abort()
            return
        try:
            start.wait()
            for r in range(REQUESTS_PER_THREAD):
                texts = [rng.choice(POOL) for _ in range(rng.randint(1, 30))]
                try:
                    vectors = encode(texts)
                except Exception as e:  # noqa: BLE001 - reported below
                    with lock:
                        failures.append(f'thread {k} request {r}: {e!r}')
                    continue
                expected = np.stack([pool_vectors[t] for t in texts])
                with lock:
                    answers.append((k, r))
                    if vectors.shape != expected.shape or not np.allclose(vectors, expected, atol=1e-5):
                        failures.append(f'thread {k} request {r}: wrong vectors for {len(texts)} inputs')
        except threading.BrokenBarrierError:
            pass
        finally:
            close()

    threads = [threading.Thread(target=run, args=(k,), name=f'hammer-{k}') for k in range(NUM_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), 'a client thread hangs'
    return answers, failures


def test_one_concurrent_client_shared_by_20_threads(shared_server, pool_vectors):
    with shared_server.concurrent_client(max_concurrency=8) as cbc:
        answers, failures = _hammer(lambda k: (cbc.encode, lambda: None), pool_vectors)
    assert not failures, '\n'.join(failures[:20])
    assert len(answers) == NUM_THREADS * REQUESTS_PER_THREAD


def test_20_threads_with_a_client_each(shared_server, pool_vectors):
    def own_client(k):
        bc = shared_server.client()
        return bc.encode, bc.close

    answers, failures = _hammer(own_client, pool_vectors)
    assert not failures, '\n'.join(failures[:20])
    assert len(answers) == NUM_THREADS * REQUESTS_PER_THREAD
