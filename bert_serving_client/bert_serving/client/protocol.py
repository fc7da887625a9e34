"""The client <-> server wire protocol, frame by frame. Compatible with bert-serving 1.10.0.

Client -> ventilator (client PUSH connects to the server's PULL on ``port``)::

    [identity, payload, req_id, msg_len]

    identity  ascii bytes; also the SUB topic the client listens on
    payload   JSON list of strings, or JSON list of token lists (is_tokenized),
              or one of the commands SHOW_CONFIG, SHOW_STATUS, TERMINATION
    req_id    ascii decimal integer, unique per client
    msg_len   ascii decimal integer: number of inputs (0 for a command)

Sink -> client (server XPUB binds ``port_out``; the client SUB subscribes to its identity)::

    The first frame of every reply is the topic: ``identity + b"\\x00"``, followed under CurveZMQ by
    the z85 public key of the client that sent the request. The NUL ends the identity, so a
    subscription matches whole identities only (see :func:`is_reply_for`); a 1.10 client ignores
    this frame.

    result   [identity, header, array bytes, req_id]
             header = JSON {"dtype": "float32", "shape": [...], "tokens": [[...]] or ""}
    json     [identity, JSON object, req_id]              (SHOW_CONFIG / SHOW_STATUS)
    error    [identity, header, b"", req_id]
             header = JSON {"error": message, "dtype": "server error: " + message,
                            "shape": [0], "tokens": "",
                            "code": ErrorCode (optional), "retry_after": seconds (optional, busy only)}

The error reply keeps the 4-frame shape of a result, so an unmodified 1.10.0 client
raises (``data type 'server error: ...' not understood``) instead of waiting forever.
Our client raises the error its ``code`` stands for (see :func:`reply_error`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence

import numpy as np

from ._version import PROTOCOL_VERSION, WIRE_RELEASE
from .errors import BertServerBusyError, BertServerError, BertServerShuttingDownError, ProtocolError

__all__ = ['Command', 'ErrorCode', 'Request', 'Reply', 'is_reply_for', 'reply_topic', 'MAX_IDENTITY_BYTES', 'HTTP_PROXY_PREFIX', 'PROTOCOL_VERSION', 'WIRE_RELEASE', 'pack_request', 'unpack_request', 'dtype_name',
           'pack_result', 'pack_json_reply', 'pack_error', 'unpack_reply', 'reply_error', 'array_header',
           'raw_bytes']


class Command:
    """Payloads that are commands rather than data."""
    SHOW_CONFIG = b'SHOW_CONFIG'
    SHOW_STATUS = b'SHOW_STATUS'
    TERMINATE = b'TERMINATION'
    ALL = frozenset((SHOW_CONFIG, SHOW_STATUS, TERMINATE))


class ErrorCode:
    """Why the server failed a request: the ``code`` of an error reply's header."""
    BUSY = 'busy'  # the queue is full; retrying after ``retry_after`` seconds may succeed
    SHUTTING_DOWN = 'shutting_down'  # the server stops; this request will not be served
    BAD_REQUEST = 'bad_request'  # the input is invalid; sending it again fails again
    TIMEOUT = 'timeout'  # the server gave up on the request past its deadline
    FAILED = 'failed'  # anything else: a worker error, a lost worker, ...
    ALL = frozenset((BUSY, SHUTTING_DOWN, BAD_REQUEST, TIMEOUT, FAILED))


@dataclass(frozen=True)
class Request:
    """A client message as the ventilator receives it."""
    identity: bytes
    payload: bytes
    req_id: int
    msg_len: int

    @property
    def command(self) -> Optional[bytes]:
        return self.payload if self.payload in Command.ALL else None


@dataclass(frozen=True)
class Reply:
    """A message from the sink as the client receives it.

    Attributes:
        kind: 'result', 'json' or 'error'.
        req_id: the request it answers.
        array: for a result, the encodings (dtype and shape from the header).
        tokens: for a result, the tokens if the server sends them, else None.
        data: for a json reply, the decoded object.
        error: for an error reply, the server's message.
        code: for an error reply, its ``ErrorCode``; None from a server that sends none (1.10).
        retry_after: for a busy error, the seconds to wait before retrying, if the server said.
    """
    kind: str
    req_id: int
    array: Optional[np.ndarray] = None
    tokens: Any = None
    data: Any = None
    error: Optional[str] = None
    code: Optional[str] = None
    retry_after: Optional[float] = None


