"""Sink process: owns each request's life. Puts its pieces back in order, publishes the reply, and
fails it when its deadline passes.

Sockets (created in ``run``, inside the process):
    PULL  binds ``sink``: REGISTER / JSON_REPLY / FAIL from the ventilator, RESULT / FAIL from workers;
          also tcp://*:port_worker_sink when remote workers may join.
    PUSH  connects to ``feedback``: CONFIRM (pieces received) and FINISHED (requests answered or
          failed) to the ventilator, which keeps a piece in flight until it is confirmed.
    XPUB  binds tcp://*:port_out: replies to clients (SUB, topic = identity).

XPUB in manual mode: the sink decides what each subscription means. A client subscribes to its
identity; the sink subscribes that connection to ``identity + NUL + curve key`` instead
(``protocol.reply_topic``; the key is empty without ``-auth_dir``), and publishes every reply on
the topic of the request's identity and the key it came with. ZeroMQ matches topics by prefix; the
NUL ends the identity, so a subscription matches one whole identity and, under CurveZMQ, only the
key that sent the request: an empty subscription, a prefix, or another key's subscription to a
known identity receives nothing. Subscriptions that are empty, over 256 bytes or hold a NUL are
not applied.

The sink sees each subscription, so a reply to a client whose subscription has not arrived yet is
held back (for a bounded time, count and size) instead of being dropped: that closes the "slow
joiner" race of a fresh client. XPUB_NODROP makes a client that reads slowly visible: since its
topic reaches its own connections only, only its replies wait; they wait here, bounded in bytes per
client and in all, and beyond that bound they are dropped and logged.

Remote workers' results arrive on a PULL of their own (tcp ``port_worker_sink``), which takes only
RESULT and piece FAIL messages. Every RESULT and piece FAIL must carry the tag the ventilator gave
that piece for that channel (``messages.piece_tag``): anything else is dropped and counted, so a
peer cannot forge or cancel the work of others.
"""
from __future__ import annotations

import heapq
import hmac
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import Deque, Dict, List, Optional, Set, Tuple

import numpy as np
import zmq

from bert_serving.client import protocol
from bert_serving.client.protocol import MAX_IDENTITY_BYTES, ErrorCode

from ..log import get_logger, sanitize_for_log as clean
from ..security import WORKER_DOMAIN, AuthConfig, authenticator, bind_address, secure_server_socket
from . import messages as msg
from .launcher import install_stop_handler, parent_alive, read_spec, signal_ready

__all__ = ['Sink', 'SinkSettings']

POLL_MS = 50
HOLD_SECONDS = 10.0  # how long a reply waits for its client's subscription
MAX_HELD = 10_000  # replies held for clients not subscribed yet, over all clients
MAX_HELD_BYTES = 256 << 20  # ... and their bytes
MAX_BLOCKED = 100_000  # replies waiting for clients that read slowly, over all clients
MAX_BLOCKED_BYTES = 1 << 30  # ... and their bytes
CLIENT_BACKLOG_BYTES = 256 << 20  # bytes of replies one slow client may have waiting here (one reply always fits)
FINISHED_MEMORY = 100_000  # finished requests remembered, to drop their late or repeated pieces
ORPHAN_SECONDS = 60.0  # pieces of a request that was never registered are dropped after this
SNDHWM = 256  # replies queued in ZeroMQ per connection; more wait in the sink, bounded in bytes
# MAXMSGSIZE of the XPUB: a peer sending more is cut off. Subscriptions are 1 + 256 bytes at most, but
# the limit also applies to the CurveZMQ handshake (its INITIATE is ~300 bytes with metadata).
SUBSCRIPTION_MAX_BYTES = 4096
MAX_LOGGED = 20  # refused subscriptions and worker messages logged one by one; then every 1000th
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
    tag_secret: str = ''  # hex; the ventilator tags each dispatched piece with it (messages.piece_tag)
    max_result_bytes: int = 1 << 30  # MAXMSGSIZE of the remote workers' port: the largest legitimate frame
    verbose: bool = False
    parent_pid: int = 0


