"""Sink process: owns each request's life. Puts its pieces back in order, publishes the reply, and
fails it when its deadline passes.

Sockets (created in ``run``, inside the process):
    PULL  binds ``sink``: REGISTER / JSON_REPLY / FAIL from the ventilator, RESULT / FAIL from workers;
          also tcp://*:port_worker_sink when remote workers may join.
    PUSH  connects to ``feedback``: CONFIRM (pieces received) and FINISHED (requests answered or
          failed) to the ventilator, which keeps a piece in flight until it is confirmed.
    XPUB  binds tcp://*:port_out: replies to clients (SUB, topic = identity).

XPUB rather than PUB: the sink sees each client's subscription, so a reply to a client whose
subscription has not arrived yet is held back (for a bounded time, and a bounded number of replies)
instead of being dropped. That closes the "slow joiner" race of a fresh client. XPUB_NODROP makes a
client that reads slowly visible: its replies wait here (a bounded number) and go out as it reads.

Remote workers' results arrive on a PULL of their own (tcp ``port_worker_sink``), which takes only
RESULT and piece FAIL messages: a peer there cannot forge replies or register requests.
"""
from __future__ import annotations

import heapq
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Deque, Dict, List, Optional, Set, Tuple

import numpy as np
import zmq

from bert_serving.client import protocol
from bert_serving.client.protocol import ErrorCode

from ..log import get_logger
from ..security import AuthConfig, authenticator, bind_address, secure_server_socket
from . import messages as msg
from .launcher import install_stop_handler, parent_alive, read_spec, signal_ready

__all__ = ['Sink', 'SinkSettings']

POLL_MS = 50
HOLD_SECONDS = 10.0  # how long a reply waits for its client's subscription
MAX_HELD = 10_000  # replies held for clients not subscribed yet, over all clients
MAX_BLOCKED = 100_000  # replies waiting for clients that read slowly, over all clients
FINISHED_MEMORY = 100_000  # finished requests remembered, to drop their late or repeated pieces
ORPHAN_SECONDS = 60.0  # pieces of a request that was never registered are dropped after this
SNDHWM = 10_000  # replies queued in ZeroMQ per client; more wait in the sink (MAX_BLOCKED)
FEEDBACK_SECONDS = 1.0  # the sink speaks to the ventilator at least this often (it is alive)
FLUSH_LINGER_MS = 2000  # on stop, time for published replies to leave


@dataclass(frozen=True)
class SinkSettings:
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
    verbose: bool = False
    parent_pid: int = 0


