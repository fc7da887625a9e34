"""The soak's traffic: each function is one client thread's loop, bounded by the stop event, a
deadline and a request count; every request goes through the ledger.

    zmq_loop          our BertClient, one per thread, blocking encode with a timeout
    concurrent_loop   threads sharing one ConcurrentBertClient
    async_loop        encode_async streams, and encode(blocking=False) + fetch_all
    big_loop          5,000-sentence requests (split over the workers by the server)
    http_loop         POST /encode or /v1/embeddings through the HTTP proxy (urllib, with a timeout)
    none_loop         a BertClient against the second server, started with -pooling_strategy NONE
"""
from __future__ import annotations

import json
import random
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from bert_serving.client import BertClient, BertServerError, BertTimeoutError, ConcurrentBertClient

from .ledger import Ledger, Record
from .oracle import Oracle

__all__ = ['Traffic', 'zmq_loop', 'concurrent_loop', 'async_loop', 'big_loop', 'http_loop', 'none_loop',
           'pick_rows', 'BIG_ROWS', 'big_bound_s']

BIG_ROWS = 5000
# -request_timeout bounds the time a request goes without progress, not its whole time (issue 19):
# a 5,000-row request may wait its turn for up to -request_timeout, then be computed piece by piece
# at whatever rate the machine gives. Its bound adds its rows at this low rate to the clients'
# timeout, so that a busy machine (the test suite runs beside the soak) is not taken for a lost reply.
BIG_ROWS_PER_S = 50.0
MAX_REQUESTS_PER_LOOP = 100_000
ASYNC_BATCHES = 6


@dataclass
class Traffic:
    """What every loop shares.

    Attributes:
        ledger, oracle: bookkeeping and expected vectors; none_oracle for the NONE server.
        port, port_out, http_port: the main server; none_port, none_port_out: the NONE server.
        timeout_s: each request's bound, which is also every client's timeout.
        stop: set when traffic must stop; deadline: monotonic time at which it stops anyway.
        pace_s: (low, high) pause between two requests of one loop, to leave CPU to the server.
        big_every_s: pause between two 5,000-sentence requests.
    """
    ledger: Ledger
    oracle: Oracle
    port: int
    port_out: int
    http_port: Optional[int]
    timeout_s: float
    stop: threading.Event
    deadline: float
    none_oracle: Optional[Oracle] = None
    none_port: Optional[int] = None
    none_port_out: Optional[int] = None
    pace_s: Tuple[float, float] = (0.2, 1.2)
    big_every_s: float = 30.0

    def running(self, count: int) -> bool:
        return not self.stop.is_set() and time.monotonic() < self.deadline and count < MAX_REQUESTS_PER_LOOP

    def pause(self, rng: random.Random, seconds: Optional[float] = None) -> None:
        self.stop.wait(rng.uniform(*self.pace_s) if seconds is None else seconds)

    def client(self, port: Optional[int] = None, port_out: Optional[int] = None,
               timeout_s: Optional[float] = None) -> BertClient:
        return BertClient(port=port or self.port, port_out=port_out or self.port_out,
                          timeout=int((timeout_s or self.timeout_s) * 1000), check_length=False)


def big_bound_s(timeout_s: float) -> float:
    """The bound of a BIG_ROWS request, which is also its client's timeout, given the clients' timeout."""
    return timeout_s + BIG_ROWS / BIG_ROWS_PER_S


def pick_rows(rng: random.Random, pool_size: int) -> List[int]:
    """Mostly one sentence, often a handful, sometimes a few hundred (split into pieces by the server)."""
    n = rng.choices([1, rng.randint(2, 16), rng.randint(17, 128), rng.randint(129, 400)], [6, 4, 1.5, 0.2])[0]
    return [rng.randrange(pool_size) for _ in range(n)]


def classify_error(ledger: Ledger, record: Record, error: BaseException, timeout_s: float) -> None:
    """A client timeout is a loss (no answer, no error within the bound); anything else names a cause."""
    if isinstance(error, (BertTimeoutError, TimeoutError, socket.timeout)):
        ledger.lost(record, f'client timeout: no reply within {timeout_s:.0f}s')
    else:
        ledger.failed(record, f'{type(error).__name__}: {error}')


def checked(ledger: Ledger, record: Record, oracle: Oracle, indices: Sequence[int], got) -> None:
    why = oracle.check(indices, got)
    if why:
        ledger.wrong(record, why)
    else:
        ledger.correct(record)


