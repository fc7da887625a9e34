"""Ventilator: receives client requests, queues them, and hands batches to workers.

Sockets (created in ``run``, in the BertServer thread):
    PULL    binds tcp://*:port: requests from clients (PUSH).
    ROUTER  binds ``backend``: workers (DEALER) announce credit and get batches.
    PUSH    connects to the sink's PULL: REGISTER / JSON_REPLY / FAIL.

The ventilator owns the queue and the workers. A request is validated, split
into length-bucketed pieces of at most ``max_batch_size`` rows and queued
(small ones in the priority queue). Whenever a worker has credit, it gets a
batch made of queued pieces from any clients, up to ``max_batch_size`` rows.
It also watches the worker processes: a dead worker's batches are re-queued
(or failed back after a second crash) and a new worker takes its place.
"""
from __future__ import annotations

import itertools
import json
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Deque, Dict, List

import zmq

from bert_serving.client.errors import ProtocolError
from bert_serving.client.protocol import Command, Request, unpack_request

from . import messages as msg
from .statistics import ServerStatistic

__all__ = ['Ventilator']

POLL_MS = 50
WORKER_CHECK_SECONDS = 0.2
MAX_RESTARTS = 5  # restarts within RESTART_WINDOW before the server gives up
RESTART_WINDOW = 60.0


class BadRequest(ValueError):
    """A client request that cannot be served; the message goes back to the client."""


@dataclass
class _WorkerState:
    proc: object
    settings: object
    credit: int = 0
    ready: bool = False
    inflight: Dict[int, List[msg.Piece]] = field(default_factory=dict)


def parse_texts(req: Request, max_bytes: int):
    """Validates a data request's payload.

    The payload is a JSON list of inputs, as 1.10 clients send it, or (new) an object
    ``{"texts": [...], "show_tokens": true}`` asking for the tokens of this request even when
    the server runs without ``-show_tokens_to_client`` (the HTTP proxy needs them for usage).

    Returns:
        (texts, is_tokenized, show_tokens).

    Raises:
        BadRequest: says what is wrong and where.
    """
    if len(req.payload) > max_bytes:
        raise BadRequest(f'request of {len(req.payload)} bytes exceeds the server limit of {max_bytes} '
                         'bytes; send fewer sentences per request')
    try:
        texts = json.loads(req.payload)
    except (ValueError, RecursionError) as e:  # RecursionError: JSON nested too deep
        raise BadRequest(f'payload is not valid JSON ({e}); send a JSON list of strings') from None
    show_tokens = False
    if isinstance(texts, dict):
        show_tokens = texts.get('show_tokens', False)
        if not isinstance(show_tokens, bool):
            raise BadRequest(f'show_tokens is {type(show_tokens).__name__}, expected true or false')
        texts = texts.get('texts')
    if not isinstance(texts, list):
        raise BadRequest(f'payload must be a JSON list of strings (or of token lists), '
                         f'got {type(texts).__name__}')
    if not texts:
        raise BadRequest('empty request: send at least one sentence')
    is_tokenized = isinstance(texts[0], list)
    for i, t in enumerate(texts):
        if is_tokenized:
            if not isinstance(t, list):
                raise BadRequest(f'texts[{i}] is {type(t).__name__}, expected a list of tokens like texts[0]')
            for j, tok in enumerate(t):
                if not isinstance(tok, str):
                    raise BadRequest(f'texts[{i}][{j}] is {type(tok).__name__}, expected str')
        elif not isinstance(t, str):
            raise BadRequest(f'texts[{i}] is {type(t).__name__}, expected str')
    if req.msg_len != len(texts):
        raise BadRequest(f'msg_len frame says {req.msg_len} but the payload holds {len(texts)} inputs')
    return texts, is_tokenized, show_tokens


