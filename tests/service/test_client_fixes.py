"""What the new client fixes over 1.10.0, checked against the real server: a bounded handshake,
empty strings, input checks that name the element, and server errors raised, not waited for."""
from __future__ import annotations

import time

import numpy as np
import pytest

from bert_serving.client import BertClient, BertServerError, BertTimeoutError
from bert_serving.client import client as client_module
from bert_serving.client.protocol import unpack_reply

from bert_serving.server.engine.fake import FAKE_WIDTH

from service_support import SHARED_MAX_REQUEST_BYTES

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.mark.parametrize('timeout', [60000, 1500])
def test_constructor_without_a_server_times_out(free_port, timeout, monkeypatch):
    """Nothing listens on either port: with a finite timeout the handshake gives up (never later
    than HANDSHAKE_TIMEOUT_MS) instead of hanging. timeout=-1 waits for the server, as 1.10 did
    (tests/client/test_client.py)."""
    handshake_ms = 3000  # 10 s in use (HANDSHAKE_TIMEOUT_MS); still above the smaller timeout
    monkeypatch.setattr(client_module, 'HANDSHAKE_TIMEOUT_MS', handshake_ms)
    port, port_out = free_port(), free_port()
    started = time.monotonic()
    budget = min(handshake_ms, timeout)
    with pytest.raises(BertTimeoutError, match=f'within {budget} ms .*"port"={port}'):
        BertClient(ip='127.0.0.1', port=port, port_out=port_out, timeout=timeout)
    assert time.monotonic() - started < budget / 1000 + 10  # bounded; the slack is for a loaded machine


def test_empty_and_blank_strings_are_cls_sep(shared_server, fake_vectors):
    texts = ['hello world', '', '   ', '\t\n', 'the lazy dog']
    with shared_server.client() as bc:
        vectors, tokens = bc.encode(texts, show_tokens=True)
    assert tokens[1] == tokens[2] == tokens[3] == ['[CLS]', '[SEP]']
    np.testing.assert_allclose(vectors[2], vectors[1], atol=1e-6)
    np.testing.assert_allclose(vectors[3], vectors[1], atol=1e-6)
    np.testing.assert_allclose(vectors, fake_vectors.many(texts), atol=1e-5)  # no row shifted


def test_only_empty_strings(shared_server, fake_vectors):
    with shared_server.client() as bc:
        vectors = bc.encode(['', ' '])
    np.testing.assert_allclose(vectors, fake_vectors.many(['', '']), atol=1e-5)


@pytest.mark.parametrize('texts, kwargs, error, words', [
    (['fine', 3, 'fine'], {}, TypeError, r'texts\[1\] is int'),
    (['fine', None], {}, TypeError, r'texts\[1\] is NoneType'),
    (['fine', ['a', 'list']], {}, TypeError, r'texts\[1\] is list.*is_tokenized=True'),
    ('a single string', {}, TypeError, r'wrap a single sentence in a list'),
    ([], {}, ValueError, r'texts is empty'),
    ([['a', 'b'], ['c', 7]], {'is_tokenized': True}, TypeError, r'texts\[1\]\[1\] is int'),
    ([['a'], 'b'], {'is_tokenized': True}, TypeError, r'texts\[1\] is str'),
], ids=['int', 'None', 'list without is_tokenized', 'bare string', 'empty', 'int token', 'str among token lists'])
def test_wrong_input_is_refused_before_sending(shared_server, texts, kwargs, error, words):
    with shared_server.client() as bc:
        sent = bc.status['num_request']
        with pytest.raises(error, match=words):
            bc.encode(texts, **kwargs)
        assert bc.status['num_request'] == sent, 'a malformed request went out'
        assert bc.encode(['still usable']).shape == (1, FAKE_WIDTH)


def test_server_side_error_comes_back_as_an_error_reply(shared_server, raw_peer):
    peer = raw_peer(shared_server, b'client-fixes-raw')
    peer.send([peer.identity, b'{"not": "a list"}', b'41', b'1'])
    reply = peer.recv()
    assert reply is not None, 'no error reply'
    parsed = unpack_reply(reply)
    assert parsed.kind == 'error' and parsed.req_id == 41
    assert 'must be a JSON list' in parsed.error


def test_server_failure_raises_bert_server_error(shared_server, fake_vectors):
    """Valid input the server refuses (more bytes than it accepts) raises at once with the
    server's message, and the client goes on."""
    too_many = ['word ' * 20] * (SHARED_MAX_REQUEST_BYTES // 100 + 100)
    with shared_server.client() as bc:
        with pytest.raises(BertServerError, match=f'exceeds the server limit of {SHARED_MAX_REQUEST_BYTES} bytes'):
            bc.encode(too_many)
        bc.encode(too_many, blocking=False)
        bc.encode(['after the error'], blocking=False)
        with pytest.raises(BertServerError, match='exceeds the server limit'):
            bc.fetch_all()
        assert bc.status['num_pending_request'] == 0
        np.testing.assert_allclose(bc.encode(['after the error']), fake_vectors.many(['after the error']),
                                   atol=1e-5)
