"""RequestMetrics: where each data request's time went, and how full the model calls were. Owned by
the sink, which sees every data request end (answered, refused or failed) and every computed piece.

Per data request, by door (``zmq``: a ZeroMQ client; ``http``: the HTTP proxy, whose identities start
with ``HTTP_PROXY_PREFIX``)::

    request_duration_seconds{door, outcome}   received by the ventilator -> reply handed to the XPUB
    request_queue_seconds{door}               received -> the model started on its first piece (the
                                              ventilator's queue, the worker's prefetch and tokenizing)
    request_model_seconds{door}               the model calls that computed its pieces, summed
    request_sink_seconds{door}                its last piece arrived -> its reply handed to the XPUB
    requests{door, outcome}                   every data request, by how it ended (OUTCOMES)

The last three only for requests answered with embeddings (outcome ``ok``). Per model call::

    batch_rows                                inputs in the call
    batch_padded_tokens                       word-piece rows the dense layers computed, padding included
    input_word_pieces                         word pieces of each input ([CLS] and [SEP] included)

``last_minute`` summarises the last minute (or since the start) from snapshots of the totals taken
every SNAPSHOT_SECONDS: memory is bounded by the buckets and the window, whatever the traffic.
Recording costs a bisect and a few additions per request, and one per input of a model call.
"""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import NamedTuple

from bert_serving.client.protocol import HTTP_PROXY_PREFIX, ErrorCode

from .histogram import (
    LENGTH_BUCKETS,
    ROWS_BUCKETS,
    SECONDS_BUCKETS,
    TOKENS_BUCKETS,
    Histogram,
)

__all__ = ['DOORS', 'OUTCOMES', 'WINDOW_SECONDS', 'RequestMetrics', 'door_of', 'outcome_of']

DOORS = ('zmq', 'http')
OUTCOMES = ('ok', 'busy', 'bad_request', 'timeout', 'worker_lost', 'shutting_down', 'failed')
WINDOW_SECONDS = 60.0  # the span of ``last_minute``
SNAPSHOT_SECONDS = 5.0  # how often the totals are kept for it
_BY_CODE = {ErrorCode.BUSY: 'busy', ErrorCode.BAD_REQUEST: 'bad_request', ErrorCode.TIMEOUT: 'timeout',
            ErrorCode.SHUTTING_DOWN: 'shutting_down'}


def door_of(identity: bytes) -> str:
    """``http`` for the HTTP proxy's identities, ``zmq`` for every other client."""
    return 'http' if identity.startswith(HTTP_PROXY_PREFIX) else 'zmq'


def outcome_of(code: str | None, outcome: str | None = None) -> str:
    """The outcome of a failed request: ``outcome`` if the ventilator named one, else from its error code."""
    if outcome in OUTCOMES:
        return outcome
    return _BY_CODE.get(code, 'failed')


class _Totals(NamedTuple):
    """What ``last_minute`` subtracts: the totals at one moment."""
    at: float
    latency: Histogram  # request_duration_seconds of ok requests, every door
    requests: int
    errors: int  # requests that did not end ok
    sentences: int  # inputs of ok requests
    queue: float
    model: float
    sink: float
    calls: int
    rows: int
    padded: int
    tokens: int


def _hist_json(bounds, labels: tuple[str, ...], series: Iterable[tuple[dict[str, str], Histogram]]) -> dict:
    return {'labels': list(labels), 'buckets': list(bounds),
            'series': [{'labels': names, **h.to_json()} for names, h in series]}


