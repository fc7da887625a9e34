"""Every message of protocol.py survives pack -> unpack, and malformed ones raise ProtocolError."""
import json

import numpy as np
import pytest
import zmq

from bert_serving.client import (BadRequest, BertServerBusyError, BertServerError, BertServerShuttingDownError,
                                 BertServingError, BertTimeoutError, ProtocolError)
from bert_serving.client.protocol import (Command, ErrorCode, Reply, Request, pack_error, pack_json_reply,
                                          pack_request, pack_result, reply_error, unpack_reply, unpack_request)


def _as_bytes(frames):
    """What a receiving socket hands over: every frame as bytes."""
    return [bytes(f) for f in frames]


def test_request_round_trip():
    frames = pack_request(b'client-1', b'["a", "b"]', 7, 2)
    assert frames == [b'client-1', b'["a", "b"]', b'7', b'2']
    request = unpack_request(frames)
    assert request == Request(b'client-1', b'["a", "b"]', 7, 2)
    assert request.command is None


@pytest.mark.parametrize('command', sorted(Command.ALL))
def test_command_requests_are_recognised(command):
    request = unpack_request(pack_request(b'me', command, 1, 0))
    assert request.command == command and request.msg_len == 0


def test_command_constants_match_the_original_wire_values():
    assert (Command.SHOW_CONFIG, Command.SHOW_STATUS, Command.TERMINATE) == (
        b'SHOW_CONFIG', b'SHOW_STATUS', b'TERMINATION')


def test_request_with_wrong_frame_count_keeps_the_identity():
    with pytest.raises(ProtocolError, match='4 frames') as info:
        unpack_request([b'who', b'[]', b'1'])
    assert info.value.identity == b'who' and info.value.req_id is None


def test_request_with_a_non_numeric_req_id():
    with pytest.raises(ProtocolError, match='req_id') as info:
        unpack_request([b'who', b'[]', b'one', b'0'])
    assert info.value.identity == b'who' and info.value.req_id is None


def test_request_with_a_non_numeric_msg_len_keeps_the_req_id():
    with pytest.raises(ProtocolError, match='msg_len') as info:
        unpack_request([b'who', b'[]', b'3', b'x'])
    assert (info.value.identity, info.value.req_id) == (b'who', 3)


@pytest.mark.parametrize('shape', [
    (3, 8), (2, 5, 4), (1, 1), (0, 8),
])
def test_result_round_trip(shape):
    array = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    reply = unpack_reply(_as_bytes(pack_result(b'me', 12, array)))
    assert (reply.kind, reply.req_id, reply.tokens) == ('result', 12, None)
    assert reply.array.dtype == np.float32 and reply.array.shape == shape
    np.testing.assert_array_equal(reply.array, array)


def test_result_keeps_tokens_and_reads_a_non_contiguous_array():
    array = np.arange(24, dtype=np.float32).reshape(4, 6)[:, ::2]
    tokens = [['[CLS]', 'a', '[SEP]']] * 4
    reply = unpack_reply(_as_bytes(pack_result(b'me', 1, array, tokens)))
    np.testing.assert_array_equal(reply.array, array)
    assert reply.tokens == tokens


def test_result_header_is_what_a_1_10_client_reads():
    frames = pack_result(b'me', 5, np.zeros((2, 3), np.float32))
    assert len(frames) == 4 and frames[0] == b'me' and frames[3] == b'5'
    assert json.loads(frames[1]) == {'dtype': 'float32', 'shape': [2, 3], 'tokens': ''}


def test_result_array_is_a_read_only_view_of_the_frame():
    frame = bytearray(np.ones(4, np.float32).tobytes())
    header = json.dumps({'dtype': 'float32', 'shape': [1, 4], 'tokens': ''}).encode()
    reply = unpack_reply([b'me', header, bytes(frame), b'1'])
    assert not reply.array.flags.writeable and not reply.array.flags.owndata