class Ventilator:
    """The scheduling loop. Run by :class:`BertServer` in its thread."""

    def __init__(self, server, spawn_worker, backend_addr: str, sink_addr: str):
        self.server = server
        self.cfg = server.server_config
        self.logger = server.logger
        self.spawn_worker = spawn_worker  # (worker_id, generation) -> started process
        self.backend_addr = backend_addr
        self.sink_addr = sink_addr
        self.stat = ServerStatistic()
        self.priority: Deque[msg.Piece] = deque()
        self.normal: Deque[msg.Piece] = deque()
        self.workers: Dict[bytes, _WorkerState] = {}
        self.batch_ids = itertools.count(1)
        self.serials = itertools.count(1)
        self.restarts: Deque[float] = deque()
        self.num_ready = 0
        self.batches_per_worker: Dict[int, int] = {}
        self.sequences_per_worker: Dict[int, int] = {}

    # -- sockets -----------------------------------------------------------------------------
    def run(self, ctx: zmq.Context) -> None:
        frontend = ctx.socket(zmq.PULL)
        backend = ctx.socket(zmq.ROUTER)
        self.to_sink = ctx.socket(zmq.PUSH)
        try:
            for sock in (frontend, backend, self.to_sink):
                sock.setsockopt(zmq.LINGER, 0)
            frontend.setsockopt(zmq.MAXMSGSIZE, 4 * self.cfg.max_request_bytes)
            backend.setsockopt(zmq.ROUTER_MANDATORY, 1)
            frontend.bind(f'tcp://*:{self.cfg.port}')
            backend.bind(self.backend_addr)
            self.to_sink.connect(self.sink_addr)
            for worker_id in range(self.cfg.num_worker):
                self._add_worker(worker_id, 0)
            self._loop(frontend, backend)
        finally:
            for sock in (frontend, backend, self.to_sink):
                sock.close()

    def _loop(self, frontend, backend) -> None:
        poller = zmq.Poller()
        poller.register(frontend, zmq.POLLIN)
        poller.register(backend, zmq.POLLIN)
        next_check = 0.0
        while not self.server.stopping:
            events = dict(poller.poll(POLL_MS))
            if backend in events:
                while backend.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                    self._on_worker(backend.recv_multipart())
            if frontend in events:
                for _ in range(1000):
                    try:
                        frames = frontend.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self._on_client(frames)
            self._dispatch(backend)
            if time.monotonic() >= next_check:
                self._check_workers()
                next_check = time.monotonic() + WORKER_CHECK_SECONDS

    # -- clients -----------------------------------------------------------------------------
    def _fail(self, client: bytes, req_id: int, message: str, serial=None) -> None:
        self.to_sink.send_multipart(msg.pack_fail(client, req_id, message, serial))

    def _on_client(self, frames) -> None:
        try:
            req = unpack_request(frames)
        except ProtocolError as e:
            who = getattr(e, 'identity', None)
            req_id = getattr(e, 'req_id', None)
            self.logger.warning('malformed request from %r: %s', (who or b'?')[:40], e)
            if who is not None and req_id is not None:
                self._fail(who, req_id, str(e))
            return
        command = req.command
        self.stat.update(req.identity, req.msg_len if command is None else 0, command is not None)
        if command == Command.TERMINATE:
            self.logger.info('termination requested by a client')
            self.server.request_stop()
        elif command in (Command.SHOW_CONFIG, Command.SHOW_STATUS):
            info = self.server.describe(req.identity, self.stat.value if command == Command.SHOW_STATUS else None)
            self.to_sink.send_multipart([msg.JSON_REPLY, req.identity, b'%d' % req.req_id,
                                         json.dumps(info, default=str).encode()])
        else:
            try:
                texts, is_tokenized, show_tokens = parse_texts(req, self.cfg.max_request_bytes)
            except BadRequest as e:
                self.logger.warning('bad request %d from %r: %s', req.req_id, req.identity[:40], e)
                self._fail(req.identity, req.req_id, str(e))
                return
            serial = next(self.serials)
            self.to_sink.send_multipart([msg.REGISTER, req.identity, b'%d' % req.req_id,
                                         json.dumps({'n': len(texts), 'serial': serial}).encode()])
            self._enqueue(req, serial, texts, is_tokenized, show_tokens)

    def _enqueue(self, req: Request, serial: int, texts: list, is_tokenized: bool,
                 show_tokens: bool = False) -> None:
        """Splits a request into length-bucketed pieces and queues them."""
        n = len(texts)
        num_pieces = max(math.ceil(n / self.cfg.max_batch_size), min(self.cfg.num_worker, n // 32), 1)
        if num_pieces == 1:
            orders = [list(range(n))]
        else:
            # Bucketing: neighbours in length share a piece, so little padding is computed.
            by_len = sorted(range(n), key=lambda i: len(texts[i]) * (6 if is_tokenized else 1))
            size = math.ceil(n / num_pieces)
            orders = [by_len[i:i + size] for i in range(0, n, size)]
        queue = self.priority if n <= self.cfg.priority_batch_size else self.normal
        for rows in orders:
            queue.append(msg.Piece(req.identity, req.req_id, rows, [texts[i] for i in rows], is_tokenized,
                                   serial=serial, show_tokens=show_tokens))
        self.logger.debug('request %d from %r: %d inputs in %d pieces', req.req_id, req.identity[:40],
                          n, len(orders))

    # -- workers -----------------------------------------------------------------------------
    def _add_worker(self, worker_id: int, generation: int) -> None:
        proc, settings = self.spawn_worker(worker_id, generation)
        self.workers[settings.identity] = _WorkerState(proc, settings)

    def _on_worker(self, frames) -> None:
        identity, kind = frames[0], frames[1]
        w = self.workers.get(identity)
        if w is None:
            return
        if kind == msg.READY:
            w.credit = max(1, int(json.loads(frames[2])['credit']))
            w.ready = True
            self.num_ready += 1
            if self.num_ready == self.cfg.num_worker:
                self.server.mark_ready()
        elif kind == msg.DONE:
            w.inflight.pop(int(frames[2]), None)
            w.credit += 1
        elif kind == msg.FATAL:
            reason = frames[2].decode('utf-8', 'replace')
            self.server.fatal(f'WORKER-{w.settings.worker_id} cannot start: {reason}')

    def _take_batch(self) -> List[msg.Piece]:
        pieces: List[msg.Piece] = []
        rows = 0
        for queue in (self.priority, self.normal):
            while queue and (not pieces or rows + len(queue[0].rows) <= self.cfg.max_batch_size):
                piece = queue.popleft()
                pieces.append(piece)
                rows += len(piece.rows)
        return pieces

    def _dispatch(self, backend) -> None:
        while self.priority or self.normal:
            ready = [w for w in self.workers.values() if w.ready and w.credit > 0]
            if not ready:
                return
            w = max(ready, key=lambda s: s.credit)  # the least busy worker first
            pieces = self._take_batch()
            batch_id = next(self.batch_ids)
            try:
                backend.send_multipart([w.settings.identity] + msg.pack_batch(batch_id, pieces))
            except zmq.ZMQError as e:  # the worker vanished between its READY and now
                self.logger.warning('cannot reach WORKER-%d (%s)', w.settings.worker_id, e)
                if w.ready:  # _check_workers only uncounts workers still marked ready
                    self.num_ready -= 1
                w.ready = False
                self.priority.extendleft(reversed(pieces))
                continue
            w.credit -= 1
            w.inflight[batch_id] = pieces
            wid = w.settings.worker_id
            self.batches_per_worker[wid] = self.batches_per_worker.get(wid, 0) + 1
            self.sequences_per_worker[wid] = self.sequences_per_worker.get(wid, 0) + sum(len(p.rows) for p in pieces)

    def _check_workers(self) -> None:
        sink = getattr(self.server, 'sink', None)
        if sink is not None and sink.exitcode is not None and not self.server.stopping:
            # Without the sink no reply reaches anyone: stop rather than take requests forever.
            self.server.fatal(f'the SINK process died (exit code {sink.exitcode})')
            return
        proxy = getattr(self.server, 'proxy', None)
        if proxy is not None and proxy.exitcode is not None and not self.server.stopping:
            # Users who asked for -http_port would otherwise get a server that half works.
            self.server.fatal(f'the PROXY process died (exit code {proxy.exitcode}): is -http_port '
                              f'{self.cfg.http_port} already in use? (see the PROXY log)')
            return
        for identity, w in list(self.workers.items()):
            if w.proc.exitcode is None or self.server.stopping:
                continue
            worker_id = w.settings.worker_id
            self.logger.error('WORKER-%d died (exit code %s) with %d batches in flight; starting a new one',
                              worker_id, w.proc.exitcode, len(w.inflight))
            del self.workers[identity]
            if w.ready:
                self.num_ready -= 1
            for pieces in w.inflight.values():
                for piece in reversed(pieces):
                    piece.attempt += 1
                    if piece.attempt >= 2:
                        self._fail(piece.client, piece.req_id,
                                   'a worker crashed twice while encoding this request; '
                                   'check the server log (out of memory?)', piece.serial)
                    else:
                        self.priority.appendleft(piece)
            now = time.monotonic()
            self.restarts.append(now)
            while self.restarts and now - self.restarts[0] > RESTART_WINDOW:
                self.restarts.popleft()
            if len(self.restarts) > MAX_RESTARTS:
                self.server.fatal(f'workers died {len(self.restarts)} times within {RESTART_WINDOW:.0f}s')
                return
            self._add_worker(worker_id, w.settings.generation + 1)