@dataclass
class _Assembly:
    """The pieces of one request received so far."""
    n: Optional[int] = None  # rows expected; None until REGISTER arrives
    curve_key: bytes = b''  # the key the request came with (REGISTER)
    failure: Optional[Tuple[str, Optional[str]]] = None  # (message, code) of a failure before REGISTER
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


class _Backlog:
    """Replies waiting in the sink, per topic, oldest first, bounded in count and bytes."""

    def __init__(self):
        self.queues: 'OrderedDict[bytes, Deque]' = OrderedDict()  # topic -> (expiry, size, frames)
        self.bytes: Counter = Counter()  # topic -> bytes waiting
        self.count = 0
        self.total = 0

    def add(self, topic: bytes, frames, size: int, expiry: float = 0.0) -> None:
        self.queues.setdefault(topic, deque()).append((expiry, size, frames))
        self.bytes[topic] += size
        self.count += 1
        self.total += size

    def popleft(self, topic: bytes):
        queue = self.queues[topic]
        _, size, frames = queue.popleft()
        self.count -= 1
        self.total -= size
        self.bytes[topic] -= size
        if not queue:
            del self.queues[topic]
            del self.bytes[topic]
        return frames

    def pop_all(self, topic: bytes) -> int:
        queue = self.queues.pop(topic, ())
        self.count -= len(queue)
        self.total -= self.bytes.pop(topic, 0)
        return len(queue)


def _size(frames) -> int:
    return sum(len(f) if isinstance(f, (bytes, memoryview)) else getattr(f, 'nbytes', 0) for f in frames)


def _property(frame, name: str) -> Optional[bytes]:
    """A connection property of a received frame; None where there is none (a message that libzmq
    made itself, such as the unsubscription of a connection that closed)."""
    try:
        value = frame.get(name)
    except zmq.ZMQError:
        return None
    return value.encode('latin-1') if isinstance(value, str) else value


