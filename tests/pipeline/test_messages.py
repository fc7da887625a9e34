"""messages: every pack_* / unpack_* pair round-trips into named fields, and every malformed message
raises BadMessage, never another exception."""
import json

import numpy as np
import pytest

from bert_serving.server.pipeline import messages as msg
from bert_serving.server.pipeline.messages import BadMessage, Piece

ID = b'worker-0-1'


def piece(**fields) -> Piece:
    values = dict(client=b'client-\xff\x00', req_id=7, rows=[3, 0, 2], texts=['a b', 'c', 'd e f'],
                  is_tokenized=False, show_tokens=True, serial=11, piece_id=42, attempt=1)
    values.update(fields)
    return Piece(**values)


# -- worker -> ventilator --------------------------------------------------------------------------
def test_ready_round_trips():
    m = msg.unpack_worker([ID] + msg.pack_ready(credit=3, pid=1234, device='cpu'))
    assert (m.identity, m.kind, m.credit) == (ID, msg.READY, 3)
    assert m.info['pid'] == 1234 and m.info['device'] == 'cpu'


def test_ready_credit_is_at_least_one():
    assert msg.unpack_worker([ID] + msg.pack_ready(credit=0, pid=1, device='cpu')).credit == 1


@pytest.mark.parametrize('batch_id', [None, 0, 17])
def test_heartbeat_round_trips(batch_id):
    m = msg.unpack_worker([ID] + msg.pack_heartbeat(batch_id))
    assert (m.identity, m.kind, m.batch_id) == (ID, msg.HEARTBEAT, batch_id)


def test_heartbeat_names_the_batches_held_and_leaving_and_the_last_pong():
    m = msg.unpack_worker([ID] + msg.pack_heartbeat(5, holds=[5, 6], pong=6, sending=[4]))
    assert (m.batch_id, m.holds, m.sending, m.pong) == (5, (5, 6), (4,), 6)
    m = msg.unpack_worker([ID] + msg.pack_heartbeat(None))
    assert (m.batch_id, m.holds, m.sending, m.pong) == (None, (), (), None)
    # A worker that does not say what it holds (an older one) is judged by deadlines only.
    m = msg.unpack_worker([ID, msg.HEARTBEAT, b'{"batch": 3}'])
    assert (m.batch_id, m.holds, m.sending, m.pong) == (3, None, (), None)
    assert msg.unpack_worker([ID, msg.HEARTBEAT, b'{"holds": [], "pong": true}']).pong is None


_ODD_IDS = [b'"1"', b'[1, "2"]', b'[1.5]', b'[true]', b'{"1": 1}']


@pytest.mark.parametrize('body', [b'{"holds": %s}' % ids for ids in _ODD_IDS]
                         + [b'{"holds": [], "sending": %s}' % ids for ids in _ODD_IDS + [b'null']])
def test_a_heartbeat_with_odd_batch_lists_is_malformed(body):
    with pytest.raises(BadMessage):
        msg.unpack_worker([ID, msg.HEARTBEAT, body])


def test_pong_carries_the_mark():
    assert msg.unpack_control(msg.pack_pong(12)) == msg.Control(msg.PONG, mark=12)
    assert msg.unpack_control(msg.pack_pong()) == msg.Control(msg.PONG)
    with pytest.raises(BadMessage):
        msg.unpack_control([msg.PONG, b'x'])


def test_peek_batch_reads_the_id_only():
    frames = msg.pack_batch(77, [piece()])
    assert msg.peek_batch(frames) == 77
    assert msg.peek_batch([msg.BATCH, b'78', b'not even json']) == 78
    for frames in ([msg.BATCH, b'x', b'{}'], [msg.BATCH, b'1']):
        with pytest.raises(BadMessage):
            msg.peek_batch(frames)


def test_done_round_trips():
    m = msg.unpack_worker([ID] + msg.pack_done(99))
    assert (m.identity, m.kind, m.batch_id) == (ID, msg.DONE, 99)


def test_fatal_round_trips_any_text():
    text = 'cannot load the model: caf\u00e9 \udcff'
    m = msg.unpack_worker([ID] + msg.pack_fatal(text))
    assert (m.identity, m.kind) == (ID, msg.FATAL)
    assert m.message.startswith('cannot load the model: caf\u00e9 ')