class RequestMetrics:
    """Args:
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.duration: dict[tuple[str, str], Histogram] = {(door, 'ok'): Histogram(SECONDS_BUCKETS) for door in DOORS}
        self.queue = {door: Histogram(SECONDS_BUCKETS) for door in DOORS}
        self.model = {door: Histogram(SECONDS_BUCKETS) for door in DOORS}
        self.sink = {door: Histogram(SECONDS_BUCKETS) for door in DOORS}
        self.requests: dict[tuple[str, str], int] = {}
        self.sentences = dict.fromkeys(DOORS, 0)
        self.batch_rows = Histogram(ROWS_BUCKETS)
        self.batch_padded_tokens = Histogram(TOKENS_BUCKETS)
        self.input_word_pieces = Histogram(LENGTH_BUCKETS)
        self._snapshots: deque[_Totals] = deque([self._totals(clock())])

    # -- recording (the sink's hot path) --------------------------------------------------------
    def answered(self, identity: bytes, outcome: str, seconds: float | None, rows: int = 0,
                 queue: float | None = None, model: float | None = None, sink: float | None = None) -> None:
        """A data request ended: answered (``ok``, with its ``rows`` and where its time went) or
        failed. ``seconds`` is None when the ventilator did not say when it received the request."""
        door = door_of(identity)
        key = (door, outcome)
        self.requests[key] = self.requests.get(key, 0) + 1
        if seconds is not None:
            hist = self.duration.get(key)
            if hist is None:
                hist = self.duration[key] = Histogram(SECONDS_BUCKETS)
            hist.observe(max(0.0, seconds))
        if outcome != 'ok':
            return
        self.sentences[door] += rows
        for part, value in ((self.queue, queue), (self.model, model), (self.sink, sink)):
            if value is not None:
                part[door].observe(max(0.0, value))

    def model_call(self, rows: int, padded_tokens: int, lengths: Iterable[int]) -> None:
        """A worker ran the model on ``rows`` inputs of these word-piece ``lengths``."""
        self.batch_rows.observe(rows)
        self.batch_padded_tokens.observe(padded_tokens)
        observe = self.input_word_pieces.observe
        for n in lengths:
            observe(n)

    def tick(self, now: float | None = None) -> None:
        """Keeps the totals every SNAPSHOT_SECONDS (the sink calls it each turn of its loop)."""
        now = self.clock() if now is None else now
        if now - self._snapshots[-1].at < SNAPSHOT_SECONDS:
            return
        self._snapshots.append(self._totals(now))
        while len(self._snapshots) > 1 and self._snapshots[1].at <= now - WINDOW_SECONDS:
            self._snapshots.popleft()

    # -- reading -------------------------------------------------------------------------------
    def _totals(self, now: float) -> _Totals:
        latency = Histogram(SECONDS_BUCKETS)
        for door in DOORS:
            ok = self.duration[(door, 'ok')]
            latency.counts = [a + b for a, b in zip(latency.counts, ok.counts)]
            latency.sum += ok.sum
        requests = sum(self.requests.values())
        ok = sum(n for (_, outcome), n in self.requests.items() if outcome == 'ok')
        return _Totals(now, latency, requests, requests - ok, sum(self.sentences.values()),
                       *(sum(h[door].sum for door in DOORS) for h in (self.queue, self.model, self.sink)),
                       self.batch_rows.count, int(self.batch_rows.sum), int(self.batch_padded_tokens.sum),
                       int(self.input_word_pieces.sum))

    def last_minute(self, now: float | None = None) -> dict:
        """Rates, latency quantiles and averages over the last WINDOW_SECONDS (less just after the
        start): what a dashboard shows."""
        now = self.clock() if now is None else now
        then, current = self._snapshots[0], self._totals(now)
        span = max(now - then.at, 1e-9)
        latency = current.latency.since(then.latency)
        done = latency.count
        calls, rows = current.calls - then.calls, current.rows - then.rows
        padded = current.padded - then.padded

        def per_request(name: str) -> float | None:
            return (getattr(current, name) - getattr(then, name)) / done if done else None

        return {
            'seconds': round(span, 3),
            'requests_per_second': (current.requests - then.requests) / span,
            'sentences_per_second': (current.sentences - then.sentences) / span,
            'errors_per_second': (current.errors - then.errors) / span,
            'latency_p50': latency.quantile(0.5), 'latency_p95': latency.quantile(0.95),
            'latency_p99': latency.quantile(0.99),
            'queue_seconds_avg': per_request('queue'), 'model_seconds_avg': per_request('model'),
            'sink_seconds_avg': per_request('sink'),
            'batch_rows_avg': rows / calls if calls else None,
            'padding_fill': (current.tokens - then.tokens) / padded if padded else None,
        }

    def to_json(self) -> dict:
        """The ``metrics`` block of SHOW_STATUS (the proxy turns it into Prometheus families)."""
        by_door = lambda part: [({'door': door}, part[door]) for door in DOORS]
        return {
            'histograms': {
                'request_duration_seconds': _hist_json(SECONDS_BUCKETS, ('door', 'outcome'), (
                    ({'door': door, 'outcome': outcome}, h) for (door, outcome), h in sorted(self.duration.items()))),
                'request_queue_seconds': _hist_json(SECONDS_BUCKETS, ('door',), by_door(self.queue)),
                'request_model_seconds': _hist_json(SECONDS_BUCKETS, ('door',), by_door(self.model)),
                'request_sink_seconds': _hist_json(SECONDS_BUCKETS, ('door',), by_door(self.sink)),
                'batch_rows': _hist_json(ROWS_BUCKETS, (), [({}, self.batch_rows)]),
                'batch_padded_tokens': _hist_json(TOKENS_BUCKETS, (), [({}, self.batch_padded_tokens)]),
                'input_word_pieces': _hist_json(LENGTH_BUCKETS, (), [({}, self.input_word_pieces)]),
            },
            'requests': [{'door': door, 'outcome': outcome, 'count': n}
                         for (door, outcome), n in sorted(self.requests.items())],
            'sentences': dict(self.sentences),
            'last_minute': self.last_minute(),
        }
