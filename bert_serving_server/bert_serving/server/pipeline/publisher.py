"""Publisher: the sink's XPUB on ``port_out``, which decides who receives which reply. Runs inside
the sink process, which owns the socket and calls it from its loop.

The XPUB runs in manual mode: the publisher decides what each subscription means. A client
subscribes to its identity; the publisher subscribes that connection to
``identity + NUL + curve key`` instead (``protocol.reply_topic``; the key is empty without
``-auth_dir``) and sends every reply on the topic of the request's identity and the key it came
with. ZeroMQ matches topics by prefix; the NUL ends the identity, so a subscription matches one
whole identity and, under CurveZMQ, only the key that sent the request: an empty subscription, a
prefix, or another key's subscription to a known identity receives nothing. Subscriptions that are
empty, over 256 bytes or hold a NUL are not applied.

Replies wait here in two bounded backlogs:
    held     a reply to a client whose subscription has not arrived yet (the "slow joiner" race of
             a fresh client), for HOLD_SECONDS, MAX_HELD replies and MAX_HELD_BYTES in all;
    blocked  replies to a client that reads slowly: XPUB_NODROP refuses a reply whose connection is
             full (SNDHWM replies), and since a topic reaches its own connections only, only that
             client's replies wait. At most CLIENT_BACKLOG_BYTES per client (one reply always fits)
             and MAX_BLOCKED_BYTES / MAX_BLOCKED in all; beyond, the reply is dropped and logged.
"""
from __future__ import annotations

import time
from collections import Counter, OrderedDict, deque
from typing import Deque, Dict, Optional

import zmq

from bert_serving.client import protocol
from bert_serving.client.protocol import MAX_IDENTITY_BYTES

__all__ = ['Publisher', 'valid_identity', 'connection_property']

HOLD_SECONDS = 10.0  # how long a reply waits for its client's subscription
MAX_HELD = 10_000  # replies held for clients not subscribed yet, over all clients
MAX_HELD_BYTES = 256 << 20  # ... and their bytes
MAX_BLOCKED = 100_000  # replies waiting for clients that read slowly, over all clients
MAX_BLOCKED_BYTES = 1 << 30  # ... and their bytes
CLIENT_BACKLOG_BYTES = 256 << 20  # bytes of replies one slow client may have waiting here (one reply always fits)
SNDHWM = 256  # replies queued in ZeroMQ per connection; more wait in the blocked backlog, bounded in bytes
# MAXMSGSIZE of the XPUB: a peer sending more is cut off. Subscriptions are 1 + 256 bytes at most, but
# the limit also applies to the CurveZMQ handshake (its INITIATE is ~300 bytes with metadata).
SUBSCRIPTION_MAX_BYTES = 4096
MAX_LOGGED = 20  # refused subscriptions logged one by one; then every 1000th


def valid_identity(identity: bytes) -> bool:
    """A client identity a reply can be published to: 1-256 bytes without NUL (NUL ends a topic)."""
    return 0 < len(identity) <= MAX_IDENTITY_BYTES and b'\x00' not in identity


def connection_property(frame, name: str) -> Optional[bytes]:
    """A connection property (``User-Id``, ``Peer-Address``) of a received frame; None where there is
    none (a message libzmq made itself, such as the unsubscription of a connection that closed)."""
    try:
        value = frame.get(name)
    except zmq.ZMQError:
        return None
    return value.encode('latin-1') if isinstance(value, str) else value


def _size(frames) -> int:
    return sum(len(f) if isinstance(f, (bytes, memoryview)) else getattr(f, 'nbytes', 0) for f in frames)


def _client_of(topic: bytes) -> bytes:
    return topic.split(b'\x00', 1)[0][:40]


class _Backlog:
    """Replies waiting, per topic, oldest first, with their count and bytes."""

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