@pytest.mark.parametrize('frames', [
    [],
    [ID],
    [ID, msg.READY],
    [ID, b'NONSENSE', b'{}'],
    [ID, msg.READY, b'not json'],
    [ID, msg.READY, b'[1, 2]'],
    [ID, msg.READY, b'{"pid": 1}'],
    [ID, msg.READY, b'{"credit": "many"}'],
    [ID, msg.READY, b'{"credit": null}'],
    [ID, msg.READY, b'{"credit": [1]}'],
    [ID, msg.HEARTBEAT, b'{"batch": '],
    [ID, msg.HEARTBEAT, b'\xff\xfe'],
    [ID, msg.DONE, b'x12'],
    [ID, msg.DONE, b''],
    [ID, msg.READY, b'[' * 100_000 + b']' * 100_000],
], ids=lambda f: repr(f)[:40])
def test_malformed_worker_messages(frames):
    with pytest.raises(BadMessage):
        msg.unpack_worker(frames)


def test_a_heartbeat_with_an_odd_batch_is_read_as_no_batch():
    for body in (b'[]', b'{"batch": "3"}', b'{}', b'null'):
        assert msg.unpack_worker([ID, msg.HEARTBEAT, body]).batch_id is None


# -- ventilator -> worker --------------------------------------------------------------------------
def test_batch_round_trips():
    pieces = [piece(), piece(client=b'other', piece_id=43, rows=[0], texts=[['x', '|||', 'y']], is_tokenized=True,
                             show_tokens=False, attempt=0)]
    batch_id, back = msg.unpack_batch(msg.pack_batch(5, pieces))
    assert batch_id == 5
    assert back == pieces
    assert back[0].key == (b'client-\xff\x00', 7, 11)


def test_lone_surrogates_survive_a_batch():
    texts = ['\ud800', 'a\udfffb', 'ok \udc80']
    _, [back] = msg.unpack_batch(msg.pack_batch(1, [piece(rows=[0, 1, 2], texts=texts)]))
    assert back.texts == texts
    _, [back] = msg.unpack_batch(msg.pack_batch(1, [piece(rows=[0], texts=[['\ud83d', 'x']], is_tokenized=True)]))
    assert back.texts == [['\ud83d', 'x']]


def test_piece_defaults_for_optional_fields():
    d = piece().to_json()
    del d['show_tokens'], d['attempt']
    back = Piece.from_json(d)
    assert (back.show_tokens, back.attempt) == (False, 0)


def _batch_body(**changes) -> bytes:
    d = piece().to_json()
    for k, v in changes.items():
        if v is KeyError:
            del d[k]
        else:
            d[k] = v
    return json.dumps({'pieces': [d]}).encode()


@pytest.mark.parametrize('frames', [
    [],
    [msg.BATCH, b'1'],
    [msg.BATCH, b'1', b'{}', b'extra'],
    [b'NOTBATCH', b'1', b'{"pieces": []}'],
    [msg.BATCH, b'one', b'{"pieces": []}'],
    [msg.BATCH, b'1', b'{"pieces": '],
    [msg.BATCH, b'1', b'[]'],
    [msg.BATCH, b'1', b'{"pieces": {}}'],
    [msg.BATCH, b'1', b'{"pieces": [1]}'],
    [msg.BATCH, b'1', _batch_body(client=KeyError)],
    [msg.BATCH, b'1', _batch_body(rows=KeyError)],
    [msg.BATCH, b'1', _batch_body(texts=KeyError)],
    [msg.BATCH, b'1', _batch_body(serial=KeyError)],
    [msg.BATCH, b'1', _batch_body(client=5)],
    [msg.BATCH, b'1', _batch_body(client='\u20ac')],
    [msg.BATCH, b'1', _batch_body(rows=['x'])],
    [msg.BATCH, b'1', _batch_body(rows=7)],
    [msg.BATCH, b'1', _batch_body(req_id=None)],
    [msg.BATCH, b'1', _batch_body(texts=3)],
    [msg.BATCH, b'1', _batch_body(piece_id='p')],
], ids=lambda f: repr(f)[:40])
def test_malformed_batches(frames):
    with pytest.raises(BadMessage):
        msg.unpack_batch(frames)


# -- ventilator and workers -> sink ----------------------------------------------------------------
@pytest.mark.parametrize('timeout', [None, 0.3, 30])
def test_register_round_trips(timeout):
    [m] = msg.unpack_sink(msg.pack_register(b'c', 4, n=12, serial=9, timeout=timeout))
    assert (m.kind, m.client, m.req_id, m.serial, m.n, m.timeout) == (msg.REGISTER, b'c', 4, 9, 12, timeout)
    assert m.key == (b'c', 4, 9)