MAX_IDENTITY_BYTES = 256  # the server refuses a longer identity (and one that holds a NUL)
# The identities of bert-serving's HTTP proxy start with this; the server counts their requests as
# the HTTP door in its metrics (any other identity is a ZeroMQ client).
HTTP_PROXY_PREFIX = b'http-proxy-'


def reply_topic(identity: bytes, key: bytes = b'') -> bytes:
    """The first frame of a reply to ``identity`` (``key``: the requester's z85 Curve key, if any)."""
    return identity + b'\x00' + key


def is_reply_for(identity: bytes, topic: bytes) -> bool:
    """Whether a reply whose first frame is ``topic`` answers the client ``identity``: ZeroMQ matches
    subscriptions by prefix, so a SUB may see replies to identities that start with its own."""
    topic = bytes(topic)
    return topic == identity or (topic.startswith(identity) and topic[len(identity):len(identity) + 1] == b'\x00')


def _int_frame(frame: bytes, name: str) -> int:
    try:
        return int(bytes(frame))
    except (TypeError, ValueError):
        raise ProtocolError(f'{name} frame must be an ascii integer, got {bytes(frame)[:32]!r}') from None


def pack_request(identity: bytes, payload: bytes, req_id: int, msg_len: int) -> List[bytes]:
    return [identity, payload, b'%d' % req_id, b'%d' % msg_len]


def unpack_request(frames: Sequence[bytes]) -> Request:
    """Parses the frames of a client message.

    Raises:
        ProtocolError: wrong frame count or non-numeric ids. ``err.identity`` and
            ``err.req_id`` hold whatever could be read, so the sender can be answered.
    """
    identity = bytes(frames[0]) if frames else None
    if len(frames) != 4:
        err = ProtocolError(f'a request has 4 frames [identity, payload, req_id, msg_len], got {len(frames)}')
        err.identity, err.req_id = identity, None
        raise err
    try:
        req_id = _int_frame(frames[2], 'req_id')
    except ProtocolError as err:
        err.identity, err.req_id = identity, None
        raise
    try:
        msg_len = _int_frame(frames[3], 'msg_len')
    except ProtocolError as err:
        err.identity, err.req_id = identity, req_id
        raise
    return Request(identity, bytes(frames[1]), req_id, msg_len)


_DTYPE_NAMES: dict = {}


def dtype_name(dtype: np.dtype) -> str:
    """``str(dtype)``, cached: numpy 2 takes ~2 us for it, and the server names one per reply."""
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        name = _DTYPE_NAMES[dtype] = str(dtype)
    return name


def array_header(array: np.ndarray, tokens=None) -> bytes:
    return json.dumps({'dtype': dtype_name(array.dtype), 'shape': list(array.shape),
                       'tokens': tokens if tokens is not None else ''}).encode()


def pack_result(identity: bytes, req_id: int, array: np.ndarray, tokens=None) -> List[Any]:
    """Frames of an encoding result; the array buffer goes out without a copy."""
    array = np.ascontiguousarray(array)
    return [identity, array_header(array, tokens), raw_bytes(array), b'%d' % req_id]


def raw_bytes(array: np.ndarray) -> memoryview:
    """A flat byte view of a contiguous array (also for empty arrays, which memoryview.cast refuses)."""
    return memoryview(array.reshape(-1).view(np.uint8))


def pack_json_reply(identity: bytes, req_id: int, obj: Any) -> List[bytes]:
    return [identity, json.dumps(obj, default=str).encode(), b'%d' % req_id]


