"""BertClient against the fake server of conftest.py: results, ordering, async calls, checks, and the
1.10 fixes (bounded handshake, timeouts, error replies, input validation, empty strings)."""
import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import pytest

from bert_serving.client import (BadRequest, BertClient, BertServerBusyError, BertServerError, BertServerGoneError,
                                 BertServerShuttingDownError, BertServingError, BertTimeoutError, ConfigError,
                                 Response, __version__)
from bert_serving.client.protocol import ErrorCode
from bert_serving.client import client as client_module
from bert_serving.client import connection
from bert_serving.client.client import ASYNC_MAX_IN_FLIGHT, HANDSHAKE_TIMEOUT_MS

TEXTS = ['hello world', 'the quick brown fox', 'a', 'First do it ||| then do it right']


@pytest.fixture
def bc(fake):
    with fake.client() as client:
        yield client


# -- results --------------------------------------------------------------------------------------


def test_round_trip(fake, bc):
    result = bc.encode(TEXTS)
    assert isinstance(result, np.ndarray) and result.dtype == np.float32
    assert result.shape == (len(TEXTS), fake.width)
    np.testing.assert_array_equal(result, fake.encode(TEXTS))


def test_result_is_a_read_only_zero_copy_view(bc):
    result = bc.encode(TEXTS)
    assert not result.flags.writeable and not result.flags.owndata
    copy = np.array(result)
    copy[0, 0] = -1  # the documented way to get a writable array


def test_many_requests_each_get_their_own_rows_in_order(fake, bc):
    batches = [[f'sentence {i} word {j}' for j in range(1 + i % 5)] for i in range(30)]
    for batch in batches:
        np.testing.assert_array_equal(bc.encode(batch), fake.encode(batch))
    assert bc.status['num_request'] == 1 + len(batches)  # + the handshake's SHOW_CONFIG


def test_list_output(fake):
    with fake.client(output_fmt='list') as bc:
        result = bc.encode(TEXTS)
    assert isinstance(result, list) and isinstance(result[0], list)
    assert result == fake.encode(TEXTS).tolist()


def test_unknown_output_fmt_is_refused():
    with pytest.raises(ConfigError, match='output_fmt must be "ndarray" or "list", got \'tensor\'') as info:
        BertClient(output_fmt='tensor', ignore_all_checks=True)
    assert isinstance(info.value, ValueError)  # as before


def test_tuple_input_and_tokenized_input(fake, bc):
    np.testing.assert_array_equal(bc.encode(tuple(TEXTS)), fake.encode(TEXTS))
    tokenized = [['hello', 'world'], ['a'], []]
    np.testing.assert_array_equal(bc.encode(tokenized, is_tokenized=True), fake.encode(tokenized))


def test_empty_and_blank_strings_pass_through(fake, bc):
    texts = ['', '   ', 'x', '\t\n']
    np.testing.assert_array_equal(bc.encode(texts), fake.encode(texts))
    (request,) = fake.data_requests()
    assert request.msg_len == 4 and request.payload == b'["", "   ", "x", "\\t\\n"]'


def test_show_tokens(fake_server):
    fake = fake_server(show_tokens_to_client=True)
    with fake.client() as bc:
        vectors, tokens = bc.encode(TEXTS, show_tokens=True)
        np.testing.assert_array_equal(vectors, fake.encode(TEXTS))
        assert tokens == [fake.tokens(t) for t in TEXTS]
        pieces = [['hello', 'world'], ['x']]
        _, tokens = bc.encode(pieces, is_tokenized=True, show_tokens=True)
        assert tokens == [['[CLS]', 'hello', 'world', '[SEP]'], ['[CLS]', 'x', '[SEP]']]
        assert isinstance(bc.encode(TEXTS), np.ndarray)  # tokens only when asked for


def test_show_tokens_without_server_support_warns_and_returns_the_array(fake, bc):
    with pytest.warns(UserWarning, match='show_tokens_to_client'):
        result = bc.encode(TEXTS, show_tokens=True)
    np.testing.assert_array_equal(result, fake.encode(TEXTS))


# -- non-blocking calls ---------------------------------------------------------------------------


def _slow_single_sentences(texts):
    """A fake delay that answers one-sentence requests last: replies arrive out of order."""
    return 0.3 if len(texts) == 1 else 0.0


