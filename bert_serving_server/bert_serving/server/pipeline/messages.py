"""Messages between the server's own processes, frame by frame. Nothing else reads frames by index.

The client-facing protocol is ``bert_serving.client.protocol``; this module is the internal one.
Nothing is pickled: headers are JSON, arrays raw bytes. Every ``unpack_*`` raises
:class:`BadMessage` on a malformed message, which the receiver logs and drops.

Ventilator ROUTER (binds ``backend``, and tcp ``port_worker`` for remote workers) <-> worker DEALER::

    worker -> ventilator   [HELLO, JSON {"fingerprint", "host", "pid", "device", "local", "protocol"}]
                                                       who I am, and the PROTOCOL_VERSION I speak
                           [READY, JSON {"credit", "pid", "device"}]   model loaded
                           [HEARTBEAT, JSON {"batch": id or null, "holds": [ids], "sending": [ids],
                                             "pong": mark or null, "busy": seconds}]
                                                       every HEARTBEAT_SECONDS: the batch being computed,
                                                       every batch held (received, DONE not sent yet),
                                                       the batches whose results are still leaving for
                                                       the sink, the mark of the last PONG received, the
                                                       seconds spent on batches since it started
                           [DONE, batch_id]            results of the batch went to the sink; credit back
                           [FATAL, message]            the worker cannot start
    ventilator -> worker   [WELCOME, JSON {"sink": address or null, "sink_port": port or null,
                                        "batch_timeout": seconds}]
                           [REJECT, reason]            e.g. a different model: the worker exits
                           [PONG, mark]                answers a heartbeat: the server is there. mark:
                                                       the last batch id sent to this worker (0 if none;
                                                       no mark while it loads). Every BATCH up to it went
                                                       out before this PONG, on the same connection
                           [REGISTER_AGAIN]            an unknown worker spoke (server restarted, or
                                                       the worker was declared lost): say HELLO again
                           [BATCH, batch_id, JSON {"pieces": [piece, ...]}]

Ventilator PUSH and workers PUSH -> sink PULL (binds ``sink``)::

    [REGISTER, JSON {"requests": [{"client", "req_id", "n", "serial", "timeout", "key", "received"}, ...]}]
        data requests to reassemble: every request the ventilator accepted in one read of its clients
    [RESULT, JSON {"pieces": [{"client", "req_id", "serial", "piece", "rows", "dtype", "shape", "tokens",
                               "tag", "queue", "model", "call"}, ...]}, bytes, bytes, ...]
        the rows of pieces one worker computed, one bytes frame per piece in the order of "pieces"
    [JSON_REPLY, client, req_id, key, JSON]                       publish as is (config)
    [STATUS, client, req_id, key, JSON]                           publish with the sink's "metrics" added
    [FAIL, client, req_id, JSON {"message", "code", "serial", "piece", "tag", "key", "received", "outcome"}]
        fail a request; "serial" null = refused before it was registered; "piece" set when a
        worker failed one piece (the sink confirms that piece)

For the metrics (request_metrics.py): "received" is when the ventilator received the request
(``time.monotonic()``, the server's host: the sink compares it with its own clock); "outcome" names
a failure the error code does not tell apart (``worker_lost``). A RESULT's "queue" is the seconds
from "received" to the start of the model call that computed the piece, "model" that call's seconds
(durations, so a remote worker's clock never matters), and "call", on the first piece of each model
call only, {"rows", "padded", "lengths"}: its inputs, word-piece rows computed and each input's word
pieces. All are optional: a message without them counts the request, without its times.

``key`` is the z85 Curve key the client's request came with (empty without ``-auth_dir``): the
sink publishes the reply on ``reply_topic(client, key)``, which only that key's subscription
matches. ``tag`` is :func:`piece_tag` of the piece as the ventilator dispatched it: the sink takes
a worker's RESULT or FAIL only with the tag of a piece sent to that channel (the local workers'
ipc socket, or the Curve key of a remote worker), so a peer cannot forge or cancel others' work.

Sink PUSH -> ventilator PULL (binds ``feedback``)::

    [CONFIRM, JSON {"pieces": [piece ids]}]      the sink holds these pieces' rows (or their failure)
    [FINISHED, JSON {"serials": [serials], "dropped": n}]   these requests were answered or failed;
                                                 n: worker messages or pieces the sink refused so far

A REGISTER or RESULT carries several requests or pieces so that many one-sentence requests cost
the ventilator, the workers and the sink one message, not one each, per read or per model call
(with 32 one-sentence clients, a third less of the sink's CPU per request and a sixth less of the
ventilator's). "client" is the identity's bytes as
latin-1 text, which any bytes survive. :func:`unpack_sink` returns one :class:`SinkMessage` per
request or piece.

``serial`` numbers the data requests the ventilator accepted; with the client's identity and req_id
it names one request (clients may reuse identities and ids). ``piece`` numbers pieces.
"""
from __future__ import annotations