def valid_identity(identity: bytes) -> bool:
    """A client identity the sink can publish to: 1-256 bytes without NUL (NUL ends a topic)."""
    return 0 < len(identity) <= MAX_IDENTITY_BYTES and b'\x00' not in identity


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
        self.curve = settings.auth_dir is not None
        self.secret = bytes.fromhex(settings.tag_secret)
        self.pending: Dict[msg.RequestKey, _Assembly] = {}
        self.deadlines: List[Tuple[float, msg.RequestKey]] = []  # heap
        self.finished: 'OrderedDict[msg.RequestKey, None]' = OrderedDict()
        self.subscribers: Dict[bytes, Counter] = {}  # identity -> Counter of the keys subscribed to it
        self.held = _Backlog()  # replies to clients not subscribed yet (expire after HOLD_SECONDS)
        self.blocked = _Backlog()  # replies to clients that read slowly
        self.dropped_messages = 0  # worker messages refused (bad tag, wrong port)
        self.refused_subscriptions = 0
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
                self.pub.setsockopt(zmq.XPUB_MANUAL, 1)
                self.pub.setsockopt(zmq.XPUB_NODROP, 1)
                self.pub.setsockopt(zmq.SNDHWM, SNDHWM)
                self.pub.setsockopt(zmq.MAXMSGSIZE, SUBSCRIPTION_MAX_BYTES)
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
        while not self.stop_event.is_set() and parent_alive(self.settings.parent_pid):
            events = dict(poller.poll(POLL_MS))
            if self.pub in events:
                self._read_subscriptions()
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
            channel = msg.LOCAL_CHANNEL
            if from_remote:
                channel = msg.remote_channel((_property(frames[0], 'User-Id') or b'') if self.curve else b'')
            try:
                self._on_message([f.buffer if i == 4 else f.bytes for i, f in enumerate(frames)], channel)
            except msg.BadMessage as e:
                self._drop(f'a malformed internal message: {e}')
            except Exception:  # noqa: BLE001 - one bad message must never stop the sink
                self.logger.exception('dropped a message that could not be handled')

    def _drop(self, what: str) -> None:
        self.dropped_messages += 1
        if self.dropped_messages <= MAX_LOGGED or self.dropped_messages % 1000 == 0:
            self.logger.warning('dropped %s (%d dropped so far)', what, self.dropped_messages)

    # -- subscriptions -------------------------------------------------------------------------
    def _read_subscriptions(self) -> None:
        for _ in range(1000):
            try:
                frame = self.pub.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._on_subscription(frame)

    def _on_subscription(self, frame) -> None:
        """Applies a (un)subscription to the connection it came from (XPUB_MANUAL), as the topic of
        its identity and its Curve key."""
        event = frame.bytes
        kind, identity = event[:1], event[1:]
        if kind not in (b'\x00', b'\x01'):
            return  # not a subscription: ignored
        if not valid_identity(identity):
            if kind == b'\x01':
                self.refused_subscriptions += 1
                if self.refused_subscriptions <= MAX_LOGGED or self.refused_subscriptions % 1000 == 0:
                    self.logger.warning('ignored a subscription to %d bytes %r from %s: a client subscribes to its '
                                        'identity of 1-%d bytes without NUL (%d ignored so far)', len(identity),
                                        identity[:40], (_property(frame, 'Peer-Address') or b'?').decode('latin-1'),
                                        MAX_IDENTITY_BYTES, self.refused_subscriptions)
            return
        connected = _property(frame, 'Peer-Address') is not None  # else: libzmq says a connection closed
        key = (_property(frame, 'User-Id') or b'') if self.curve and connected else b''
        keys = self.subscribers.setdefault(identity, Counter())
        if kind == b'\x01':
            topic = protocol.reply_topic(identity, key)
            self.pub.setsockopt(zmq.SUBSCRIBE, topic)
            keys[key] += 1
            while topic in self.held.queues:
                self._send(topic, self.held.popleft(topic))
            return
        if connected:
            self.pub.setsockopt(zmq.UNSUBSCRIBE, protocol.reply_topic(identity, key))
        elif keys:  # the connection closed; libzmq names the identity, not the key: one of them
            key = max(keys, key=keys.__getitem__)
        keys[key] -= 1
        if keys[key] <= 0:
            del keys[key]
            dropped = self.blocked.pop_all(protocol.reply_topic(identity, key))
            if dropped:
                self.logger.warning('dropped %d replies to client %r: it left before reading them', dropped,
                                    identity[:40])
        if not keys:
            del self.subscribers[identity]

    def _subscribed(self, identity: bytes, key: bytes) -> bool:
        keys = self.subscribers.get(identity)
        return keys is not None and keys.get(key, 0) > 0

    # -- publishing ----------------------------------------------------------------------------
    def _send(self, topic: bytes, frames) -> None:
        """Publishes, or, if the client's queue is full (it reads slowly), keeps the reply for later
        within the client's and the total byte bounds; beyond them the reply is dropped and logged."""
        if topic not in self.blocked.queues:
            try:
                self.pub.send_multipart(frames, zmq.NOBLOCK, copy=False)
                return
            except zmq.Again:
                pass
        size = _size(frames)
        waiting = self.blocked.bytes.get(topic, 0)
        if waiting and (waiting + size > CLIENT_BACKLOG_BYTES or self.blocked.total + size > MAX_BLOCKED_BYTES
                        or self.blocked.count >= MAX_BLOCKED):
            self.logger.warning('request %s of client %r failed: the client does not read its replies (%d bytes '
                                'wait for it); its reply of %d bytes is dropped', bytes(frames[-1]).decode('latin-1'),
                                topic.split(b'\x00', 1)[0][:40], waiting, size)
            return
        self.blocked.add(topic, frames, size)

    def _retry_blocked(self) -> None:
        for topic in list(self.blocked.queues):
            while topic in self.blocked.queues:
                try:
                    self.pub.send_multipart(self.blocked.queues[topic][0][2], zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                self.blocked.popleft(topic)

    def _publish(self, client: bytes, key: bytes, frames) -> None:
        """Sends a reply (its first frame becomes its topic) to the client and key that asked."""
        if not valid_identity(client):
            self.logger.warning('dropped a reply to an identity of %d bytes: no client can subscribe to it', len(client))
            return
        topic = protocol.reply_topic(client, key)
        frames = [topic] + list(frames[1:])
        if self._subscribed(client, key):
            self._send(topic, frames)
            return
        size = _size(frames)
        while self.held.count and (self.held.count >= MAX_HELD or self.held.total + size > MAX_HELD_BYTES):
            oldest = next(iter(self.held.queues))
            self.logger.warning('dropped a held reply to client %r: %d replies (%d bytes) wait for clients that never '
                                'subscribed to port_out', oldest.split(b'\x00', 1)[0][:40], self.held.count,
                                self.held.total)
            self.held.popleft(oldest)
        self.held.add(topic, frames, size, time.monotonic() + HOLD_SECONDS)

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
        job = self.pending.get(key)
        if job is None or job.n is None:  # a worker failed a piece before REGISTER came with the key to answer
            self.pending.setdefault(key, _Assembly()).failure = (message, code)
            return
        self._finish(key)
        self.logger.warning('request %d of client %r failed: %s', key[1], key[0][:40], clean(message, 2000))
        self._publish(key[0], job.curve_key, protocol.pack_error(key[0], key[1], message, code=code))

    def _tag_ok(self, m: msg.SinkMessage, channel: bytes) -> bool:
        expected = msg.piece_tag(self.secret, channel, m.client, m.req_id, m.serial, m.piece_id)
        return hmac.compare_digest(expected, m.tag)

    def _on_message(self, frames, channel: bytes = msg.LOCAL_CHANNEL) -> None:
        m = msg.unpack_sink(frames)
        from_worker = m.kind == msg.RESULT or (m.kind == msg.FAIL and m.piece_id is not None)
        if channel != msg.LOCAL_CHANNEL and not from_worker:
            raise msg.BadMessage(f'{m.kind[:16]!r} on the remote workers\' port: only results go there')
        if from_worker and not self._tag_ok(m, channel):
            self._drop(f'a {m.kind.decode("latin-1")} for piece {m.piece_id} of request {m.req_id} of client '
                       f'{m.client[:40]!r}: its tag does not match a piece sent to that worker')
            return
        if m.kind == msg.JSON_REPLY:
            self._publish(m.client, m.curve_key, [m.client, m.body, b'%d' % m.req_id])
            return
        if m.kind == msg.FAIL:
            m.code = m.code if m.code in ErrorCode.ALL else ErrorCode.FAILED
            if m.piece_id is not None:
                self.confirmed.append(m.piece_id)
            if m.serial is None:  # refused before it was registered: nothing to clean up
                self.logger.info('request %d of client %r refused: %s', m.req_id, m.client[:40], clean(m.message, 2000))
                retry = 1.0 if m.code == ErrorCode.BUSY else None
                self._publish(m.client, m.curve_key, protocol.pack_error(m.client, m.req_id, m.message, code=m.code,
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
            job.curve_key = m.curve_key
            if job.failure is not None:
                self._fail(key, *job.failure)
                return
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
            self._publish(key[0], job.curve_key, protocol.pack_result(key[0], key[1], array, tokens))

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
        for topic in [t for t, items in self.held.queues.items() if items[0][0] < now]:
            while topic in self.held.queues and self.held.queues[topic][0][0] < now:
                self.held.popleft(topic)
                self.logger.warning('dropped a reply to client %r: it never subscribed to port_out',
                                    topic.split(b'\x00', 1)[0][:40])
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
                self.feedback.send_multipart(msg.pack_finished(self.done, self.dropped_messages), zmq.NOBLOCK)
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