def pack_error(identity: bytes, req_id: int, message: str, code: Optional[str] = None,
               retry_after: Optional[float] = None) -> List[bytes]:
    """Frames of an error reply.

    Args:
        identity, req_id: The request it answers.
        message: What went wrong and what to change; the client raises it as is.
        code: One of ``ErrorCode``; None sends no code (the client then raises BertServerError).
        retry_after: Seconds to wait before retrying, only with ``ErrorCode.BUSY``.

    Raises:
        ValueError: ``code`` is no ErrorCode, or ``retry_after`` comes without BUSY or is negative.
    """
    header = {'error': message, 'dtype': 'server error: ' + message, 'shape': [0], 'tokens': ''}
    if code is not None:
        if code not in ErrorCode.ALL:
            raise ValueError(f'error code {code!r} is none of {sorted(ErrorCode.ALL)}')
        header['code'] = code
    if retry_after is not None:
        if code != ErrorCode.BUSY or not retry_after >= 0:
            raise ValueError(f'retry_after={retry_after!r} needs code=ErrorCode.BUSY and a value >= 0')
        header['retry_after'] = float(retry_after)
    return [identity, json.dumps(header).encode(), b'', b'%d' % req_id]


# Result headers without tokens, parsed: a client gets the same few again and again (one per
# dtype and shape), so it reads each once. Header bytes -> (dtype, shape); emptied when full.
_RESULT_LAYOUTS: dict = {}
_MAX_RESULT_LAYOUTS = 256


def unpack_reply(frames: Sequence[bytes]) -> Reply:
    """Parses a message from the sink.

    Raises:
        ProtocolError: the message fits none of the reply shapes.
    """
    if len(frames) not in (3, 4):
        raise ProtocolError(f'a reply has 3 or 4 frames, got {len(frames)}')
    req_id = _int_frame(frames[-1], 'req_id')
    raw = bytes(frames[1])
    layout = _RESULT_LAYOUTS.get(raw) if len(frames) == 4 else None
    tokens = None
    if layout is None:
        try:
            header = json.loads(raw)
        except ValueError as e:
            raise ProtocolError(f'reply {req_id} has a header that is not JSON ({e})') from e
        if len(frames) == 3:
            return Reply('json', req_id, data=header)
        if not isinstance(header, dict):
            raise ProtocolError(f'reply {req_id} header must be a JSON object')
        if 'error' in header:
            return _error_reply(req_id, header)
        try:
            shape = header['shape']
            layout = np.dtype(header['dtype']), tuple(shape) if isinstance(shape, list) else shape
        except (KeyError, TypeError, ValueError) as e:
            raise ProtocolError(f'reply {req_id} array does not match its header ({e})') from e
        tokens = header.get('tokens') or None
    try:
        array = np.frombuffer(frames[2], dtype=layout[0]).reshape(layout[1])
    except (TypeError, ValueError) as e:
        raise ProtocolError(f'reply {req_id} array does not match its header ({e})') from e
    if tokens is None and raw not in _RESULT_LAYOUTS:
        if len(_RESULT_LAYOUTS) >= _MAX_RESULT_LAYOUTS:
            _RESULT_LAYOUTS.clear()
        _RESULT_LAYOUTS[raw] = layout
    return Reply('result', req_id, array=array, tokens=tokens)


def _error_reply(req_id: int, header: dict) -> Reply:
    # Lenient on the optional fields: an unknown code or a bad retry_after must not hide the message.
    code = header.get('code')
    retry_after = header.get('retry_after')
    if not isinstance(retry_after, (int, float)) or isinstance(retry_after, bool) or not retry_after >= 0:
        retry_after = None
    return Reply('error', req_id, error=str(header['error']),
                 code=code if isinstance(code, str) else None, retry_after=retry_after)


def reply_error(reply: Reply) -> BertServerError:
    """The exception an error reply stands for: BertServerBusyError for ``busy``,
    BertServerShuttingDownError for ``shutting_down``, else BertServerError carrying the code."""
    if reply.code == ErrorCode.BUSY:
        return BertServerBusyError(reply.error, retry_after=reply.retry_after, req_id=reply.req_id)
    if reply.code == ErrorCode.SHUTTING_DOWN:
        return BertServerShuttingDownError(reply.error, req_id=reply.req_id)
    return BertServerError(reply.error, code=reply.code, req_id=reply.req_id)