def test_non_blocking_then_fetch_all_sorted_and_unsorted(fake, bc):
    fake.delay = _slow_single_sentences
    batches = [['only one'], ['two', 'sentences'], ['three', 'more', 'here']]
    assert all(bc.encode(b, blocking=False) is None for b in batches)
    assert bc.status['num_pending_request'] == 3
    results = bc.fetch_all()
    assert len(results) == 3
    for result, batch in zip(results, batches):
        np.testing.assert_array_equal(result, fake.encode(batch))
    assert bc.status['num_pending_request'] == 0 and bc.fetch_all() is None

    for batch in batches:
        bc.encode(batch, blocking=False)
    arrival = bc.fetch_all(sort=False)
    assert [len(r) for r in arrival] == [2, 3, 1]  # the delayed one-sentence batch came last


def test_fetch_all_concat(fake, bc):
    fake.delay = _slow_single_sentences
    batches = [['only one'], ['two', 'sentences'], ['three', 'more', 'here']]
    for batch in batches:
        bc.encode(batch, blocking=False)
    joined = bc.fetch_all(concat=True)
    np.testing.assert_array_equal(joined, fake.encode(sum(batches, [])))


def test_fetch_all_concat_with_tokens(fake_server):
    fake = fake_server(show_tokens_to_client=True)
    with fake.client(output_fmt='list') as bc:
        bc.encode(['a b', 'c'], blocking=False, show_tokens=True)
        bc.encode(['d'], blocking=False, show_tokens=True)
        vectors, tokens = bc.fetch_all(concat=True)
        assert vectors == fake.encode(['a b', 'c', 'd']).tolist()
        assert tokens == [fake.tokens(t) for t in ['a b', 'c', 'd']]
        bc.encode(['e f'], blocking=False, show_tokens=True)
        ((vectors, tokens),) = bc.fetch_all()
        assert tokens == [fake.tokens('e f')]


def test_fetch_yields_responses_as_they_arrive(fake, bc):
    fake.delay = _slow_single_sentences
    batches = {bc.request_id + 1: ['only one'], bc.request_id + 2: ['two', 'sentences']}
    for batch in batches.values():
        bc.encode(batch, blocking=False)
    responses = list(bc.fetch())
    assert [len(r.embedding) for r in responses] == [2, 1]
    for response in responses:
        assert isinstance(response, Response) and response.tokens == ''  # what 1.10 gives
        np.testing.assert_array_equal(response.embedding, fake.encode(batches[response.id]))
    assert list(bc.fetch()) == []


def test_blocking_call_keeps_replies_of_earlier_non_blocking_ones(fake, bc):
    fake.delay = lambda texts: 0.0 if texts == ['late'] else 0.1
    bc.encode(['early one'], blocking=False)
    bc.encode(['early two'], blocking=False)
    np.testing.assert_array_equal(bc.encode(['late']), fake.encode(['late']))
    assert bc.server_config['max_seq_len'] == 25
    early = bc.fetch_all()
    np.testing.assert_array_equal(np.concatenate(early), fake.encode(['early one', 'early two']))


def test_encode_async(fake, bc):
    batches = [[f'batch {i} sentence {j}' for j in range(1 + i % 4)] for i in range(40)]
    ids = {}
    for response in bc.encode_async(iter(batches)):
        ids[response.id] = response.embedding
    assert len(ids) == len(batches)
    for (_, embedding), batch in zip(sorted(ids.items()), batches):
        np.testing.assert_array_equal(embedding, fake.encode(batch))
    assert fake.max_outstanding <= ASYNC_MAX_IN_FLIGHT
    assert bc.status['num_pending_request'] == 0


def test_encode_async_stops_after_max_num_batch(fake, bc):
    def endless():
        i = 0
        while True:
            yield [f'sentence {i}']
            i += 1

    responses = list(bc.encode_async(endless(), max_num_batch=5, delay=0))
    assert len(responses) == 5 and len(fake.data_requests()) == 5


# -- server info and client status ----------------------------------------------------------------


def test_server_config_and_status(fake, bc):
    config = bc.server_config
    assert config == fake.config
    status = bc.server_status
    assert status['server_version'] == '2.0.0' and 'num_request' in status


