"""Malformed client messages never take the server down.

Every case goes through a raw PUSH socket. Where the sender can be named (an identity and a
numeric req_id), it must get an error reply on its SUB; either way the server must keep serving.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from bert_serving.client import BertServerError
from bert_serving.client.protocol import ErrorCode, unpack_reply

from bert_serving.server.engine.fake import FAKE_WIDTH

from service_support import FAKE, sentence

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MAX_REQUEST_BYTES = 10000


@pytest.fixture(scope='module')
def faults_server(launch):
    """The fake engine, one worker; requests above MAX_REQUEST_BYTES are refused (ZeroMQ drops
    those above 4x)."""
    with launch(FAKE, ['-num_worker', '1'], max_request_bytes=MAX_REQUEST_BYTES) as running:
        yield running


def _list_of_bytes(n_bytes: int) -> bytes:
    """A JSON list of strings of about n_bytes bytes."""
    item = json.dumps('word ' * 20)
    count = n_bytes // (len(item) + 2) + 1
    return ('[' + ', '.join([item] * count) + ']').encode()


# (case, payload, req_id frame, msg_len frame, words expected in the error reply)
ANSWERED = [
    ('not json', b'not json{', b'7', b'1', 'not valid JSON'),
    ('not utf-8', b'["\xff\xfe"]', b'7', b'1', 'not valid JSON'),
    ('json object', b'{"sentences": ["a"]}', b'7', b'1', 'must be a JSON list'),
    ('json number', b'42', b'7', b'1', 'must be a JSON list'),
    ('json string', b'"just a string"', b'7', b'1', 'must be a JSON list'),
    ('empty list', b'[]', b'7', b'0', 'texts is empty'),
    ('list of ints', b'[1, 2]', b'7', b'2', 'texts[0] is int'),
    ('list of nulls', b'[null]', b'7', b'1', 'texts[0] is NoneType'),
    ('text then tokens', b'["a", ["b"]]', b'7', b'2', 'texts[1] is list'),
    ('tokens then text', b'[["a"], "b"]', b'7', b'2', 'texts[1] is str'),
    ('token not a string', b'[["a", 3]]', b'7', b'1', 'texts[0][1] is int'),
    ('non-numeric msg_len', b'["a"]', b'7', b'one', 'msg_len'),
    ('msg_len too small', b'["a", "b"]', b'7', b'1', 'msg_len frame says 1'),
    ('msg_len too large', b'["a", "b"]', b'7', b'5', 'msg_len frame says 5'),
    ('negative msg_len', b'["a"]', b'7', b'-1', 'msg_len frame says -1'),
    ('oversized', _list_of_bytes(2 * MAX_REQUEST_BYTES), b'7', b'0', 'exceeds the server limit of 10000 bytes'),
    ('deeply nested', b'[' * 5000 + b']' * 5000, b'7', b'1', 'payload is nested too deeply'),
    ('nested', b'[' * 50 + b']' * 50, b'7', b'1', 'texts[0][0] is list'),
    # Valid JSON but no valid text: refused, naming the element, rather than served as some replacement.
    ('lone surrogate', b'["fine", "\\ud800 x"]', b'7', b'2',
     "texts[1] holds a lone surrogate '\\ud800' at character 0"),
    ('lone surrogate in a token', b'[["a", "\\udfff"]]', b'7', b'1', 'texts[0][1] holds a lone surrogate'),
]

# (case, frames): nobody to answer, or no req_id to answer with.
UNANSWERED = [
    ('garbage, one frame', [b'\x00\xff\x13garbage\x80']),
    ('two frames', [b'ID', b'["a"]']),
    ('three frames', [b'ID', b'["a"]', b'7']),
    ('five frames', [b'ID', b'["a"]', b'7', b'1', b'extra']),
    ('non-numeric req_id', [b'ID', b'["a"]', b'seven', b'1']),
    ('empty req_id', [b'ID', b'["a"]', b'', b'1']),
]


def _probe(peer, req_id: int) -> None:
    """Asks for the config and expects that reply next: no stray reply came before it."""
    peer.send([peer.identity, b'SHOW_CONFIG', b'%d' % req_id, b'0'])
    reply = peer.recv()
    assert reply is not None, 'the server stopped answering'
    parsed = unpack_reply(reply)
    assert (parsed.kind, parsed.req_id) == ('json', req_id), f'unexpected reply {parsed}'


@pytest.mark.parametrize('case, payload, req_id, msg_len, words', ANSWERED, ids=[c[0] for c in ANSWERED])
def test_identifiable_sender_gets_an_error_reply(faults_server, raw_peer, case, payload, req_id, msg_len, words):
    peer = raw_peer(faults_server, b'faulty-' + case.replace(' ', '-').encode())
    peer.send([peer.identity, payload, req_id, msg_len])
    reply = peer.recv()
    assert reply is not None, f'no reply to a malformed request ({case})'
    assert reply[0] == peer.identity + b'\x00' and len(reply) == 4  # the 4-frame shape a 1.10 client reads
    parsed = unpack_reply(reply)
    assert parsed.kind == 'error' and parsed.req_id == int(req_id), reply
    assert words in parsed.error
    assert parsed.code == ErrorCode.BAD_REQUEST
    assert faults_server.server.is_alive()
    _probe(peer, 100)


@pytest.mark.parametrize('case, frames', UNANSWERED, ids=[c[0] for c in UNANSWERED])
def test_anonymous_garbage_is_dropped(faults_server, raw_peer, case, frames):
    peer = raw_peer(faults_server, b'ID')
    peer.send(frames)
    _probe(peer, 101)  # nothing came for the garbage, and the server still answers
    assert faults_server.server.is_alive()


def test_far_oversized_frame_drops_only_that_connection(faults_server, raw_peer):
    """ZeroMQ disconnects a peer whose frame is over 2x the limit (MAXMSGSIZE) before the
    ventilator sees it: no reply, but the server and other clients go on."""
    peer = raw_peer(faults_server, b'faulty-huge')
    peer.send([peer.identity, _list_of_bytes(5 * MAX_REQUEST_BYTES), b'1', b'1'])
    assert peer.recv(timeout_ms=1000) is None
    other = raw_peer(faults_server, b'faulty-bystander')
    _probe(other, 1)
    assert faults_server.server.is_alive()


def test_server_still_encodes_after_every_fault(faults_server, raw_peer, fake_vectors):
    peer = raw_peer(faults_server, b'faulty-all')
    for i, (_, payload, _, msg_len, _) in enumerate(ANSWERED):
        peer.send([peer.identity, payload, b'%d' % (1000 + i), msg_len])  # the sink answers a req_id once
    for _, frames in UNANSWERED:
        peer.send(frames)
    texts = [sentence(i) for i in range(6)]
    with faults_server.client() as bc:
        np.testing.assert_allclose(bc.encode(texts), fake_vectors.many(texts), atol=1e-5)
    replies = [peer.recv() for _ in ANSWERED]
    assert all(r is not None for r in replies), 'some malformed requests got no error reply'
    parsed = [unpack_reply(r) for r in replies]
    assert {p.kind for p in parsed} == {'error'}
    assert sorted(p.req_id for p in parsed) == [1000 + i for i in range(len(ANSWERED))]


def test_request_over_the_limit_raises_server_error_in_the_client(faults_server):
    texts = ['word ' * 20] * (MAX_REQUEST_BYTES // 100 + 10)
    with faults_server.client() as bc:
        with pytest.raises(BertServerError, match='exceeds the server limit of 10000 bytes'):
            bc.encode(texts)
        assert bc.encode(['still fine']).shape == (1, FAKE_WIDTH)