@pytest.mark.parametrize('shape, dtype', [((3, 8), np.float32), ((3, 5, 4), np.float16), ((3, 0), np.float32)])
def test_result_round_trips(shape, dtype):
    array = np.arange(np.prod(shape), dtype=dtype).reshape(shape)
    p = piece()
    tokens = [['[CLS]', 'a', '[SEP]'], ['[CLS]', '[SEP]'], ['[CLS]', 'd', '[SEP]']]
    [m] = msg.unpack_sink(msg.pack_result(p, array, tokens))
    assert (m.kind, m.client, m.req_id, m.serial, m.piece_id) == (msg.RESULT, p.client, 7, 11, 42)
    assert m.rows == [3, 0, 2] and m.tokens == tokens
    assert m.array.dtype == dtype
    np.testing.assert_array_equal(m.array, array)


def test_one_register_carries_many_requests():
    entries = [msg.register_entry(b'c%d' % i, i, n=i + 1, serial=100 + i, timeout=None if i else 2.5,
                                  key=b'K' if i == 1 else b'', received=10.0 + i) for i in range(3)]
    ms = msg.unpack_sink(msg.pack_registers(entries))
    assert [(m.kind, m.client, m.req_id, m.n, m.serial, m.timeout, m.curve_key, m.received) for m in ms] == [
        (msg.REGISTER, b'c0', 0, 1, 100, 2.5, b'', 10.0), (msg.REGISTER, b'c1', 1, 2, 101, None, b'K', 11.0),
        (msg.REGISTER, b'c2', 2, 3, 102, None, b'', 12.0)]


def test_one_result_carries_many_pieces_each_with_its_own_array():
    any_bytes = bytes(range(256))  # any bytes survive the JSON header (as latin-1 text)
    pieces = [msg.Piece(any_bytes, 3, [1], ['a'], serial=5, piece_id=8, tag='t8'),
              msg.Piece(b'other', 4, [0, 2], ['b', 'c'], serial=6, piece_id=9, tag='t9')]
    arrays = [np.full((1, 3), 1.5, np.float32), np.arange(6, dtype=np.float16).reshape(2, 3)]
    call = {'rows': 3, 'padded': 12, 'lengths': [4, 4, 4]}
    frames = msg.pack_results([msg.result_entry(pieces[0], arrays[0], [['[CLS]', 'a', '[SEP]']], queue=0.5,
                                                model=0.25, call=call),
                               msg.result_entry(pieces[1], arrays[1], None, queue=0.1, model=0.25)])
    assert len(frames) == 4
    first, second = msg.unpack_sink(frames)
    assert (first.client, first.req_id, first.serial, first.piece_id, first.rows, first.tag, first.tokens) == \
        (any_bytes, 3, 5, 8, [1], 't8', [['[CLS]', 'a', '[SEP]']])
    assert (first.queue, first.model, first.call, second.call) == (0.5, 0.25, call, None)
    assert (second.client, second.req_id, second.piece_id, second.rows, second.tokens) == (b'other', 4, 9, [0, 2], None)
    np.testing.assert_array_equal(first.array, arrays[0])
    assert second.array.dtype == np.float16
    np.testing.assert_array_equal(second.array, arrays[1])


def test_a_time_too_large_for_a_float_reads_as_no_time():
    [m] = msg.unpack_sink(_result({'queue': 10 ** 400, 'model': float('nan')}))
    assert (m.queue, m.model) == (None, None)


def test_one_malformed_piece_refuses_the_whole_result():
    good = msg.result_entry(piece(rows=[0]), np.zeros((1, 2), np.float32), None)
    bad = msg.result_entry(piece(rows=[0, 1]), np.zeros((1, 2), np.float32), None)  # 2 rows, 1 row of data
    with pytest.raises(BadMessage, match='rows'):
        msg.unpack_sink(msg.pack_results([good, bad]))
    with pytest.raises(BadMessage, match='frames'):
        msg.unpack_sink(msg.pack_results([good, good])[:-1])


def test_result_of_a_non_contiguous_array():
    array = np.arange(24, dtype=np.float32).reshape(8, 3)[::2].T  # [3, 4], not contiguous
    [m] = msg.unpack_sink(msg.pack_result(piece(), array, None))
    np.testing.assert_array_equal(m.array, array)
    assert m.tokens is None