def one_request(t: Traffic, kind: str, indices: List[int], call: Callable, oracle: Optional[Oracle] = None,
                bound_s: Optional[float] = None) -> None:
    """Sends one request through ``call`` and records its outcome; ``bound_s`` is the timeout of the
    client behind ``call`` (default ``t.timeout_s``)."""
    oracle, bound_s = oracle or t.oracle, bound_s or t.timeout_s
    record = t.ledger.begin(kind, len(indices), bound_s)
    try:
        got = call(oracle.take(indices))
    except Exception as e:  # noqa: BLE001 - every exception is an outcome to classify
        classify_error(t.ledger, record, e, bound_s)
    else:
        checked(t.ledger, record, oracle, indices, got)


def _with_client(t: Traffic, body: Callable[[BertClient], None], port=None, port_out=None, timeout_s=None) -> None:
    """Runs ``body`` with a fresh client; reconnects (bounded by the loop) when the server is away."""
    try:
        bc = t.client(port, port_out, timeout_s)
    except Exception as e:  # noqa: BLE001 - server down or restarting: count it, then retry
        t.ledger.event('client_connect_failed', type(e).__name__)
        t.pause(random.Random(), 1.0)
        return
    with bc:
        body(bc)


def zmq_loop(t: Traffic, seed: int) -> None:
    rng, count = random.Random(seed), [0]

    def body(bc: BertClient) -> None:
        while t.running(count[0]):
            count[0] += 1
            one_request(t, 'zmq', pick_rows(rng, len(t.oracle.texts)), bc.encode)
            t.pause(rng)

    while t.running(count[0]):
        _with_client(t, body)


def concurrent_loop(t: Traffic, pool: ConcurrentBertClient, seed: int) -> None:
    rng, count = random.Random(seed), 0
    while t.running(count):
        count += 1
        one_request(t, 'concurrent', pick_rows(rng, len(t.oracle.texts)), pool.encode)
        t.pause(rng)


def big_loop(t: Traffic, seed: int) -> None:
    rng, count = random.Random(seed), [0]

    def body(bc: BertClient) -> None:
        while t.running(count[0]):
            count[0] += 1
            one_request(t, 'big-5000', [rng.randrange(len(t.oracle.texts)) for _ in range(BIG_ROWS)], bc.encode,
                        bound_s=big_bound_s(t.timeout_s))
            t.pause(rng, t.big_every_s)

    t.pause(rng, t.big_every_s / 2)
    while t.running(count[0]):
        _with_client(t, body, timeout_s=big_bound_s(t.timeout_s))


def _drain(t: Traffic, bc: BertClient, sent: Dict[int, Tuple[Record, List[int]]]) -> bool:
    """Collects the replies of ``sent`` (req_id -> record, indices) one by one with fetch();
    False when a timeout ended it."""
    clean = True
    while sent:
        try:
            for reply in bc.fetch():
                record, indices = sent.pop(reply.id)
                checked(t.ledger, record, t.oracle, indices, reply.embedding)
        except BertServerError as e:
            record, _ = sent.pop(e.req_id)
            t.ledger.failed(record, f'{type(e).__name__}: {e}')
        except Exception as e:  # noqa: BLE001 - a timeout leaves every other reply missing too
            for record, _ in sent.values():
                classify_error(t.ledger, record, e, t.timeout_s)
            sent.clear()
            clean = False
    return clean


