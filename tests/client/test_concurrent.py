"""ConcurrentBertClient: many threads, each getting its own answer; slots always come back."""
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from bert_serving.client import (BadRequest, BertServerBusyError, BertServerError, BertServerShuttingDownError,
                                 BertServingError, ConcurrentBertClient, ConfigError)

WAIT_SECONDS = 10.0  # the most a test waits for a thread or the fake server; reached in milliseconds


def _pool(fake, **kwargs) -> ConcurrentBertClient:
    return ConcurrentBertClient(ip='127.0.0.1', port=fake.port, port_out=fake.port_out, **kwargs)


def test_many_threads_each_get_their_own_answer(fake):
    def worker(seed):
        rng = random.Random(seed)
        for n in range(20):
            texts = [f'thread {seed} request {n} sentence {i}' + ' word' * rng.randrange(5)
                     for i in range(rng.randrange(1, 12))]
            np.testing.assert_array_equal(pool.encode(texts), fake.encode(texts))
        return seed

    with _pool(fake, max_concurrency=5) as pool, ThreadPoolExecutor(20) as executor:
        assert sorted(executor.map(worker, range(20))) == list(range(20))
    assert len(fake.data_requests()) == 400
    assert fake.max_outstanding <= 5


def test_positional_arguments_and_tokens(fake_server):
    fake = fake_server(show_tokens_to_client=True)
    with _pool(fake, max_concurrency=2) as pool:
        vectors, tokens = pool.encode([['a', 'b']], True, True, True)
        np.testing.assert_array_equal(vectors, fake.encode([['a', 'b']]))
        assert tokens == [['[CLS]', 'a', 'b', '[SEP]']]


def test_slot_comes_back_after_an_exception(fake):
    with _pool(fake, max_concurrency=1) as pool:
        with pytest.raises(BertServerError, match='RAISE'):
            pool.encode(['RAISE'])
        with pytest.raises(BadRequest, match=r'texts\[0\] is int'):
            pool.encode([1])
        np.testing.assert_array_equal(pool.encode(['fine']), fake.encode(['fine']))


def test_busy_and_shutting_down_errors_pass_through_the_pool(fake):
    with _pool(fake, max_concurrency=1) as pool:
        with pytest.raises(BertServerBusyError) as info:
            pool.encode(['BUSY'])
        assert info.value.retry_after == 2.5
        with pytest.raises(BertServerShuttingDownError):
            pool.encode(['STOPPING'])
        np.testing.assert_array_equal(pool.encode(['fine']), fake.encode(['fine']))


def test_callers_wait_for_a_free_slot(fake):
    fake.delay = release = threading.Event()  # replies wait until both clients of the pool are busy
    with _pool(fake, max_concurrency=2) as pool, ThreadPoolExecutor(6) as executor:
        batches = [[f'caller {i}'] * (i + 1) for i in range(6)]
        results = executor.map(pool.encode, batches)
        _wait_until(lambda: len(fake.data_requests()) == 2)
        release.set()
        results = list(results)
    for result, batch in zip(results, batches):
        np.testing.assert_array_equal(result, fake.encode(batch))
    assert fake.max_outstanding == 2  # never more requests in flight than clients in the pool


def test_server_info_through_the_pool(fake):
    with _pool(fake, max_concurrency=3) as pool:
        assert pool.server_config == fake.config
        assert 'num_request' in pool.server_status
        assert pool.status['port'] == fake.port


def test_async_calls_are_refused(fake):
    with _pool(fake, max_concurrency=1) as pool:
        for call in (lambda: pool.encode(['a'], blocking=False), lambda: pool.encode_async(iter([['a']])),
                     lambda: pool.fetch(), lambda: pool.fetch_all()):
            with pytest.raises(NotImplementedError, match='one BertClient per thread'):
                call()
        np.testing.assert_array_equal(pool.encode(['a']), fake.encode(['a']))