def test_client_status(fake):
    with fake.client(identity='my-client', timeout=5000) as bc:
        bc.encode(['a'], blocking=False)
        status = bc.status
        assert status == {
            'identity': b'my-client', 'num_request': 2, 'num_pending_request': 1, 'pending_request': {2},
            'output_fmt': 'ndarray', 'port': fake.port, 'port_out': fake.port_out, 'server_ip': '127.0.0.1',
            'client_version': __version__, 'timeout': 5000,
        }
        bc.fetch_all()


def test_show_server_config_prints_it(fake, capsys):
    with fake.client(show_server_config=True):
        pass
    out = capsys.readouterr().out
    assert 'server config' in out and 'max_seq_len = 25' in out


# -- construction checks --------------------------------------------------------------------------


def test_version_check_refuses_another_protocol(fake_server):
    fake = fake_server(protocol_version=2, server_version='3.0.0')
    with pytest.raises(BertServingError, match=r'protocol 2.*protocol 1.*check_version=False') as info:
        fake.client()
    assert '3.0.0' in str(info.value) and __version__ in str(info.value)
    with fake.client(check_version=False) as bc:
        np.testing.assert_array_equal(bc.encode(['a']), fake.encode(['a']))


def test_an_original_1x_server_without_protocol_version_is_accepted(fake_server):
    fake = fake_server(omit=('protocol_version',), server_version='1.10.0')
    with fake.client() as bc:
        assert bc.encode(['a']).shape == (1, fake.width)


def test_ignore_all_checks_asks_the_server_nothing(fake):
    with fake.client(ignore_all_checks=True) as bc:
        assert bc.length_limit == 0 and not bc.token_info_available
        np.testing.assert_array_equal(bc.encode(['a b']), fake.encode(['a b']))
    assert fake.commands(b'SHOW_CONFIG') == []


def test_length_check_warns_about_long_sentences(fake_server):
    fake = fake_server(max_seq_len=3)
    with fake.client() as bc:
        assert bc.length_limit == 3
        with pytest.warns(UserWarning, match='more tokens than "max_seq_len=3"'):
            bc.encode(['one two three four'])
        with pytest.warns(UserWarning, match='max_seq_len=3'):
            bc.encode([['one', 'two', 'three', 'four']], is_tokenized=True)
        with warnings.catch_warnings():
            warnings.simplefilter('error')
            bc.encode(['one two three', ''])
    with fake.client(check_length=False) as bc, warnings.catch_warnings():
        warnings.simplefilter('error')
        bc.encode(['one two three four five'])


def test_length_check_warns_when_the_server_sets_no_limit(fake_server):
    fake = fake_server(max_seq_len=None)
    with fake.client() as bc:
        assert bc.length_limit is None
        with pytest.warns(UserWarning, match='no "max_seq_len"'):
            bc.encode(['a'])


def test_identity_as_str_is_encoded(fake):
    with fake.client(identity='abc') as bc:
        assert bc.identity == b'abc'
        np.testing.assert_array_equal(bc.encode(['a']), fake.encode(['a']))


def test_clients_whose_identities_are_prefixes_of_each_other(fake):
    with fake.client(identity='abc') as short, fake.client(identity='abcdef') as long:
        short.encode(['for short'], blocking=False)
        long.encode(['for long'], blocking=False)
        np.testing.assert_array_equal(short.fetch_all(concat=True), fake.encode(['for short']))
        np.testing.assert_array_equal(long.fetch_all(concat=True), fake.encode(['for long']))


# -- the fixes: handshake, timeouts, errors, validation -------------------------------------------


def test_handshake_gives_up_when_nothing_listens(free_port, monkeypatch):
    monkeypatch.setattr(client_module, 'HANDSHAKE_TIMEOUT_MS', 1500)  # 10 s in use; the test needs no such wait
    port, port_out = free_port(), free_port()
    started = time.monotonic()
    with pytest.raises(BertTimeoutError) as info:
        BertClient(ip='127.0.0.1', port=port, port_out=port_out, timeout=60000)  # any finite timeout
    elapsed = time.monotonic() - started
    assert elapsed < 1.5 + 4, 'the handshake must not hang'
    message = str(info.value)
    assert 'within 1500 ms' in message  # the handshake's own bound, not the 60 s timeout
    assert f'"port"={port}' in message and f'"port_out"={port_out}' in message
    assert 'bert-serving-start' in message and 'firewall' in message
    assert isinstance(info.value, TimeoutError)