def test_result_through_a_socket_pair():
    with zmq.Context() as context, context.socket(zmq.PAIR) as a, context.socket(zmq.PAIR) as b:
        a.linger = b.linger = 0
        a.bind('inproc://protocol-test')
        b.connect('inproc://protocol-test')
        array = np.random.default_rng(0).standard_normal((64, 384)).astype(np.float32)
        a.send_multipart(pack_result(b'me', 3, array))
        reply = unpack_reply(b.recv_multipart())
    np.testing.assert_array_equal(reply.array, array)


def test_json_reply_round_trip():
    config = {'max_seq_len': 25, 'show_tokens_to_client': False, 'nested': {'a': [1, 2]}}
    frames = pack_json_reply(b'me', 9, config)
    assert len(frames) == 3
    assert unpack_reply(_as_bytes(frames)) == Reply('json', 9, data=config)


def test_error_round_trip_and_its_header_fails_a_1_10_client_loudly():
    frames = pack_error(b'me', 4, 'texts[2] is int')
    reply = unpack_reply(_as_bytes(frames))
    assert (reply.kind, reply.req_id, reply.error) == ('error', 4, 'texts[2] is int')
    header = json.loads(frames[1])
    with pytest.raises(TypeError):  # what np.frombuffer in an unmodified 1.10 client does with it
        np.frombuffer(frames[2], dtype=header['dtype'])
    assert 'code' not in header and reply.code is None


@pytest.mark.parametrize('code', sorted(ErrorCode.ALL))
def test_error_codes_keep_the_shape_a_1_10_client_fails_on(code):
    frames = pack_error(b'me', 4, 'server busy, retry', code)
    assert len(frames) == 4 and frames[2] == b''
    header = json.loads(frames[1])
    assert header['code'] == code and header['shape'] == [0]
    with pytest.raises((TypeError, ValueError)):  # a comma in the message makes numpy raise ValueError
        np.frombuffer(frames[2], dtype=header['dtype'])
    reply = unpack_reply(_as_bytes(frames))
    assert (reply.kind, reply.code, reply.retry_after, reply.error) == ('error', code, None, 'server busy, retry')


def test_busy_error_carries_retry_after():
    reply = unpack_reply(_as_bytes(pack_error(b'me', 4, 'queue full', ErrorCode.BUSY, retry_after=1.5)))
    assert (reply.code, reply.retry_after) == (ErrorCode.BUSY, 1.5)
    assert unpack_reply(_as_bytes(pack_error(b'me', 4, 'queue full', ErrorCode.BUSY, 0))).retry_after == 0.0


@pytest.mark.parametrize('code, retry_after', [('no-such-code', None), ('BUSY', None),
                                                (ErrorCode.FAILED, 1.0), (None, 1.0), (ErrorCode.BUSY, -1)])
def test_pack_error_refuses_unknown_codes_and_misplaced_retry_after(code, retry_after):
    with pytest.raises(ValueError):
        pack_error(b'me', 4, 'message', code, retry_after)


@pytest.mark.parametrize('extra, code, retry_after', [
    ({'code': 'from-a-newer-server'}, 'from-a-newer-server', None),
    ({'code': 7}, None, None),
    ({'code': 'busy', 'retry_after': 'soon'}, 'busy', None),
    ({'code': 'busy', 'retry_after': -3}, 'busy', None),
    ({'code': 'busy', 'retry_after': True}, 'busy', None),
    ({'code': 'busy', 'retry_after': 2}, 'busy', 2),
])
def test_odd_optional_fields_never_hide_the_message(extra, code, retry_after):
    header = json.dumps({'error': 'the message', 'dtype': 'x', 'shape': [0], 'tokens': '', **extra}).encode()
    reply = unpack_reply([b'me', header, b'', b'4'])
    assert (reply.error, reply.code, reply.retry_after) == ('the message', code, retry_after)


@pytest.mark.parametrize('code, retry_after, error_type', [
    (ErrorCode.BUSY, 0.5, BertServerBusyError),
    (ErrorCode.SHUTTING_DOWN, None, BertServerShuttingDownError),
    (ErrorCode.BAD_REQUEST, None, BertServerError),
    (ErrorCode.TIMEOUT, None, BertServerError),
    (ErrorCode.FAILED, None, BertServerError),
    (None, None, BertServerError),
    ('from-a-newer-server', None, BertServerError),
])
def test_reply_error_raises_what_the_code_stands_for(code, retry_after, error_type):
    err = reply_error(Reply('error', 9, error='why', code=code, retry_after=retry_after))
    assert type(err) is error_type and str(err) == 'why'
    assert (err.code, err.req_id) == (code, 9)
    assert getattr(err, 'retry_after', None) == retry_after