def test_a_given_identity_gets_a_distinct_suffix_per_client(fake):
    with _pool(fake, max_concurrency=3, identity='svc') as pool, ThreadPoolExecutor(3) as executor:
        assert all(executor.map(lambda i: pool.encode([f'x{i}'])[0, 1] == 1, range(9)))
    identities = {r.identity for r in fake.requests}
    assert identities == {b'svc-000000', b'svc-000001', b'svc-000002'}


def test_close_wakes_waiting_callers_and_closes_busy_clients(fake):
    fake.delay = release = threading.Event()  # the busy call's reply waits until after close()
    pool = _pool(fake, max_concurrency=1)
    outcome = {}

    def busy():
        outcome['busy'] = pool.encode(['busy'])

    def waiting():
        try:
            pool.encode(['waiting'])
        except BertServingError as err:
            outcome['waiting'] = err

    threads = [threading.Thread(target=busy), threading.Thread(target=waiting)]
    threads[0].start()
    _wait_until(lambda: fake.data_requests())  # the one client is now busy: the next caller must wait
    threads[1].start()
    pool.close()
    release.set()
    for thread in threads:
        thread.join(WAIT_SECONDS)
    np.testing.assert_array_equal(outcome['busy'], fake.encode(['busy']))
    assert 'closed' in str(outcome['waiting'])
    assert [r.payload for r in fake.data_requests()] == [b'["busy"]']
    with pytest.raises(BertServingError, match='closed'):
        pool.encode(['after close'])
    pool.close()


def _wait_until(condition) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, 'the fake server never got the request'
        threading.Event().wait(0.01)


def test_bad_max_concurrency():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match='max_concurrency must be a positive int') as info:
            ConcurrentBertClient(max_concurrency=bad, ignore_all_checks=True)
        assert isinstance(info.value, ValueError)  # as before


def test_failed_construction_closes_the_clients_made_so_far(fake_server):
    fake = fake_server(protocol_version=2)
    with pytest.raises(BertServingError, match='protocol'):
        _pool(fake, max_concurrency=3)
    # the autouse guard in conftest.py fails this test if any client's sockets stayed open


def test_a_concurrent_client_is_a_bert_client(fake):
    """1.10's ConcurrentBertClient subclassed BertClient; user code checks isinstance."""
    from bert_serving.client import BertClient

    with _pool(fake, max_concurrency=2) as cbc:
        assert isinstance(cbc, BertClient)
        np.testing.assert_allclose(cbc.encode(['a b', 'c']), fake.encode(['a b', 'c']))


def test_a_pool_waits_for_a_server_that_starts_later_and_notices_when_it_goes(fake_server, free_port, monkeypatch):
    from bert_serving.client import BertServerGoneError, connection

    monkeypatch.setattr(connection, 'GONE_AFTER_S', 1.0)  # 12 s in use
    port, port_out = free_port(), free_port()
    made = {}

    def construct():
        try:  # timeout=-1 by default: every client of the pool waits for the server
            made['pool'] = ConcurrentBertClient(max_concurrency=2, ip='127.0.0.1', port=port, port_out=port_out)
        except BaseException as err:  # reported by the test's thread
            made['error'] = err

    thread = threading.Thread(target=construct)
    thread.start()
    time.sleep(0.5)  # not a timing assertion: the server merely starts after the pool
    assert thread.is_alive(), made.get('error')
    fake = fake_server(ports=(port, port_out))
    thread.join(WAIT_SECONDS * 3)
    assert not thread.is_alive() and 'error' not in made, made.get('error')
    with made['pool'] as pool:
        np.testing.assert_array_equal(pool.encode(['late']), fake.encode(['late']))
        fake.delay = threading.Event()  # never set: the next request is open when the server goes
        failure = {}

        def encode():
            try:
                pool.encode(['never answered'])
            except BertServingError as err:
                failure['error'] = err

        caller = threading.Thread(target=encode)
        caller.start()
        deadline = time.monotonic() + WAIT_SECONDS
        while len(fake.data_requests()) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        fake.stop()
        caller.join(WAIT_SECONDS)
        assert not caller.is_alive() and isinstance(failure.get('error'), BertServerGoneError), failure
