"""Messages between the server's own processes, frame by frame.

The client-facing protocol is ``bert_serving.client.protocol``; this module is
the internal one. Nothing here is pickled: headers are JSON, arrays raw bytes.

Ventilator ROUTER (binds ``backend``) <-> worker DEALER (connects)::

    worker -> ventilator   [READY, JSON {"credit": n}]   model loaded; may hold n batches
                           [DONE, batch_id]              results of the batch were pushed to the sink
                           [FATAL, message]              the worker cannot start
    ventilator -> worker   [BATCH, batch_id, JSON {"pieces": [piece, ...]}]
                           piece = {"client", "req_id", "rows", "texts", "is_tokenized", "attempt",
                                    "show_tokens"}

Ventilator PUSH and workers PUSH -> sink PULL (binds ``sink``)::

    [REGISTER, client, req_id, JSON {"n": rows, "serial": s}]   a data request to reassemble
    [RESULT, client, req_id, JSON {"serial", "rows", "dtype", "shape", "tokens"}, array bytes]
    [JSON_REPLY, client, req_id, JSON]                   publish as is (config / status)
    [FAIL, client, req_id, message(, serial)]            fail the request with this message

``serial`` numbers the data requests the ventilator accepted. Together with the client's
identity and req_id it names one request for the sink, even when a client reuses its identity
and request ids (e.g. a fixed ``identity`` across restarts). A FAIL without a serial answers a
request that was never registered.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from bert_serving.client.protocol import raw_bytes

__all__ = ['READY', 'DONE', 'FATAL', 'BATCH', 'REGISTER', 'RESULT', 'JSON_REPLY', 'FAIL',
           'Piece', 'pack_batch', 'unpack_batch', 'pack_result', 'unpack_result', 'pack_fail',
           'RequestKey']

READY, DONE, FATAL, BATCH = b'READY', b'DONE', b'FATAL', b'BATCH'
REGISTER, RESULT, JSON_REPLY, FAIL = b'REGISTER', b'RESULT', b'JSON_REPLY', b'FAIL'

RequestKey = Tuple[bytes, int, int]  # (client identity, req_id, serial): one client request


@dataclass
class Piece:
    """Some rows of one client request, to be encoded together.

    Attributes:
        client: the client identity.
        req_id: the client's request id.
        rows: positions of these inputs in the request.
        texts: the inputs (strings, or token lists if is_tokenized).
        is_tokenized: inputs are pre-tokenized.
        attempt: how often a worker died while holding this piece.
        show_tokens: return the tokens even if the server does not send them to every client.
        serial: the ventilator's number for the request (see the module docstring).
    """
    client: bytes
    req_id: int
    rows: List[int]
    texts: List[Any]
    is_tokenized: bool = False
    attempt: int = 0
    show_tokens: bool = False
    serial: int = 0

    @property
    def key(self) -> RequestKey:
        return self.client, self.req_id, self.serial

    def to_json(self) -> dict:
        d = asdict(self)
        d['client'] = self.client.decode('latin-1')  # any bytes survive a latin-1 round trip
        return d

    @classmethod
    def from_json(cls, d: dict) -> 'Piece':
        return cls(client=d['client'].encode('latin-1'), req_id=int(d['req_id']), rows=list(d['rows']),
                   texts=d['texts'], is_tokenized=bool(d['is_tokenized']), attempt=int(d['attempt']),
                   serial=int(d['serial']), show_tokens=bool(d.get('show_tokens', False)))


def pack_batch(batch_id: int, pieces: Sequence[Piece]) -> List[bytes]:
    body = json.dumps({'pieces': [p.to_json() for p in pieces]}, ensure_ascii=False)
    # surrogatepass: a lone surrogate is valid in JSON input (\ud800) and must not kill the ventilator;
    # json.loads of bytes decodes with surrogatepass too.
    return [BATCH, b'%d' % batch_id, body.encode('utf-8', 'surrogatepass')]


def unpack_batch(frames: Sequence[bytes]) -> Tuple[int, List[Piece]]:
    body = json.loads(bytes(frames[2]))
    return int(frames[1]), [Piece.from_json(d) for d in body['pieces']]


def pack_result(piece: Piece, array: np.ndarray, tokens: Optional[list]) -> List[Any]:
    array = np.ascontiguousarray(array)
    header = {'serial': piece.serial, 'rows': piece.rows, 'dtype': str(array.dtype),
              'shape': list(array.shape), 'tokens': tokens}
    return [RESULT, piece.client, b'%d' % piece.req_id, json.dumps(header).encode(),
            raw_bytes(array)]


def unpack_result(frames: Sequence[bytes]):
    """Returns (key, rows, array, tokens) of a RESULT message."""
    header = json.loads(bytes(frames[3]))
    array = np.frombuffer(frames[4], dtype=header['dtype']).reshape(header['shape'])
    return (bytes(frames[1]), int(frames[2]), int(header['serial'])), header['rows'], array, header['tokens']


def pack_fail(client: bytes, req_id: int, message: str, serial: Optional[int] = None) -> List[bytes]:
    frames = [FAIL, client, b'%d' % req_id, message.encode('utf-8', 'replace')]
    return frames + ([b'%d' % serial] if serial is not None else [])