def test_one_error_hierarchy():
    for error in (BertServerError, BertServerBusyError, BertServerShuttingDownError, BertTimeoutError,
                  ProtocolError, BadRequest):
        assert issubclass(error, BertServingError), error
    assert issubclass(BertServerBusyError, BertServerError) and issubclass(BertServerShuttingDownError, BertServerError)
    assert issubclass(BadRequest, ValueError) and issubclass(BadRequest, TypeError)


@pytest.mark.parametrize('frames, match', [
    ([b'me', b'1'], '3 or 4 frames'),
    ([b'me', b'{}', b'', b'', b'1'], '3 or 4 frames'),
    ([b'me', b'{}', b'x'], 'req_id'),
    ([b'me', b'not json', b'1'], 'not JSON'),
    ([b'me', b'[1, 2]', b'', b'1'], 'JSON object'),
    ([b'me', b'{"shape": [2]}', b'\0' * 8, b'1'], 'does not match'),
    ([b'me', b'{"dtype": "float32", "shape": [3]}', b'\0' * 8, b'1'], 'does not match'),
    ([b'me', b'{"dtype": "no-such-type", "shape": [2]}', b'\0' * 8, b'1'], 'does not match'),
])
def test_malformed_replies(frames, match):
    with pytest.raises(ProtocolError, match=match):
        unpack_reply(frames)


def test_a_result_header_seen_before_is_read_from_the_cache_with_the_same_checks(monkeypatch):
    """Result headers without tokens are parsed once per distinct header: later replies with the same
    header give the same array, a frame of the wrong size still raises, and headers with tokens,
    errors and JSON replies are never cached. The cache is emptied when it is full."""
    from bert_serving.client import protocol

    monkeypatch.setattr(protocol, '_RESULT_LAYOUTS', {})
    parsed = []
    real_loads = protocol.json.loads
    monkeypatch.setattr(protocol.json, 'loads', lambda raw: parsed.append(raw) or real_loads(raw))
    arrays = [np.full((1, 4), i, np.float32) for i in range(3)]
    for i, array in enumerate(arrays):
        reply = unpack_reply(_as_bytes(pack_result(b'me', i, array)))
        assert (reply.req_id, reply.tokens) == (i, None)
        np.testing.assert_array_equal(reply.array, array)
        assert not reply.array.flags.writeable
    assert len(parsed) == 1 and len(protocol._RESULT_LAYOUTS) == 1
    header = pack_result(b'me', 1, arrays[0])[1]
    with pytest.raises(ProtocolError, match='reply 9 array does not match its header'):
        unpack_reply([b'me', header, b'\0' * 12, b'9'])
    tokens = [['[CLS]', 'a', '[SEP]']]
    for _ in range(2):
        assert unpack_reply(_as_bytes(pack_result(b'me', 2, arrays[1], tokens))).tokens == tokens
        assert unpack_reply(_as_bytes(pack_error(b'me', 3, 'no'))).kind == 'error'
        assert unpack_reply(_as_bytes(pack_json_reply(b'me', 4, {'a': 1}))).data == {'a': 1}
    assert len(parsed) == 1 + 6 and len(protocol._RESULT_LAYOUTS) == 1
    monkeypatch.setattr(protocol, '_MAX_RESULT_LAYOUTS', 2)
    for rows in (2, 3):
        unpack_reply(_as_bytes(pack_result(b'me', 5, np.zeros((rows, 4), np.float32))))
    assert len(protocol._RESULT_LAYOUTS) == 1  # the third layout found it full: emptied, then added


def test_protocol_error_is_a_value_error_and_a_bert_serving_error():
    from bert_serving.client import BertServingError

    assert issubclass(ProtocolError, ValueError) and issubclass(ProtocolError, BertServingError)