def test_handshake_honours_a_smaller_timeout(free_port):
    started = time.monotonic()
    with pytest.raises(BertTimeoutError, match='within 300 ms'):
        BertClient(ip='127.0.0.1', port=free_port(), port_out=free_port(), timeout=300)
    assert time.monotonic() - started < HANDSHAKE_TIMEOUT_MS / 1000, 'the smaller timeout was ignored'


def test_handshake_with_timeout_minus_one_waits_for_a_server_that_starts_later(fake_server, free_port, caplog,
                                                                               monkeypatch):
    """1.10's default: a client started before its server waits for it, logging where it waits."""
    monkeypatch.setattr(client_module, 'WAIT_LOG_INTERVAL_S', 0.2)  # 10 s in use; the test needs no such wait
    port, port_out = free_port(), free_port()
    made = {}

    def construct():
        try:
            made['client'] = BertClient(ip='127.0.0.1', port=port, port_out=port_out)  # timeout=-1 by default
        except BaseException as err:  # reported by the test's thread
            made['error'] = err

    waiting = [r for r in caplog.records if 'waiting for a bert-serving server' in r.getMessage()]
    with caplog.at_level('WARNING', logger='bert_serving.client'):
        thread = threading.Thread(target=construct)
        thread.start()
        deadline = time.monotonic() + 30
        while len(waiting) < 2 and time.monotonic() < deadline and thread.is_alive():
            time.sleep(0.05)
            waiting = [r for r in caplog.records if 'waiting for a bert-serving server' in r.getMessage()]
        assert len(waiting) >= 2 and thread.is_alive(), 'the constructor did not wait for the server'
        message = waiting[0].getMessage()
        assert '127.0.0.1' in message and f'"port"={port}' in message and f'"port_out"={port_out}' in message
        fake = fake_server(ports=(port, port_out))
        thread.join(30)
    assert not thread.is_alive() and 'error' not in made, made.get('error')
    with made['client'] as bc:
        assert bc.length_limit == 25
        np.testing.assert_array_equal(bc.encode(['late but there']), fake.encode(['late but there']))
    # It asked once before the server was up, not once a second into an empty queue.
    assert len(fake.commands(b'SHOW_CONFIG')) <= 2


def test_handshake_asks_again_when_the_first_reply_is_lost(fake):
    fake.config_plan = ['drop']  # what a slow-joining SUB does to the first reply of an old server
    with fake.client() as bc:
        assert bc.length_limit == 25
        np.testing.assert_array_equal(bc.encode(['a']), fake.encode(['a']))
    assert len(fake.commands(b'SHOW_CONFIG')) >= 2  # more if the second answer took over HANDSHAKE_RESEND_MS


def test_handshake_ignores_a_late_duplicate_reply(fake):
    release = threading.Event()
    fake.config_plan = [release]  # the first answer is held until a later ask was answered
    with fake.client() as bc:
        # The client asks again every HANDSHAKE_RESEND_MS until one answer comes, so on a busy machine it
        # may have asked more than twice; only the first ask is sure to have reached the fake by now.
        first_ask = fake.commands(b'SHOW_CONFIG')[0]
        release.set()
        duplicate_at = fake.wait_sent(first_ask.req_id)
        assert duplicate_at >= 1, 'the first answer went out before the one the handshake took'
        # The duplicate went out before this request's reply, so the client reads it first and must drop it.
        np.testing.assert_array_equal(bc.encode(['after']), fake.encode(['after']))
        assert duplicate_at < fake.wait_sent(bc.request_id)
        assert bc.server_config == fake.config
        assert bc.status['num_pending_request'] == 0


def _connected(fake, timeout_ms):
    """A client whose handshake may take its time, then waits ``timeout_ms`` for each reply."""
    bc = fake.client(timeout=HANDSHAKE_TIMEOUT_MS)
    bc.timeout = timeout_ms
    return bc


def test_request_timeout_on_a_dropped_reply(fake):
    with _connected(fake, 300) as bc:
        fake.drop_data = True
        with pytest.raises(BertTimeoutError, match=r'"timeout"=300 ms') as info:
            bc.encode(['never answered'])
        assert f'"port_out"={fake.port_out}' in str(info.value)
        assert bc.status['num_pending_request'] == 0
        fake.drop_data = False
        np.testing.assert_array_equal(bc.encode(['answered']), fake.encode(['answered']))


