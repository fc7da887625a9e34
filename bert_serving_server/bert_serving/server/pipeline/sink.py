"""Sink process: owns each request's life. Puts its pieces back in order, publishes the reply, and
fails it when it makes no progress for its timeout (-request_timeout): each piece of it that arrives
moves its deadline, so a huge request whose pieces keep coming has no wall-clock bound.

Sockets (created in ``run``, inside the process):
    PULL  binds ``sink``: REGISTER / JSON_REPLY / STATUS / FAIL from the ventilator, RESULT / FAIL from workers;
          also tcp://*:port_worker_sink when remote workers may join.
    PUSH  connects to ``feedback``: CONFIRM (pieces received) and FINISHED (requests answered or
          failed) to the ventilator, which keeps a piece in flight until it is confirmed.
    XPUB  binds tcp://*:port_out: replies to clients (SUB, topic = identity).

Every data request ends here (answered, refused or failed), so the sink records where its time
went and how full the model calls were (request_metrics.py), and adds those metrics to each
SHOW_STATUS reply the ventilator sends it to publish (STATUS).

The XPUB is driven by the Publisher (publisher.py): it subscribes each connection to whole
identities and Curve keys only, holds replies for clients not subscribed yet, and bounds in bytes
what waits for clients that read slowly.

Remote workers' results arrive on a PULL of their own (tcp ``port_worker_sink``), which takes only
RESULT and piece FAIL messages. Every RESULT and piece FAIL must carry the tag the ventilator gave
that piece for that channel (``messages.piece_tag``): anything else is dropped and counted, so a
peer cannot forge or cancel the work of others.
"""
from __future__ import annotations

import heapq
import hmac
import json
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set, Tuple

import numpy as np
import zmq

from bert_serving.client import protocol
from bert_serving.client.protocol import ErrorCode

from ..log import get_logger, sanitize_for_log as clean
from ..security import WORKER_DOMAIN, AuthConfig, authenticator, bind_address, secure_server_socket
from . import messages as msg
from ..launcher import install_stop_handler, parent_alive, read_spec, signal_ready
from .publisher import Publisher, connection_property
from .request_metrics import RequestMetrics, outcome_of

__all__ = ['Sink', 'SinkConfig']

POLL_MS = 50
FINISHED_MEMORY = 100_000  # finished requests remembered, to drop their late or repeated pieces
ORPHAN_SECONDS = 60.0  # pieces of a request that was never registered are dropped after this
MAX_LOGGED = 20  # dropped worker messages logged one by one; then every 1000th
FEEDBACK_SECONDS = 1.0  # the sink speaks to the ventilator at least this often (it is alive)
FLUSH_LINGER_MS = 2000  # on stop, time for published replies to leave
# Requests and pieces handled per socket per turn (a REGISTER or RESULT counts each it holds), so
# subscriptions and the other socket flow even while a peer floods one with pieces.
DRAIN_BUDGET = 1000


@dataclass(frozen=True)
class SinkConfig:
    """Attributes:
        sink_addr: where the PULL binds.
        feedback_addr: the ventilator's feedback PULL.
        port_out: the XPUB's TCP port.
    """
    sink_addr: str
    port_out: int
    feedback_addr: str = ''
    bind_host: str = '*'
    port_worker_sink: Optional[int] = None
    auth_dir: Optional[str] = None
    extra_public_keys: Tuple[str, ...] = ()
    tag_secret: str = ''  # hex; the ventilator tags each dispatched piece with it (messages.piece_tag)
    max_result_bytes: int = 1 << 30  # MAXMSGSIZE of the remote workers' port: the largest legitimate frame
    verbose: bool = False
    parent_pid: int = 0


@dataclass
class _Assembly:
    """The pieces of one request received so far."""
    n: Optional[int] = None  # rows expected; None until REGISTER arrives
    curve_key: bytes = b''  # the key the request came with (REGISTER)
    failure: Optional[Tuple[str, Optional[str], Optional[str]]] = None  # (message, code, outcome) before REGISTER
    created: float = field(default_factory=time.monotonic)
    timeout: Optional[float] = None  # seconds without progress before it fails (None: no bound)
    progress: float = 0.0  # when REGISTER or the last new piece arrived
    received: int = 0
    parts: List = field(default_factory=list)  # (rows, array, tokens)
    seen: Set[int] = field(default_factory=set)  # rows received
    since: Optional[float] = None  # when the ventilator received it (REGISTER), time.monotonic()
    queue: Optional[float] = None  # seconds until the model started on its first piece
    model: float = 0.0  # seconds of the model calls that computed its pieces

    def complete(self) -> bool:
        return self.n is not None and self.received >= self.n

    def assemble(self):
        """Returns (array, tokens) with rows in request order.

        Pieces of a NONE-pooled request may differ in their token axis; all are
        zero-padded to the longest, i.e. the longest input of the request.
        """
        first = self.parts[0][1]
        if first.ndim == 3:
            t = max(a.shape[1] for _, a, _ in self.parts)
            out = np.zeros((self.n, t, first.shape[2]), dtype=first.dtype)
            for rows, a, _ in self.parts:
                out[rows, :a.shape[1]] = a
        else:
            out = np.empty((self.n, first.shape[1]), dtype=first.dtype)
            for rows, a, _ in self.parts:
                out[rows] = a
        tokens = None
        if self.parts[0][2] is not None:
            tokens = [None] * self.n
            for rows, _, toks in self.parts:
                for r, t in zip(rows, toks):
                    tokens[r] = t
        return out, tokens