@dataclass
class _Assembly:
    """The pieces of one request received so far."""
    n: Optional[int] = None  # rows expected; None until REGISTER arrives
    created: float = field(default_factory=time.monotonic)
    received: int = 0
    parts: List = field(default_factory=list)  # (rows, array, tokens)
    seen: Set[int] = field(default_factory=set)  # rows received

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
        settings: addresses and flags.
        stop_event: set means stop (SIGTERM from the parent).
        on_ready: called once the sockets are bound.
    """

    def __init__(self, settings: SinkSettings, stop_event, on_ready=lambda: None):
        self.settings = settings
        self.stop_event = stop_event
        self.on_ready = on_ready
        self.logger = get_logger('SINK', settings.verbose)
        self.pending: Dict[msg.RequestKey, _Assembly] = {}
        self.deadlines: List[Tuple[float, msg.RequestKey]] = []  # heap
        self.finished: 'OrderedDict[msg.RequestKey, None]' = OrderedDict()
        self.subscribed: Set[bytes] = set()
        self.held: 'OrderedDict[bytes, Deque]' = OrderedDict()  # client -> (expiry, frames), oldest first
        self.num_held = 0
        self.blocked: 'OrderedDict[bytes, Deque]' = OrderedDict()  # client -> frames it has not read yet
        self.num_blocked = 0
        self.last_feedback = 0.0
        self.confirmed: List[int] = []
        self.done: List[int] = []

    def run(self) -> None:
        s = self.settings
        auth = AuthConfig(auth_dir=s.auth_dir, bind_host=s.bind_host)
        with zmq.Context() as ctx, authenticator(ctx, auth, s.extra_public_keys):
            receiver, self.pub, self.feedback = ctx.socket(zmq.PULL), ctx.socket(zmq.XPUB), ctx.socket(zmq.PUSH)
            remote = ctx.socket(zmq.PULL) if s.port_worker_sink is not None else None
            try:
                for sock in (receiver, self.pub, self.feedback, remote):
                    if sock is not None:
                        sock.setsockopt(zmq.LINGER, 0)
                self.pub.setsockopt(zmq.XPUB_VERBOSE, 1)
                self.pub.setsockopt(zmq.XPUB_NODROP, 1)
                self.pub.setsockopt(zmq.SNDHWM, SNDHWM)
                receiver.bind(s.sink_addr)
                secure_server_socket(self.pub, auth)
                self.pub.bind(bind_address(auth, s.port_out))
                if remote is not None:
                    secure_server_socket(remote, auth)
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
        while not self.stop_event.is_set() and parent_alive(self.settings.parent_pid):
            events = dict(poller.poll(POLL_MS))
            if self.pub in events:
                self._on_subscription(self.pub.recv())
            for sock, from_remote in ((receiver, False), (remote, True)):
                if sock in events:
                    self._drain(sock, from_remote)
            self._retry_blocked()
            self._expire()
            self._send_feedback()

    def _drain(self, sock, from_remote: bool) -> None:
        for _ in range(1000):  # then let subscriptions and the other socket flow
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                self._on_message([f.buffer if i == 4 else f.bytes for i, f in enumerate(frames)], from_remote)
            except msg.BadMessage as e:
                self.logger.warning('dropped a malformed internal message: %s', e)
            except Exception:  # noqa: BLE001 - one bad message must never stop the sink
                self.logger.exception('dropped a message that could not be handled')

    # -- publishing ----------------------------------------------------------------------------
    def _on_subscription(self, event: bytes) -> None:
        topic = event[1:]
        if event[:1] == b'\x01':
            self.subscribed.add(topic)
            for _, frames in self.held.pop(topic, ()):
                self.num_held -= 1
                self._send(topic, frames)
        elif event[:1] == b'\x00':
            self.subscribed.discard(topic)
            dropped = self.blocked.pop(topic, ())
            if dropped:
                self.num_blocked -= len(dropped)
                self.logger.warning('dropped %d replies to client %r: it left before reading them',
                                    len(dropped), topic[:40])

    def _send(self, client: bytes, frames) -> None:
        """Publishes, or, if the client's queue is full (it reads slowly), keeps the reply for later."""
        queue = self.blocked.get(client)
        if queue is None:
            try:
                self.pub.send_multipart(frames, zmq.NOBLOCK, copy=False)
                return
            except zmq.Again:
                queue = self.blocked[client] = deque()
        if self.num_blocked >= MAX_BLOCKED:
            self.logger.warning('dropped a reply to client %r: %d replies wait for clients that do not read',
                                client[:40], MAX_BLOCKED)
            return
        queue.append(frames)
        self.num_blocked += 1

    def _retry_blocked(self) -> None:
        for client in list(self.blocked):
            queue = self.blocked[client]
            while queue:
                try:
                    self.pub.send_multipart(queue[0], zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                queue.popleft()
                self.num_blocked -= 1
            if not queue:
                del self.blocked[client]

    def _publish(self, client: bytes, frames) -> None:
        if client in self.subscribed:
            self._send(client, frames)
            return
        if self.num_held >= MAX_HELD:
            oldest = next(iter(self.held))
            self.logger.warning('dropped a held reply to client %r: %d replies wait for clients that never '
                                'subscribed to port_out', oldest[:40], MAX_HELD)
            queue = self.held[oldest]
            queue.popleft()
            self.num_held -= 1
            if not queue:
                del self.held[oldest]
        self.held.setdefault(client, deque()).append((time.monotonic() + HOLD_SECONDS, frames))
        self.num_held += 1

    # -- request lifecycle ---------------------------------------------------------------------
    def _finish(self, key) -> None:
        self.pending.pop(key, None)
        self.finished[key] = None
        if len(self.finished) > FINISHED_MEMORY:
            self.finished.popitem(last=False)
        if key[2] is not None:
            self.done.append(key[2])

    def _fail(self, key, message: str, code: Optional[str]) -> None:
        if key in self.finished:
            return
        self._finish(key)
        self.logger.warning('request %d of client %r failed: %s', key[1], key[0][:40], message)
        self._publish(key[0], protocol.pack_error(key[0], key[1], message, code=code))

    def _on_message(self, frames, from_remote: bool = False) -> None:
        m = msg.unpack_sink(frames)
        if from_remote and not (m.kind == msg.RESULT or (m.kind == msg.FAIL and m.piece_id is not None)):
            raise msg.BadMessage(f'{m.kind[:16]!r} on the remote workers\' port: only results go there')
        if m.kind == msg.JSON_REPLY:
            self._publish(m.client, [m.client, m.body, b'%d' % m.req_id])
            return
        if m.kind == msg.FAIL:
            m.code = m.code if m.code in ErrorCode.ALL else ErrorCode.FAILED
            if m.piece_id is not None:
                self.confirmed.append(m.piece_id)
            if m.serial is None:  # refused before it was registered: nothing to clean up
                self.logger.info('request %d of client %r refused: %s', m.req_id, m.client[:40], m.message)
                retry = 1.0 if m.code == ErrorCode.BUSY else None
                self._publish(m.client, protocol.pack_error(m.client, m.req_id, m.message, code=m.code,
                                                            retry_after=retry))
            else:
                self._fail(m.key, m.message, m.code)
            return
        key = m.key
        if m.kind == msg.RESULT:
            self.confirmed.append(m.piece_id)
        if key in self.finished:
            return  # a late or repeated piece of a request already answered
        job = self.pending.setdefault(key, _Assembly())
        if m.kind == msg.REGISTER:
            job.n = m.n
            if m.timeout is not None:
                heapq.heappush(self.deadlines, (time.monotonic() + m.timeout, key, m.timeout))
        elif job.seen.isdisjoint(m.rows):
            # A piece computed twice (its worker was lost after sending it) counts once.
            job.parts.append((m.rows, m.array, m.tokens))
            job.seen.update(m.rows)
            job.received += len(m.rows)
        if job.complete():
            try:
                array, tokens = job.assemble()
            except (ValueError, IndexError, TypeError) as e:  # pieces of different widths, rows out of range
                self._fail(key, f'the server could not put the pieces of this request together ({e}); '
                                'check the server log', ErrorCode.FAILED)
                return
            self._finish(key)
            self.logger.debug('request %d of client %r done: %s', key[1], key[0][:40], array.shape)
            self._publish(key[0], protocol.pack_result(key[0], key[1], array, tokens))

    def _expire(self) -> None:
        now = time.monotonic()
        while self.deadlines and self.deadlines[0][0] <= now:
            _, key, timeout = heapq.heappop(self.deadlines)
            if key in self.pending:
                self._fail(key, f'the request was not answered within -request_timeout {timeout:g}s; the '
                                'server is overloaded or its workers are failing (see the server log)', ErrorCode.TIMEOUT)
        if len(self.deadlines) > 2 * len(self.pending) + 1000:  # answered requests leave their entries
            self.deadlines = [d for d in self.deadlines if d[1] in self.pending]
            heapq.heapify(self.deadlines)
        for client in [c for c, items in self.held.items() if items[0][0] < now]:
            queue = self.held[client]
            while queue and queue[0][0] < now:
                queue.popleft()
                self.num_held -= 1
                self.logger.warning('dropped a reply to client %r: it never subscribed to port_out', client[:40])
            if not queue:
                del self.held[client]
        if len(self.pending) and now - next(iter(self.pending.values())).created > ORPHAN_SECONDS:
            for key in [k for k, job in self.pending.items() if job.n is None and now - job.created > ORPHAN_SECONDS]:
                self.logger.warning('dropped pieces of request %d of client %r: it was never registered',
                                    key[1], key[0][:40])
                del self.pending[key]

    def _send_feedback(self) -> None:
        if not self.settings.feedback_addr:
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
                self.feedback.send_multipart(msg.pack_finished(self.done), zmq.NOBLOCK)
                self.done = []
                self.last_feedback = now
        except zmq.Again:
            self.logger.debug('the ventilator does not take feedback now; retrying')


def main() -> None:
    """``python -m bert_serving.server.pipeline.sink``: the SinkSettings fields come as JSON on stdin."""
    spec = read_spec()
    stop = install_stop_handler()
    fields = {k: v for k, v in spec.items() if k in SinkSettings.__dataclass_fields__}
    Sink(SinkSettings(**fields), stop, on_ready=lambda: signal_ready(spec)).run()


if __name__ == '__main__':
    main()