def test_late_reply_after_a_timeout_is_dropped(fake):
    with _connected(fake, 200) as bc:
        fake.delay = release = threading.Event()  # no reply before the client gave up
        with pytest.raises(BertTimeoutError):
            bc.encode(['too slow'])
        late = bc.request_id
        fake.delay = 0.0
        release.set()
        late_at = fake.wait_sent(late)
        # The late reply goes out before the next one, so the client reads it first and must drop it.
        np.testing.assert_array_equal(bc.encode(['next']), fake.encode(['next']))
        assert late_at < fake.wait_sent(bc.request_id)
        np.testing.assert_array_equal(bc.encode(['and next']), fake.encode(['and next']))
        assert bc.fetch_all() is None


def test_fetch_timeout_leaves_requests_pending(fake):
    with _connected(fake, 200) as bc:
        fake.delay = release = threading.Event()
        bc.encode(['slow'], blocking=False)
        with pytest.raises(BertTimeoutError):
            list(bc.fetch())
        assert bc.status['num_pending_request'] == 1
        release.set()
        bc.timeout = HANDSHAKE_TIMEOUT_MS
        np.testing.assert_array_equal(bc.fetch_all(concat=True), fake.encode(['slow']))


def test_server_error_reply_raises_with_the_servers_message(fake, bc):
    with pytest.raises(BertServerError, match=r'fake failure: texts\[1\] is RAISE') as info:
        bc.encode(['fine', 'RAISE'])
    assert isinstance(info.value, BertServingError) and info.value.req_id == 2
    assert bc.status['num_pending_request'] == 0
    np.testing.assert_array_equal(bc.encode(['fine']), fake.encode(['fine']))


def test_an_error_reply_without_a_code_is_a_plain_server_error(bc):
    with pytest.raises(BertServerError) as info:
        bc.encode(['RAISE'])
    assert type(info.value) is BertServerError and info.value.code is None  # what a 1.10 server sends


def test_a_busy_server_raises_busy_with_its_retry_hint(fake, bc):
    with pytest.raises(BertServerBusyError, match=r'texts\[0\] is BUSY') as info:
        bc.encode(['BUSY'])
    assert info.value.retry_after == 2.5 and info.value.code == ErrorCode.BUSY
    assert isinstance(info.value, BertServerError) and info.value.req_id == bc.request_id
    with pytest.raises(BertServerBusyError) as info:
        bc.encode(['BUSY-NO-HINT'])
    assert info.value.retry_after is None
    np.testing.assert_array_equal(bc.encode(['fine']), fake.encode(['fine']))


def test_a_stopping_server_raises_shutting_down(bc):
    with pytest.raises(BertServerShuttingDownError, match='STOPPING') as info:
        bc.encode(['fine', 'STOPPING'])
    assert isinstance(info.value, BertServerError) and info.value.code == ErrorCode.SHUTTING_DOWN


def test_other_codes_raise_a_server_error_carrying_the_code(bc):
    with pytest.raises(BertServerError) as info:
        bc.encode(['DEADLINE'])
    assert type(info.value) is BertServerError and info.value.code == ErrorCode.TIMEOUT


def test_fetch_all_raises_the_busy_error_of_a_failed_request(bc):
    bc.encode(['a'], blocking=False)
    bc.encode(['BUSY'], blocking=False)
    with pytest.raises(BertServerBusyError) as info:
        bc.fetch_all()
    assert info.value.req_id == bc.request_id and bc.status['num_pending_request'] == 0


def test_fetch_all_collects_every_reply_before_raising(bc):
    for batch in (['a'], ['RAISE'], ['b'], ['c', 'RAISE']):
        bc.encode(batch, blocking=False)
    with pytest.raises(BertServerError, match='texts\\[0\\] is RAISE') as info:
        bc.fetch_all()
    assert info.value.req_id == 3
    assert any('request 5 failed too' in note for note in info.value.__notes__)
    assert bc.status['num_pending_request'] == 0


def test_fetch_raises_for_the_failed_request_and_can_go_on(bc):
    bc.encode(['RAISE'], blocking=False)
    bc.encode(['ok'], blocking=False)
    fetched, failed = [], 0
    while bc.status['num_pending_request']:
        try:
            fetched.extend(bc.fetch())
        except BertServerError:
            failed += 1
    assert failed == 1 and len(fetched) == 1