def test_json_reply_round_trips():
    [m] = msg.unpack_sink(msg.pack_json_reply(b'c', 3, b'{"any": "bytes"}'))
    assert (m.kind, m.client, m.req_id, m.body) == (msg.JSON_REPLY, b'c', 3, b'{"any": "bytes"}')
    assert m.serial is None


def test_fail_round_trips():
    [m] = msg.unpack_sink(msg.pack_fail(b'c', 3, 'it broke', code='failed', serial=8, piece_id=21))
    assert (m.kind, m.client, m.req_id, m.message, m.code, m.serial, m.piece_id) == (
        msg.FAIL, b'c', 3, 'it broke', 'failed', 8, 21)
    [refused] = msg.unpack_sink(msg.pack_fail(b'c', 4, 'busy', code='busy'))
    assert (refused.serial, refused.piece_id, refused.code) == (None, None, 'busy')
    assert msg.unpack_sink(msg.pack_fail(b'c', 5, 'no code'))[0].code is None


@pytest.mark.parametrize('code', [5, ['failed'], {'a': 1}, True])
def test_a_fail_code_that_is_no_string_reads_as_none(code):
    assert msg.unpack_sink(msg.pack_fail(b'c', 5, 'odd', code=code, serial=1))[0].code is None


def _result(header_changes=None, buffer=None, rows=2) -> list:
    array = np.zeros((rows, 4), np.float32)
    frames = msg.pack_result(piece(rows=list(range(rows))), array, None)
    body = json.loads(frames[1])
    body['pieces'][0].update(header_changes or {})
    return frames[:1] + [json.dumps(body).encode(), bytes(frames[2]) if buffer is None else buffer]


def _register(**changes):
    body = json.loads(msg.pack_register(b'c', 1, n=1, serial=1, timeout=None)[1])
    body['requests'][0].update(changes)
    for name in [k for k, v in changes.items() if v is _DROP]:
        del body['requests'][0][name]
    return [msg.REGISTER, json.dumps(body).encode()]


_DROP = object()


@pytest.mark.parametrize('frames', [
    [],
    [msg.REGISTER],
    [msg.REGISTER, b'{"requests": []}', b'extra'],
    [msg.REGISTER, b'{"requests": [{"n": 1'],
    [msg.REGISTER, b'[]'],
    [msg.REGISTER, b'{"requests": {}}'],
    [msg.REGISTER, b'{"requests": [1]}'],
    _register(req_id='req'),
    _register(client=7),
    _register(client=_DROP),
    _register(n=_DROP),
    _register(serial=_DROP),
    _register(n='x'),
    _register(timeout='soon'),
    _register(timeout=[1]),
    [msg.RESULT],
    [msg.RESULT, b'{"pieces": "x"}'],
    [msg.FAIL, b'c', b'1', b'{"code": "failed"}'],
    [msg.FAIL, b'c', b'1', b'{"message": "m", "serial": "s"}'],
    [msg.FAIL, b'c', b'1', b'{"message": "m", "piece": {}}'],
    [b'WHAT', b'c', b'1', b'{}'],
    _result()[:2],
    _result() + [b'extra'],
    _result({'client': None}),
    _result({'client': '\u0100'}),  # no latin-1 character: not bytes the worker sent
    _result({'req_id': 'r'}),
    _result({'req_id': float('inf')}),  # OverflowError, not a crash
    _result({'rows': [float('inf'), 1]}),
    _result({'piece': float('-inf')}),
    _register(serial=float('inf')),
    [msg.FAIL, b'c', b'1', b'{"message": "m", "serial": Infinity}'],
    _result({'dtype': 'no-such-dtype'}),
    _result({'dtype': None}),
    _result({'shape': [2, 5]}),
    _result({'shape': 'x'}),
    _result({'rows': [0]}),
    _result({'rows': [0, 'one']}),
    _result({'rows': None}),
    _result({'serial': None}),
    _result({'piece': 'p'}),
    _result({'shape': []}, buffer=b'\x00' * 4),
    _result(buffer=b'\x00' * 3),
    _result({'dtype': 'O'}),
], ids=lambda f: repr(f)[:60])
def test_malformed_sink_messages(frames):
    with pytest.raises(BadMessage):
        msg.unpack_sink(frames)