def async_loop(t: Traffic, seed: int) -> None:
    rng, count = random.Random(seed), [0]
    size = len(t.oracle.texts)

    def stream(bc: BertClient) -> bool:
        sent: Dict[int, Tuple[Record, List[int]]] = {}

        def batches():
            for _ in range(ASYNC_BATCHES):
                indices = [rng.randrange(size) for _ in range(rng.randint(1, 32))]
                # encode_async sends each batch as soon as it takes it, as the next request id
                sent[bc.request_id + 1] = (t.ledger.begin('async-stream', len(indices), t.timeout_s), indices)
                yield t.oracle.take(indices)
        try:
            for reply in bc.encode_async(batches(), max_num_batch=ASYNC_BATCHES):
                record, indices = sent.pop(reply.id)
                checked(t.ledger, record, t.oracle, indices, reply.embedding)
        except Exception as e:  # noqa: BLE001 - the rest may still come: drain them
            if isinstance(e, BertServerError) and e.req_id in sent:
                record, _ = sent.pop(e.req_id)
                t.ledger.failed(record, f'{type(e).__name__}: {e}')
            elif not isinstance(e, BertServerError):
                for record, _ in sent.values():
                    classify_error(t.ledger, record, e, t.timeout_s)
                sent.clear()
                return False
        return _drain(t, bc, sent)

    def fetch_all(bc: BertClient) -> bool:
        sent: List[Tuple[Record, List[int]]] = []
        ids: List[int] = []
        try:
            for _ in range(ASYNC_BATCHES):
                indices = [rng.randrange(size) for _ in range(rng.randint(1, 32))]
                sent.append((t.ledger.begin('async-fetch_all', len(indices), t.timeout_s), indices))
                bc.encode(t.oracle.take(indices), blocking=False)
                ids.append(bc.request_id)
            results = bc.fetch_all(sort=True)
        except BertServerError as e:
            # fetch_all received every reply, then raised for the first failure, naming the other
            # failures in its notes; the results of the requests that succeeded are discarded.
            reasons = {e.req_id: str(e)}
            for note in getattr(e, '__notes__', []):
                found = re.match(r'request (\d+) failed too: (.*)', note)
                if found:
                    reasons[int(found.group(1))] = found.group(2)
            for req_id, (record, _) in zip(ids, sent):
                t.ledger.failed(record, f'BertServerError: {reasons[req_id]}' if req_id in reasons else
                                'answered, but fetch_all discarded it: another request of its group failed')
            return True
        except Exception as e:  # noqa: BLE001
            for record, _ in sent:
                classify_error(t.ledger, record, e, t.timeout_s)
            return False
        if len(results) != len(sent):
            for record, _ in sent:
                t.ledger.wrong(record, f'fetch_all returned {len(results)} results for {len(sent)} requests')
            return False
        for (record, indices), got in zip(sent, results):
            checked(t.ledger, record, t.oracle, indices, got)
        return True

    def body(bc: BertClient) -> None:
        while t.running(count[0]):
            count[0] += 1
            clean = (stream if count[0] % 2 else fetch_all)(bc)
            t.pause(rng)
            if not clean:
                # after a timeout the client still waits for those requests: their late replies
                # would be taken for the next group's, so start with a fresh client
                return

    while t.running(count[0]):
        _with_client(t, body)


def http_post(port: int, path: str, body: dict, timeout_s: float) -> dict:
    """POSTs JSON; returns the JSON reply, raises HttpFailure for an error status."""
    request = urllib.request.Request(f'http://127.0.0.1:{port}{path}', data=json.dumps(body).encode(),
                                     headers={'Content-Type': 'application/json'})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as reply:
            return json.loads(reply.read())
    except urllib.error.HTTPError as e:
        try:
            message = json.loads(e.read())['error']['message']
        except Exception:  # noqa: BLE001 - not our JSON error shape
            message = e.reason
        raise HttpFailure(f'HTTP {e.code}: {message}') from e
    except urllib.error.URLError as e:
        if isinstance(e.reason, (socket.timeout, TimeoutError)):
            raise TimeoutError(str(e)) from e
        raise HttpFailure(f'no connection: {e.reason}') from e


class HttpFailure(Exception):
    """An HTTP error status, or no connection at all."""


def http_loop(t: Traffic, path: str, seed: int) -> None:
    rng, count = random.Random(seed), 0

    def encode(texts: List[str]):
        if path == '/encode':
            return http_post(t.http_port, path, {'id': count, 'texts': texts}, t.timeout_s)['result']
        data = http_post(t.http_port, path, {'input': texts, 'model': 'soak'}, t.timeout_s)['data']
        return [d['embedding'] for d in sorted(data, key=lambda d: d['index'])]

    while t.running(count):
        count += 1
        one_request(t, 'http' + path, pick_rows(rng, len(t.oracle.texts))[:64], encode)
        t.pause(rng)


def none_loop(t: Traffic, seed: int) -> None:
    rng, count = random.Random(seed), [0]
    size = len(t.none_oracle.texts)

    def body(bc: BertClient) -> None:
        while t.running(count[0]):
            count[0] += 1
            one_request(t, 'none-pooling', [rng.randrange(size) for _ in range(rng.randint(1, 8))], bc.encode,
                        oracle=t.none_oracle)
            t.pause(rng, rng.uniform(0.5, 1.5))

    while t.running(count[0]):
        _with_client(t, body, t.none_port, t.none_port_out)