import hmac
import json
import math
from dataclasses import dataclass, field, fields
from typing import Any, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from bert_serving.client.errors import ProtocolError
from bert_serving.client.protocol import dtype_name, raw_bytes

__all__ = ['PROTOCOL_VERSION', 'READY', 'HEARTBEAT', 'DONE', 'FATAL', 'BATCH', 'HELLO', 'WELCOME', 'REJECT', 'PONG', 'REGISTER_AGAIN',
           'pack_hello', 'pack_welcome', 'pack_reject', 'unpack_control', 'Control', 'REGISTER', 'RESULT', 'JSON_REPLY',
           'STATUS', 'FAIL', 'pack_status',
           'CONFIRM', 'FINISHED', 'HEARTBEAT_SECONDS', 'BadMessage', 'RequestKey', 'Piece',
           'WorkerMessage', 'SinkMessage', 'Feedback',
           'pack_ready', 'pack_heartbeat', 'pack_pong', 'pack_done', 'pack_fatal', 'unpack_worker',
           'pack_batch', 'peek_batch', 'unpack_batch',
           'pack_register', 'pack_registers', 'register_entry', 'pack_result', 'pack_results', 'result_entry',
           'pack_json_reply', 'pack_fail', 'unpack_sink',
           'pack_confirm', 'pack_finished', 'unpack_feedback', 'pack_piece_fail', 'piece_tag', 'LOCAL_CHANNEL',
           'remote_channel']

READY, HEARTBEAT, DONE, FATAL, BATCH = b'READY', b'HEARTBEAT', b'DONE', b'FATAL', b'BATCH'
HELLO, WELCOME, REJECT, PONG, REGISTER_AGAIN = b'HELLO', b'WELCOME', b'REJECT', b'PONG', b'REGISTER_AGAIN'
REGISTER, RESULT, JSON_REPLY, STATUS, FAIL = b'REGISTER', b'RESULT', b'JSON_REPLY', b'STATUS', b'FAIL'
CONFIRM, FINISHED = b'CONFIRM', b'FINISHED'

HEARTBEAT_SECONDS = 1.0
# The version of this module's wire format. A worker of another version is refused at HELLO, with a
# reason that says to install the same release on both machines: a remote worker from before the
# batched REGISTER and RESULT (version 2) would otherwise be welcomed, and every result it sent dropped.
PROTOCOL_VERSION = 2

RequestKey = Tuple[bytes, int, int]  # (client identity, req_id, serial): one client request


class BadMessage(ProtocolError):
    """An internal message that does not parse (from another of the server's processes, or a
    remote worker); logged and dropped by its receiver."""