@pytest.mark.parametrize('texts, is_tokenized, match', [
    (['a', 'b', 'c', 5], False, r'^texts\[3\] is int \(5\), expected str$'),
    (['a', None], False, r'texts\[1\] is NoneType \(None\)'),
    (['a', b'bytes'], False, r"texts\[1\] is bytes \(b'bytes'\)"),
    ([['a', 'b']], False, r'texts\[0\] is list .*is_tokenized=True'),
    ('a single sentence', False, r"texts is str .*expected a list of str.*\['a single sentence'\]"),
    ({'a': 1}, False, r'texts is dict .*expected a list of str'),
    ([], False, 'texts is empty'),
    (['fine', 'half a pair \ud800'], False, r"texts\[1\] holds a lone surrogate '\\ud800' at character 12"),
    ([['a'], 'b c'], True, r"texts\[1\] is str \('b c'\), expected a list of str"),
    ([['a', 3]], True, r'texts\[0\]\[1\] is int \(3\), expected str'),
    ([['a', '\udc00']], True, r'texts\[0\]\[1\] holds a lone surrogate'),
    ([], True, 'texts is empty'),
])
def test_bad_input_is_refused_before_sending(fake, bc, texts, is_tokenized, match):
    with pytest.raises(BadRequest, match=match) as info:
        bc.encode(texts, is_tokenized=is_tokenized)
    # What 1.10 raised (TypeError for a wrong type, ValueError for an empty list) still catches it.
    assert isinstance(info.value, TypeError) and isinstance(info.value, ValueError)
    assert fake.data_requests() == [] and bc.status['num_pending_request'] == 0


# -- lifecycle ------------------------------------------------------------------------------------


def test_close_is_idempotent_and_a_closed_client_says_so(fake):
    bc = fake.client()
    bc.close()
    bc.close()
    with pytest.raises(BertServingError, match='closed'):
        bc.encode(['a'])


def test_client_package_imports_neither_tensorflow_nor_the_server():
    code = ('import sys, bert_serving.client; '
            'bad = [m for m in sys.modules if m.startswith(("tensorflow", "bert_serving.server"))]; '
            'assert not bad, bad')
    subprocess.run([sys.executable, '-c', code], check=True, timeout=60)


# -- a server that goes away ------------------------------------------------------------------------


def _wait_for(predicate, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, 'the fake never reached the state the test waits for'
        time.sleep(0.02)


def test_a_pending_request_fails_when_the_server_goes_away(fake_server, monkeypatch):
    monkeypatch.setattr(connection, 'GONE_AFTER_S', 1.0)  # 12 s in use; tests/service checks that
    fake = fake_server()
    fake.delay = threading.Event()  # never set: the request stays open until the server goes
    with fake.client() as bc:  # timeout=-1: only the lost connection can end the wait
        bc.encode(['never answered'], blocking=False)
        _wait_for(lambda: fake.data_requests())
        fake.stop()
        with pytest.raises(BertServerGoneError, match='did not come back within 1 s') as info:
            bc.fetch_all()
        assert isinstance(info.value, ConnectionError) and f'"port"={fake.port}' in str(info.value)
        assert bc.status['num_pending_request'] == 0
        with pytest.raises(BertServerGoneError):  # still gone: a new request fails at once
            bc.encode(['later'])


def test_a_server_back_on_the_same_ports_loses_nothing(fake_server):
    first = fake_server()
    first.delay = threading.Event()  # the request dies with this server
    with first.client() as bc:
        bc.encode(['sent before the restart'], blocking=False)
        _wait_for(lambda: first.data_requests())
        first.stop()
        second = fake_server(ports=(first.port, first.port_out))
        result = bc.fetch_all(concat=True)  # sent again on reconnect; the old server never answered
        np.testing.assert_array_equal(result, second.encode(['sent before the restart']))
        np.testing.assert_array_equal(bc.encode(['after']), second.encode(['after']))


def test_steady_requests_do_not_poll_the_connection_monitors(fake, monkeypatch):
    """The poller that waits for a reply watches the monitors too, so their events are read when one
    comes (the two tests above drop and restore the connection), not polled for before each wait:
    at most the events left from the handshake here, against one read per request before."""
    with fake.client() as bc:
        bc.encode(['warm up'])
        reads = []
        update = bc._watch.update
        monkeypatch.setattr(bc._watch, 'update', lambda: reads.append(1) or update())
        for i in range(30):
            np.testing.assert_array_equal(bc.encode([f'sentence {i}']), fake.encode([f'sentence {i}']))
        assert len(reads) <= 2