class Sink:
    """Reassembles results, enforces deadlines, and publishes every reply to clients.

    Args:
        config: addresses and flags.
        stop_event: set means stop (SIGTERM from the parent).
        on_ready: called once the sockets are bound.
    """

    def __init__(self, config: SinkConfig, stop_event, on_ready=lambda: None):
        self.config = config
        self.stop_event = stop_event
        self.on_ready = on_ready
        self.logger = get_logger('SINK', config.verbose)
        self.curve = config.auth_dir is not None
        self.secret = bytes.fromhex(config.tag_secret)
        self.pending: Dict[msg.RequestKey, _Assembly] = {}
        self.deadlines: List[Tuple[float, msg.RequestKey]] = []  # heap
        self.finished: 'OrderedDict[msg.RequestKey, None]' = OrderedDict()
        self.publisher: Optional[Publisher] = None  # made in run(), with its socket
        self.dropped_messages = 0  # worker messages or pieces refused (bad tag, wrong port, malformed)
        self.last_feedback = 0.0
        self.confirmed: List[int] = []
        self.done: List[int] = []
        self.metrics = RequestMetrics()

    def run(self) -> None:
        s = self.config
        auth = AuthConfig(auth_dir=s.auth_dir, bind_host=s.bind_host)
        with zmq.Context() as ctx, authenticator(ctx, auth, s.extra_public_keys):
            receiver, self.pub, self.feedback = ctx.socket(zmq.PULL), ctx.socket(zmq.XPUB), ctx.socket(zmq.PUSH)
            self.publisher = Publisher(self.pub, self.curve, self.logger)
            remote = ctx.socket(zmq.PULL) if s.port_worker_sink is not None else None
            try:
                for sock in (receiver, self.pub, self.feedback, remote):
                    if sock is not None:
                        sock.setsockopt(zmq.LINGER, 0)
                self.publisher.configure()
                receiver.bind(s.sink_addr)
                secure_server_socket(self.pub, auth)
                self.pub.bind(bind_address(auth, s.port_out))
                if remote is not None:
                    remote.setsockopt(zmq.MAXMSGSIZE, s.max_result_bytes)
                    secure_server_socket(remote, auth, WORKER_DOMAIN)
                    remote.bind(bind_address(auth, s.port_worker_sink))
                if s.feedback_addr:
                    self.feedback.connect(s.feedback_addr)
                self.on_ready()
                self._loop(receiver, remote)
                self.pub.setsockopt(zmq.LINGER, FLUSH_LINGER_MS)
                self.feedback.setsockopt(zmq.LINGER, FLUSH_LINGER_MS)
            except zmq.ZMQError as e:
                if e.errno != zmq.ETERM:
                    self.logger.error('sink stopped: %s', e)
            finally:
                for sock in (receiver, self.pub, self.feedback, remote):
                    if sock is not None:
                        sock.close()

    def _loop(self, receiver, remote) -> None:
        poller = zmq.Poller()
        for sock in (receiver, remote, self.pub):
            if sock is not None:
                poller.register(sock, zmq.POLLIN)
        while not self.stop_event.is_set() and parent_alive(self.config.parent_pid):
            events = dict(poller.poll(POLL_MS))
            if self.pub in events:
                self.publisher.read_subscriptions()
            for sock, from_remote in ((receiver, False), (remote, True)):
                if sock in events:
                    self._drain(sock, from_remote)
            self.publisher.retry()
            self._expire()
            self._send_feedback()
            self.metrics.tick()

    def _drain(self, sock, from_remote: bool) -> None:
        budget = DRAIN_BUDGET  # requests and pieces, then let subscriptions and the other socket flow
        while budget > 0:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            channel = msg.LOCAL_CHANNEL
            if from_remote:
                channel = msg.remote_channel((connection_property(frames[0], 'User-Id') or b'') if self.curve else b'')
            try:
                messages = msg.unpack_sink([f.bytes if i < 2 else f.buffer for i, f in enumerate(frames)])
            except msg.BadMessage as e:
                self._drop(f'a malformed internal message: {e}')
                budget -= 1
                continue
            except Exception as e:  # noqa: BLE001 - one bad message must never stop the sink
                self._drop(f'a message that could not be parsed ({type(e).__name__}: {e})')
                budget -= 1
                continue
            budget -= max(1, len(messages))
            for m in messages:
                try:
                    self._on_message(m, channel)
                except msg.BadMessage as e:
                    self._drop(f'a malformed internal message: {e}')
                except Exception:  # noqa: BLE001 - one bad message must never stop the sink
                    self.logger.exception('dropped a message that could not be handled')

    def _drop(self, what: str) -> None:
        self.dropped_messages += 1
        if self.dropped_messages <= MAX_LOGGED or self.dropped_messages % 1000 == 0:
            self.logger.warning('dropped %s (%d dropped so far)', what, self.dropped_messages)

    # -- request lifecycle ---------------------------------------------------------------------
    def _finish(self, key) -> None:
        self.pending.pop(key, None)
        self.finished[key] = None
        if len(self.finished) > FINISHED_MEMORY:
            self.finished.popitem(last=False)
        if key[2] is not None:
            self.done.append(key[2])

    def _fail(self, key, message: str, code: Optional[str], outcome: Optional[str] = None) -> None:
        if key in self.finished:
            return
        job = self.pending.get(key)
        if job is None or job.n is None:  # a worker failed a piece before REGISTER came with the key to answer
            self.pending.setdefault(key, _Assembly()).failure = (message, code, outcome)
            return
        self._finish(key)
        self.metrics.answered(key[0], outcome_of(code, outcome), _since(job.since))
        self.logger.warning('request %d of client %r failed: %s', key[1], key[0][:40], clean(message, 2000))
        self.publisher.publish(key[0], job.curve_key, protocol.pack_error(key[0], key[1], message, code=code))

    def _tag_ok(self, m: msg.SinkMessage, channel: bytes) -> bool:
        expected = msg.piece_tag(self.secret, channel, m.client, m.req_id, m.serial, m.piece_id)
        # As bytes: compare_digest refuses a str with non-ASCII characters (a peer's tag may hold any).
        return hmac.compare_digest(expected.encode(), m.tag.encode('utf-8', 'surrogatepass'))

    def _on_message(self, m: msg.SinkMessage, channel: bytes = msg.LOCAL_CHANNEL) -> None:
        from_worker = m.kind == msg.RESULT or (m.kind == msg.FAIL and m.piece_id is not None)
        if channel != msg.LOCAL_CHANNEL and not from_worker:
            raise msg.BadMessage(f'{m.kind[:16]!r} on the remote workers\' port: only results go there')
        if from_worker and not self._tag_ok(m, channel):
            self._drop(f'a {m.kind.decode("latin-1")} for piece {m.piece_id} of request {m.req_id} of client '
                       f'{m.client[:40]!r}: its tag does not match a piece sent to that worker')
            return
        if m.kind == msg.JSON_REPLY:
            self.publisher.publish(m.client, m.curve_key, [m.client, m.body, b'%d' % m.req_id])
            return
        if m.kind == msg.STATUS:
            self.publisher.publish(m.client, m.curve_key, [m.client, self._with_metrics(m.body), b'%d' % m.req_id])
            return
        if m.kind == msg.FAIL:
            m.code = m.code if m.code in ErrorCode.ALL else ErrorCode.FAILED
            if m.piece_id is not None:
                self.confirmed.append(m.piece_id)
            if m.serial is None:  # refused before it was registered: nothing to clean up
                self.logger.info('request %d of client %r refused: %s', m.req_id, m.client[:40], clean(m.message, 2000))
                retry = 1.0 if m.code == ErrorCode.BUSY else None
                self.publisher.publish(m.client, m.curve_key, protocol.pack_error(m.client, m.req_id, m.message, code=m.code,
                                                                         retry_after=retry))
                self.metrics.answered(m.client, outcome_of(m.code, m.outcome), _since(m.received))
            else:
                self._fail(m.key, m.message, m.code, m.outcome)
            return
        key = m.key
        if m.kind == msg.RESULT:
            self.confirmed.append(m.piece_id)
            if m.call is not None:  # the model ran, whatever becomes of this request
                self.metrics.model_call(m.call['rows'], m.call['padded'], m.call['lengths'])
        if key in self.finished:
            return  # a late or repeated piece of a request already answered
        job = self.pending.setdefault(key, _Assembly())
        if m.kind == msg.REGISTER:
            job.n = m.n
            job.curve_key = m.curve_key
            job.since = m.received
            if job.failure is not None:
                self._fail(key, *job.failure)
                return
            job.progress = time.monotonic()
            if m.timeout is not None:
                job.timeout = m.timeout
                heapq.heappush(self.deadlines, (job.progress + m.timeout, key))
        elif job.seen.isdisjoint(m.rows):
            # A piece computed twice (its worker was lost after sending it) counts once.
            job.progress = time.monotonic()  # moves the deadline; _expire reads it when the old one comes up
            job.parts.append((m.rows, m.array, m.tokens))
            job.seen.update(m.rows)
            job.received += len(m.rows)
            if m.queue is not None and (job.queue is None or m.queue < job.queue):
                job.queue = m.queue
            job.model += m.model or 0.0
        if job.complete():
            try:
                array, tokens = job.assemble()
            except (ValueError, IndexError, TypeError) as e:  # pieces of different widths, rows out of range
                self._fail(key, f'the server could not put the pieces of this request together ({e}); '
                                'check the server log', ErrorCode.FAILED)
                return
            self._finish(key)
            self.logger.debug('request %d of client %r done: %s', key[1], key[0][:40], array.shape)
            self.publisher.publish(key[0], job.curve_key, protocol.pack_result(key[0], key[1], array, tokens))
            self.metrics.answered(key[0], 'ok', _since(job.since), rows=job.n, queue=job.queue, model=job.model,
                                  sink=time.monotonic() - job.progress)

    def _expire(self) -> None:
        now = time.monotonic()
        while self.deadlines and self.deadlines[0][0] <= now:
            _, key = heapq.heappop(self.deadlines)
            job = self.pending.get(key)
            if job is None or job.timeout is None:
                continue
            if job.progress + job.timeout > now:  # a piece came since this deadline was set
                heapq.heappush(self.deadlines, (job.progress + job.timeout, key))
                continue
            self._fail(key, f'the request made no progress for -request_timeout {job.timeout:g}s (no piece of it '
                            f'was computed; {job.received} of {job.n} inputs done); the server is overloaded or '
                            'its workers are failing (see the server log)', ErrorCode.TIMEOUT)
        if len(self.deadlines) > 2 * len(self.pending) + 1000:  # answered requests leave their entries
            self.deadlines = [d for d in self.deadlines if d[1] in self.pending]
            heapq.heapify(self.deadlines)
        self.publisher.expire(now)
        if len(self.pending) and now - next(iter(self.pending.values())).created > ORPHAN_SECONDS:
            for key in [k for k, job in self.pending.items() if job.n is None and now - job.created > ORPHAN_SECONDS]:
                self.logger.warning('dropped pieces of request %d of client %r: it was never registered',
                                    key[1], key[0][:40])
                del self.pending[key]

    def _with_metrics(self, body: bytes) -> bytes:
        """A SHOW_STATUS reply of the ventilator, with the request metrics added under "metrics"."""
        try:
            status = json.loads(body)
        except ValueError:
            status = None
        if not isinstance(status, dict):
            raise msg.BadMessage('a STATUS carries a JSON object')
        status['metrics'] = self.metrics.to_json()
        return json.dumps(status).encode()

    def _send_feedback(self) -> None:
        if not self.config.feedback_addr:
            self.confirmed.clear()
            self.done.clear()
            return
        now = time.monotonic()
        try:  # NOBLOCK: a ventilator that is gone must not stall the replies
            if self.confirmed:
                self.feedback.send_multipart(msg.pack_confirm(self.confirmed), zmq.NOBLOCK)
                self.confirmed = []
                self.last_feedback = now
            if self.done or now - self.last_feedback >= FEEDBACK_SECONDS:  # empty: "the sink is alive"
                self.feedback.send_multipart(msg.pack_finished(self.done, self.dropped_messages), zmq.NOBLOCK)
                self.done = []
                self.last_feedback = now
        except zmq.Again:
            self.logger.debug('the ventilator does not take feedback now; retrying')


def _since(received: Optional[float]) -> Optional[float]:
    """Seconds since the ventilator received a request (None if it did not say when)."""
    return None if received is None else time.monotonic() - received


def main() -> None:
    """``python -m bert_serving.server.pipeline.sink``: the SinkConfig fields come as JSON on stdin."""
    spec = read_spec()
    stop = install_stop_handler()
    fields = {k: v for k, v in spec.items() if k in SinkConfig.__dataclass_fields__}
    Sink(SinkConfig(**fields), stop, on_ready=lambda: signal_ready(spec)).run()


if __name__ == '__main__':
    main()