# -- sink -> ventilator ----------------------------------------------------------------------------
def test_feedback_round_trips():
    assert msg.unpack_feedback(msg.pack_confirm([4, 5, 6])) == (msg.CONFIRM, [4, 5, 6], 0)
    assert msg.unpack_feedback(msg.pack_finished([9], dropped=3)) == (msg.FINISHED, [9], 3)
    assert msg.unpack_feedback(msg.pack_confirm([])).ids == []


@pytest.mark.parametrize('frames', [
    [],
    [msg.CONFIRM],
    [msg.CONFIRM, b'{"pieces": []}', b'extra'],
    [b'OTHER', b'{"pieces": [1]}'],
    [msg.CONFIRM, b'{"serials": [1]}'],
    [msg.FINISHED, b'{"pieces": [1]}'],
    [msg.CONFIRM, b'{"pieces": 1}'],
    [msg.CONFIRM, b'{"pieces": ["x"]}'],
    [msg.CONFIRM, b'{"pieces": [null]}'],
    [msg.CONFIRM, b'{"pieces": [[1]]}'],
    [msg.CONFIRM, b'[1, 2]'],
    [msg.CONFIRM, b'{"pieces": [1'],
])
def test_malformed_feedback(frames):
    with pytest.raises(BadMessage):
        msg.unpack_feedback(frames)


# -- the metrics' fields: optional, so a message without them still parses -----------------------

def test_a_heartbeat_says_how_long_the_worker_was_busy():
    m = msg.unpack_worker([b'w'] + msg.pack_heartbeat(3, holds=[3], busy=12.5))
    assert m.busy == 12.5
    old = msg.unpack_worker([b'w', msg.HEARTBEAT, json.dumps({'batch': None, 'holds': []}).encode()])
    assert old.busy is None
    for odd in ('soon', None, float('nan'), [1], True):
        body = json.dumps({'batch': None, 'holds': [], 'busy': odd}).encode()
        assert msg.unpack_worker([b'w', msg.HEARTBEAT, body]).busy is None


def test_a_piece_carries_its_time_in_the_ventilators_queue():
    [p] = msg.unpack_batch(msg.pack_batch(1, [piece(queued=0.25)]))[1]
    assert p.queued == 0.25
    body = piece().to_json()
    del body['queued']
    assert Piece.from_json(body).queued == 0.0


def test_register_and_refusals_carry_when_the_request_was_received():
    [m] = msg.unpack_sink(msg.pack_register(b'c', 1, n=2, serial=5, timeout=None, received=1234.5))
    assert m.received == 1234.5
    assert msg.unpack_sink(msg.pack_register(b'c', 1, n=2, serial=5, timeout=None))[0].received is None
    [refused] = msg.unpack_sink(msg.pack_fail(b'c', 2, 'busy', code='busy', received=99.0))
    assert (refused.received, refused.outcome) == (99.0, None)
    [lost] = msg.unpack_sink(msg.pack_fail(b'c', 3, 'lost twice', code='failed', serial=4, outcome='worker_lost'))
    assert lost.outcome == 'worker_lost'


def test_a_result_carries_its_queue_and_model_time_and_the_first_its_model_call():
    call = {'rows': 3, 'padded': 36, 'lengths': [5, 12, 7]}
    frames = msg.pack_result(piece(), np.zeros((3, 2), np.float32), None, queue=0.012, model=0.034, call=call)
    [m] = msg.unpack_sink(frames)
    assert (m.queue, m.model, m.call) == (0.012, 0.034, call)
    [plain] = msg.unpack_sink(msg.pack_result(piece(), np.zeros((3, 2), np.float32), None))
    assert (plain.queue, plain.model, plain.call) == (None, None, None)


@pytest.mark.parametrize('call', ['x', [], {'rows': 1}, {'rows': 1, 'padded': 4, 'lengths': ['a']},
                                  {'rows': True, 'padded': 4, 'lengths': [4]}, {'rows': 1, 'padded': 4.5, 'lengths': [4]}])
def test_a_malformed_model_call_is_refused(call):
    with pytest.raises(BadMessage):
        msg.unpack_sink(_result({'call': call}))


def test_status_round_trips_like_a_json_reply():
    [m] = msg.unpack_sink(msg.pack_status(b'c', 3, b'{"ready": true}', b'KEY'))
    assert (m.kind, m.client, m.req_id, m.body, m.curve_key) == (msg.STATUS, b'c', 3, b'{"ready": true}', b'KEY')