def _json(frame) -> Any:
    try:
        return json.loads(bytes(frame))
    except (ValueError, TypeError, RecursionError) as e:
        raise BadMessage(f'a JSON frame does not parse ({e})') from None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _seconds(value) -> Optional[float]:
    """A duration or time from a JSON field, None unless a finite number."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            value = float(value)  # an int of 400 digits: OverflowError
        except OverflowError:
            return None
        if math.isfinite(value):
            return value
    return None


def _int(frame) -> int:
    try:
        return int(bytes(frame))
    except (ValueError, TypeError):
        raise BadMessage(f'an integer frame holds {bytes(frame)[:32]!r}') from None


@dataclass
class Piece:
    """Some rows of one client request, encoded together by one worker.

    Attributes:
        client: the client identity.
        req_id: the client's request id.
        rows: positions of these inputs in the request.
        texts: the inputs (strings, or token lists if is_tokenized).
        is_tokenized: inputs are pre-tokenized.
        show_tokens: return the tokens even if the server does not send them to every client.
        serial: the ventilator's number for the request.
        piece_id: the ventilator's number for this piece.
        attempt: how often a worker was lost while holding this piece.
        tag: :func:`piece_tag` for the worker it was last sent to; echoed in its RESULT or FAIL.
        queued: seconds from the request's receipt to this piece's dispatch (the worker adds its own
            wait and reports the total as the RESULT's "queue").
    """
    client: bytes
    req_id: int
    rows: List[int]
    texts: List[Any]
    is_tokenized: bool = False
    show_tokens: bool = False
    serial: int = 0
    piece_id: int = 0
    attempt: int = 0
    tag: str = ''
    queued: float = 0.0

    @property
    def key(self) -> RequestKey:
        return self.client, self.req_id, self.serial

    def to_json(self) -> dict:
        # Shallow: json.dumps reads the lists as they are (asdict deep-copied every text, ~50 us a piece).
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d['client'] = self.client.decode('latin-1')  # any bytes survive a latin-1 round trip
        return d

    @classmethod
    def from_json(cls, d: dict) -> 'Piece':
        try:
            return cls(client=d['client'].encode('latin-1'), req_id=int(d['req_id']), rows=[int(r) for r in d['rows']],
                       texts=list(d['texts']), is_tokenized=bool(d['is_tokenized']),
                       show_tokens=bool(d.get('show_tokens', False)), serial=int(d['serial']),
                       piece_id=int(d['piece_id']), attempt=int(d.get('attempt', 0)), tag=str(d.get('tag', '')),
                       queued=_seconds(d.get('queued')) or 0.0)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise BadMessage(f'a piece lacks or mistypes a field ({e!r})') from None


LOCAL_CHANNEL = b'local'  # the local workers' ipc socket


def remote_channel(curve_key: bytes) -> bytes:
    """The channel of a remote worker: its z85 Curve key (empty without -auth_dir)."""
    return b'remote:' + curve_key


def piece_tag(secret: bytes, channel: bytes, client: bytes, req_id: int, serial: int, piece_id: int) -> str:
    """An HMAC-SHA256 (128 bits, hex) of a piece as dispatched: who asked (client, req_id, serial),
    which piece, and the channel of the worker it went to. Only the ventilator and the sink hold
    ``secret``, so a valid tag proves the piece was sent to that channel."""
    data = b'%d:%s|%d|%d|%d|%s' % (len(client), client, req_id, serial, piece_id, channel)
    return hmac.digest(secret, data, 'sha256')[:16].hex()  # the one-shot C path: ~3x faster than hmac.new


# -- worker <-> ventilator -------------------------------------------------------------------------
class WorkerMessage(NamedTuple):
    """What a worker told the ventilator. ``kind`` is HELLO, READY, HEARTBEAT, DONE or FATAL."""
    identity: bytes
    kind: bytes
    batch_id: Optional[int] = None  # DONE; HEARTBEAT: the batch being computed, if any
    credit: int = 0  # READY
    info: Optional[dict] = None  # READY: pid, device; HELLO: fingerprint, host, pid, device, local, protocol
    message: str = ''  # FATAL
    holds: Optional[Tuple[int, ...]] = None  # HEARTBEAT: every batch held; None from a worker that does not say
    sending: Tuple[int, ...] = ()  # HEARTBEAT: batches done whose results are still leaving for the sink
    pong: Optional[int] = None  # HEARTBEAT: the mark of the last PONG the worker received
    busy: Optional[float] = None  # HEARTBEAT: seconds the worker spent on batches since it started


def pack_hello(fingerprint: str, host: str, pid: int, device: str, local: bool) -> List[bytes]:
    return [HELLO, json.dumps({'fingerprint': fingerprint, 'host': host, 'pid': pid, 'device': device,
                               'local': local, 'protocol': PROTOCOL_VERSION}).encode()]


def pack_ready(credit: int, pid: int, device: str) -> List[bytes]:
    return [READY, json.dumps({'credit': credit, 'pid': pid, 'device': device}).encode()]


def pack_heartbeat(batch_id: Optional[int], holds: Sequence[int] = (), pong: Optional[int] = None,
                   sending: Sequence[int] = (), busy: Optional[float] = None) -> List[bytes]:
    return [HEARTBEAT, json.dumps({'batch': batch_id, 'holds': list(holds), 'sending': list(sending),
                                   'pong': pong, 'busy': busy}).encode()]


def pack_pong(mark: Optional[int] = None) -> List[bytes]:
    return [PONG] if mark is None else [PONG, b'%d' % mark]


def pack_done(batch_id: int) -> List[bytes]:
    return [DONE, b'%d' % batch_id]


def pack_fatal(message: str) -> List[bytes]:
    return [FATAL, message.encode('utf-8', 'replace')]


def unpack_worker(frames: Sequence[bytes]) -> WorkerMessage:
    """Parses what the ventilator's ROUTER received: [identity, kind, ...]."""
    if len(frames) < 3:
        raise BadMessage(f'a worker message has at least 3 frames, got {len(frames)}')
    identity, kind = bytes(frames[0]), bytes(frames[1])
    if kind == HELLO:
        body = _json(frames[2])
        if not isinstance(body, dict) or not isinstance(body.get('fingerprint'), str):
            raise BadMessage('HELLO carries a JSON object with a "fingerprint"')
        info = {'fingerprint': body['fingerprint'], 'host': str(body.get('host', '?'))[:100],
                'pid': body.get('pid'), 'device': str(body.get('device', '?'))[:40], 'local': bool(body.get('local')),
                'protocol': body['protocol'] if _is_int(body.get('protocol')) else None}
        return WorkerMessage(identity, kind, info=info)
    if kind == READY:
        body = _json(frames[2])
        if not isinstance(body, dict):
            raise BadMessage('READY carries a JSON object')
        try:
            return WorkerMessage(identity, kind, credit=max(1, int(body['credit'])), info=body)
        except (KeyError, TypeError, ValueError):
            raise BadMessage('READY lacks an integer "credit"') from None
    if kind == HEARTBEAT:
        body = _json(frames[2])
        body = body if isinstance(body, dict) else {}
        batch, holds, sending, pong = body.get('batch'), body.get('holds'), body.get('sending', []), body.get('pong')
        for name, ids in (('holds', [] if holds is None else holds), ('sending', sending)):
            if not (isinstance(ids, list) and all(_is_int(b) for b in ids)):
                raise BadMessage(f'a HEARTBEAT\'s "{name}" is a list of batch ids')
        return WorkerMessage(identity, kind, batch_id=batch if _is_int(batch) else None,
                             holds=None if holds is None else tuple(holds), sending=tuple(sending),
                             pong=pong if _is_int(pong) else None, busy=_seconds(body.get('busy')))
    if kind == DONE:
        return WorkerMessage(identity, kind, batch_id=_int(frames[2]))
    if kind == FATAL:
        return WorkerMessage(identity, kind, message=bytes(frames[2]).decode('utf-8', 'replace'))
    raise BadMessage(f'unknown worker message kind {kind[:16]!r}')


class Control(NamedTuple):
    """What the ventilator told a worker, other than a BATCH."""
    kind: bytes
    sink: Optional[str] = None  # WELCOME: where results go (a local worker)
    sink_port: Optional[int] = None  # WELCOME: the TCP port of the sink on the server's host (remote)
    batch_timeout: Optional[float] = None  # WELCOME: the server's -batch_timeout (the worker's watchdog)
    reason: str = ''  # REJECT
    mark: Optional[int] = None  # PONG: the last batch id sent to this worker before it


def pack_welcome(sink: Optional[str], sink_port: Optional[int], batch_timeout: Optional[float] = None) -> List[bytes]:
    return [WELCOME, json.dumps({'sink': sink, 'sink_port': sink_port, 'batch_timeout': batch_timeout}).encode()]


def pack_reject(reason: str) -> List[bytes]:
    return [REJECT, reason.encode('utf-8', 'replace')]


def unpack_control(frames: Sequence[bytes]) -> Control:
    """Parses WELCOME, REJECT, PONG or REGISTER_AGAIN (a worker's DEALER drops the identity)."""
    kind = bytes(frames[0]) if frames else b''
    if kind == WELCOME and len(frames) == 2:
        body = _json(frames[1])
        if isinstance(body, dict):
            port, timeout = body.get('sink_port'), body.get('batch_timeout')
            try:
                return Control(kind, sink=body.get('sink'), sink_port=None if port is None else int(port),
                               batch_timeout=None if timeout is None else float(timeout))
            except (TypeError, ValueError):
                raise BadMessage('WELCOME holds a non-numeric port or timeout') from None
    if kind == REJECT and len(frames) == 2:
        return Control(kind, reason=bytes(frames[1]).decode('utf-8', 'replace'))
    if kind in (PONG, REGISTER_AGAIN) and len(frames) == 1:
        return Control(kind)
    if kind == PONG and len(frames) == 2:
        return Control(kind, mark=_int(frames[1]))
    raise BadMessage(f'unknown or malformed control message {kind[:16]!r}')


def pack_batch(batch_id: int, pieces: Sequence[Piece]) -> List[bytes]:
    body = json.dumps({'pieces': [p.to_json() for p in pieces]}, ensure_ascii=False)
    # surrogatepass: a lone surrogate is valid in JSON input (\ud800) and must not kill the ventilator;
    # json.loads of bytes decodes with surrogatepass too.
    return [BATCH, b'%d' % batch_id, body.encode('utf-8', 'surrogatepass')]


def peek_batch(frames: Sequence) -> int:
    """The batch id of a BATCH, without parsing its pieces (frames may be zmq.Frame)."""
    if len(frames) != 3:
        raise BadMessage('a batch is [BATCH, batch_id, JSON]')
    return _int(frames[1])


def unpack_batch(frames: Sequence[bytes]) -> Tuple[int, List[Piece]]:
    if len(frames) != 3 or bytes(frames[0]) != BATCH:
        raise BadMessage('a batch is [BATCH, batch_id, JSON]')
    body = _json(frames[2])
    if not isinstance(body, dict) or not isinstance(body.get('pieces'), list):
        raise BadMessage('a batch carries {"pieces": [...]}')
    return _int(frames[1]), [Piece.from_json(d) for d in body['pieces']]


# -- ventilator and workers -> sink ----------------------------------------------------------------
@dataclass
class SinkMessage:
    """What the sink received. ``kind`` is REGISTER, RESULT, JSON_REPLY or FAIL.

    Attributes:
        key: (client, req_id, serial); serial is None for a FAIL of an unregistered request and for
            JSON_REPLY.
        n: REGISTER: rows of the request.
        timeout: REGISTER: seconds the request may take, None for no bound.
        piece_id: RESULT, and FAIL of one piece.
        rows: RESULT: positions of the rows in the request.
        array: RESULT: [len(rows), W] or [len(rows), T, W].
        tokens: RESULT: token lists, or None.
        body: JSON_REPLY: the bytes to publish.
        message, code: FAIL.
        key: REGISTER, FAIL of an unregistered request, JSON_REPLY: the requester's Curve key.
        tag: RESULT, and FAIL of one piece: the piece's :func:`piece_tag`.
        received: REGISTER, FAIL of an unregistered request: when the ventilator received it.
        outcome: FAIL: the metrics' outcome when the code does not tell it (``worker_lost``).
        queue, model: RESULT: seconds the piece waited until its model call, and the call's seconds.
        call: RESULT, first piece of a model call: {"rows", "padded", "lengths"}.
    """
    kind: bytes
    client: bytes
    req_id: int
    serial: Optional[int] = None
    n: int = 0
    timeout: Optional[float] = None
    piece_id: Optional[int] = None
    rows: List[int] = field(default_factory=list)
    array: Optional[np.ndarray] = None
    tokens: Optional[list] = None
    body: bytes = b''
    message: str = ''
    code: Optional[str] = None
    curve_key: bytes = b''
    tag: str = ''
    received: Optional[float] = None
    outcome: Optional[str] = None
    queue: Optional[float] = None
    model: Optional[float] = None
    call: Optional[dict] = None

    @property
    def key(self) -> RequestKey:
        return self.client, self.req_id, self.serial


def _text(key: bytes) -> str:
    return key.decode('latin-1')


def register_entry(client: bytes, req_id: int, n: int, serial: int, timeout: Optional[float],
                   key: bytes = b'', received: Optional[float] = None) -> dict:
    """One request of a REGISTER (see :func:`pack_registers`)."""
    return {'client': _text(client), 'req_id': req_id, 'n': n, 'serial': serial, 'timeout': timeout,
            'key': _text(key), 'received': received}


def pack_registers(entries: Sequence[dict]) -> List[bytes]:
    """A REGISTER of the requests ``entries`` (:func:`register_entry`)."""
    return [REGISTER, json.dumps({'requests': list(entries)}).encode()]


def pack_register(client: bytes, req_id: int, n: int, serial: int, timeout: Optional[float],
                  key: bytes = b'', received: Optional[float] = None) -> List[bytes]:
    """A REGISTER of one request."""
    return pack_registers([register_entry(client, req_id, n, serial, timeout, key, received)])


def result_entry(piece: Piece, array: np.ndarray, tokens: Optional[list], queue: Optional[float] = None,
                 model: Optional[float] = None, call: Optional[dict] = None) -> Tuple[dict, np.ndarray]:
    """One piece of a RESULT (see :func:`pack_results`): its header and its contiguous rows.
    ``queue``, ``model`` and ``call``: the piece's times and its model call (see the module docstring)."""
    array = np.ascontiguousarray(array)
    header = {'client': _text(piece.client), 'req_id': piece.req_id, 'serial': piece.serial, 'piece': piece.piece_id,
              'rows': piece.rows, 'dtype': dtype_name(array.dtype), 'shape': list(array.shape), 'tokens': tokens,
              'tag': piece.tag, 'queue': queue, 'model': model}
    if call is not None:
        header['call'] = call
    return header, array


def pack_results(entries: Sequence[Tuple[dict, np.ndarray]]) -> List[Any]:
    """A RESULT of the pieces ``entries`` (:func:`result_entry`); the arrays go out as views."""
    return [RESULT, json.dumps({'pieces': [h for h, _ in entries]}).encode()] + [raw_bytes(a) for _, a in entries]


def pack_result(piece: Piece, array: np.ndarray, tokens: Optional[list], queue: Optional[float] = None,
                model: Optional[float] = None, call: Optional[dict] = None) -> List[Any]:
    """A RESULT of one piece."""
    return pack_results([result_entry(piece, array, tokens, queue, model, call)])


def pack_json_reply(client: bytes, req_id: int, body: bytes, key: bytes = b'') -> List[bytes]:
    return [JSON_REPLY, client, b'%d' % req_id, key, body]


def pack_status(client: bytes, req_id: int, body: bytes, key: bytes = b'') -> List[bytes]:
    """A SHOW_STATUS reply: the sink adds its request metrics under "metrics" and publishes it."""
    return [STATUS, client, b'%d' % req_id, key, body]


def pack_fail(client: bytes, req_id: int, message: str, *, code: Optional[str] = None,
              serial: Optional[int] = None, piece_id: Optional[int] = None, key: bytes = b'',
              tag: str = '', received: Optional[float] = None, outcome: Optional[str] = None) -> List[bytes]:
    body = {'message': message, 'code': code, 'serial': serial, 'piece': piece_id, 'key': _text(key), 'tag': tag,
            'received': received, 'outcome': outcome}
    return [FAIL, client, b'%d' % req_id, json.dumps(body).encode()]


def pack_piece_fail(piece: Piece, message: str, code: str) -> List[bytes]:
    """A worker fails one piece (bad input, model error); the sink checks its tag."""
    return pack_fail(piece.client, piece.req_id, message, code=code, serial=piece.serial,
                     piece_id=piece.piece_id, tag=piece.tag)


def unpack_sink(frames: Sequence) -> List[SinkMessage]:
    """Parses what the sink's PULL received: one message per request of a REGISTER or piece of a
    RESULT (whose arrays are views of its frames), else one. A malformed part drops the whole
    message (BadMessage)."""
    if len(frames) < 2:
        raise BadMessage(f'a sink message has at least 2 frames, got {len(frames)}')
    kind = bytes(frames[0])
    if kind == REGISTER:
        return _unpack_registers(frames)
    if kind == RESULT:
        return _unpack_results(frames)
    if len(frames) < 4:
        raise BadMessage(f'a {kind[:16]!r} has at least 4 frames, got {len(frames)}')
    client, req_id = bytes(frames[1]), _int(frames[2])
    if kind in (JSON_REPLY, STATUS):
        if len(frames) != 5:
            raise BadMessage(f'a {kind.decode("latin-1")} has 5 frames')
        return [SinkMessage(kind, client, req_id, curve_key=bytes(frames[3]), body=bytes(frames[4]))]
    if kind != FAIL:
        raise BadMessage(f'unknown sink message kind {kind[:16]!r}')
    body = _object(frames[3], kind)
    try:
        serial, piece = body.get('serial'), body.get('piece')
        return [SinkMessage(kind, client, req_id, serial=None if serial is None else int(serial),
                            piece_id=None if piece is None else int(piece), message=str(body['message']),
                            code=body['code'] if isinstance(body.get('code'), str) else None,
                            curve_key=_key(body), tag=str(body.get('tag') or ''),
                            received=_seconds(body.get('received')),
                            outcome=body['outcome'] if isinstance(body.get('outcome'), str) else None)]
    except (KeyError, TypeError, ValueError, ArithmeticError) as e:
        raise BadMessage(f'{kind[:16]!r} lacks or mistypes a field ({e!r})') from None


def _object(frame, kind: bytes) -> dict:
    body = _json(frame)
    if not isinstance(body, dict):
        raise BadMessage(f'{kind[:16]!r} carries a JSON object')
    return body


def _entries(frame, kind: bytes, name: str) -> list:
    entries = _object(frame, kind).get(name)
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise BadMessage(f'a {kind.decode("latin-1")} carries {{"{name}": [JSON objects]}}')
    return entries


def _key(entry: dict) -> bytes:
    return str(entry.get('key') or '').encode('latin-1')


def _client(entry: dict) -> bytes:
    client = entry['client']
    if not isinstance(client, str):
        raise TypeError('"client" is not a string')
    return client.encode('latin-1')


def _unpack_registers(frames: Sequence) -> List[SinkMessage]:
    if len(frames) != 2:
        raise BadMessage('a REGISTER is [REGISTER, JSON]')
    out = []
    try:
        for e in _entries(frames[1], REGISTER, 'requests'):
            timeout = e.get('timeout')
            out.append(SinkMessage(REGISTER, _client(e), int(e['req_id']), serial=int(e['serial']), n=int(e['n']),
                                   timeout=None if timeout is None else float(timeout), curve_key=_key(e),
                                   received=_seconds(e.get('received'))))
    except BadMessage:
        raise
    except (KeyError, TypeError, ValueError, ArithmeticError) as e:  # int(Infinity): OverflowError
        raise BadMessage(f'a REGISTER lacks or mistypes a field ({e!r})') from None
    return out


def _unpack_results(frames: Sequence) -> List[SinkMessage]:
    entries = _entries(frames[1], RESULT, 'pieces')
    if len(frames) != 2 + len(entries):
        raise BadMessage(f'a RESULT of {len(entries)} pieces has {2 + len(entries)} frames, got {len(frames)}')
    out = []
    try:
        for e, data in zip(entries, frames[2:]):
            array = np.frombuffer(data, dtype=np.dtype(e['dtype'])).reshape(e['shape'])
            rows = [int(r) for r in e['rows']]
            if len(rows) != (array.shape[0] if array.ndim else -1):
                raise BadMessage(f'a RESULT has {len(rows)} rows but an array of shape {array.shape}')
            call = e.get('call')
            out.append(SinkMessage(RESULT, _client(e), int(e['req_id']), serial=int(e['serial']),
                                   piece_id=int(e['piece']), rows=rows, array=array, tokens=e.get('tokens'),
                                   tag=str(e.get('tag') or ''), queue=_seconds(e.get('queue')),
                                   model=_seconds(e.get('model')),
                                   call=_model_call(call) if call is not None else None))
    except BadMessage:
        raise
    except (KeyError, TypeError, ValueError, ArithmeticError) as e:  # int(Infinity): OverflowError
        raise BadMessage(f'a RESULT lacks or mistypes a field ({e!r})') from None
    return out


def _model_call(call) -> dict:
    """The "call" of a RESULT, checked: {"rows": int, "padded": int, "lengths": [int, ...]}."""
    if not isinstance(call, dict):
        raise BadMessage('a RESULT\'s "call" is a JSON object')
    rows, padded, lengths = call.get('rows'), call.get('padded'), call.get('lengths')
    if not (_is_int(rows) and _is_int(padded) and isinstance(lengths, list) and all(_is_int(n) for n in lengths)):
        raise BadMessage('a RESULT\'s "call" holds integer "rows", "padded" and a list of integer "lengths"')
    return {'rows': rows, 'padded': padded, 'lengths': lengths}


# -- sink -> ventilator ----------------------------------------------------------------------------
class Feedback(NamedTuple):
    """CONFIRM (``ids`` are piece ids) or FINISHED (``ids`` are request serials; ``dropped``: worker
    messages or pieces the sink refused since it started)."""
    kind: bytes
    ids: List[int]
    dropped: int = 0


def pack_confirm(piece_ids: Sequence[int]) -> List[bytes]:
    return [CONFIRM, json.dumps({'pieces': list(piece_ids)}).encode()]


def pack_finished(serials: Sequence[int], dropped: int = 0) -> List[bytes]:
    return [FINISHED, json.dumps({'serials': list(serials), 'dropped': dropped}).encode()]


def unpack_feedback(frames: Sequence[bytes]) -> Feedback:
    if len(frames) != 2:
        raise BadMessage(f'feedback has 2 frames, got {len(frames)}')
    kind, body = bytes(frames[0]), _json(frames[1])
    name = {CONFIRM: 'pieces', FINISHED: 'serials'}.get(kind)
    if name is None or not isinstance(body, dict) or not isinstance(body.get(name), list):
        raise BadMessage(f'malformed feedback {kind[:16]!r}')
    try:
        return Feedback(kind, [int(i) for i in body[name]], int(body.get('dropped', 0)))
    except (TypeError, ValueError):
        raise BadMessage(f'{kind[:16]!r} holds a non-integer id') from None