class Publisher:
    """Args:
        sock: the XPUB, not bound yet (``configure`` sets its options).
        curve: the server runs with -auth_dir: a subscription's topic carries its Curve key.
        logger: the sink's.
    """

    def __init__(self, sock: zmq.Socket, curve: bool, logger):
        self.sock = sock
        self.curve = curve
        self.logger = logger
        self.subscribers: Dict[bytes, Counter] = {}  # identity -> Counter of the keys subscribed to it
        self.held = _Backlog()
        self.blocked = _Backlog()
        self.refused = 0

    def configure(self) -> None:
        for option, value in ((zmq.XPUB_MANUAL, 1), (zmq.XPUB_NODROP, 1), (zmq.SNDHWM, SNDHWM),
                              (zmq.MAXMSGSIZE, SUBSCRIPTION_MAX_BYTES)):
            self.sock.setsockopt(option, value)

    # -- subscriptions -------------------------------------------------------------------------
    def read_subscriptions(self) -> None:
        for _ in range(1000):  # then let the sink's other sockets flow
            try:
                frame = self.sock.recv(zmq.NOBLOCK, copy=False)
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
                self.refused += 1
                if self.refused <= MAX_LOGGED or self.refused % 1000 == 0:
                    peer = (connection_property(frame, 'Peer-Address') or b'?').decode('latin-1')
                    self.logger.warning('ignored a subscription to %d bytes %r from %s: a client subscribes to its '
                                        'identity of 1-%d bytes without NUL (%d ignored so far)', len(identity),
                                        identity[:40], peer, MAX_IDENTITY_BYTES, self.refused)
            return
        connected = connection_property(frame, 'Peer-Address') is not None  # else: a connection closed
        key = (connection_property(frame, 'User-Id') or b'') if self.curve and connected else b''
        keys = self.subscribers.setdefault(identity, Counter())
        if kind == b'\x01':
            topic = protocol.reply_topic(identity, key)
            self.sock.setsockopt(zmq.SUBSCRIBE, topic)
            keys[key] += 1
            while topic in self.held.queues:
                self._send(topic, self.held.popleft(topic))
            return
        if connected:
            self.sock.setsockopt(zmq.UNSUBSCRIBE, protocol.reply_topic(identity, key))
        elif keys:  # libzmq names the identity of a closed connection, not its key: take one of them
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
    def publish(self, client: bytes, key: bytes, frames) -> None:
        """Sends a reply (its first frame becomes its topic) to the client and key that asked."""
        if not valid_identity(client):
            self.logger.warning('dropped a reply to an identity of %d bytes: no client can subscribe to it',
                                len(client))
            return
        topic = protocol.reply_topic(client, key)
        frames = [topic] + list(frames[1:])
        if self._subscribed(client, key):
            self._send(topic, frames)
            return
        size = _size(frames)
        while self.held.count and (self.held.count >= MAX_HELD or self.held.total + size > MAX_HELD_BYTES):
            oldest = next(iter(self.held.queues))
            self.logger.warning('dropped a held reply to client %r: %d replies (%d bytes) wait for clients that '
                                'never subscribed to port_out', _client_of(oldest), self.held.count, self.held.total)
            self.held.popleft(oldest)
        self.held.add(topic, frames, size, time.monotonic() + HOLD_SECONDS)

    def _send(self, topic: bytes, frames) -> None:
        """Sends, or, if the client's connection is full (it reads slowly), keeps the reply for later
        within the client's and the total byte bounds; beyond them the reply is dropped and logged."""
        if topic not in self.blocked.queues:
            try:
                self.sock.send_multipart(frames, zmq.NOBLOCK, copy=False)
                return
            except zmq.Again:
                pass
        size = _size(frames)
        waiting = self.blocked.bytes.get(topic, 0)
        if waiting and (waiting + size > CLIENT_BACKLOG_BYTES or self.blocked.total + size > MAX_BLOCKED_BYTES
                        or self.blocked.count >= MAX_BLOCKED):
            self.logger.warning('request %s of client %r failed: the client does not read its replies (%d bytes '
                                'wait for it); its reply of %d bytes is dropped', bytes(frames[-1]).decode('latin-1'),
                                _client_of(topic), waiting, size)
            return
        self.blocked.add(topic, frames, size)

    def retry(self) -> None:
        """Sends what slow readers have made room for."""
        for topic in list(self.blocked.queues):
            while topic in self.blocked.queues:
                try:
                    self.sock.send_multipart(self.blocked.queues[topic][0][2], zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                self.blocked.popleft(topic)

    def expire(self, now: float) -> None:
        """Drops held replies whose client never subscribed within HOLD_SECONDS."""
        for topic in [t for t, items in self.held.queues.items() if items[0][0] < now]:
            while topic in self.held.queues and self.held.queues[topic][0][0] < now:
                self.held.popleft(topic)
                self.logger.warning('dropped a reply to client %r: it never subscribed to port_out', _client_of(topic))
