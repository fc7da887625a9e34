"""Sink process: puts the pieces of each request back in order and publishes them.

Sockets (created in ``run``, inside the process):
    PULL  binds ``sink``: REGISTER / JSON_REPLY / FAIL from the ventilator,
          RESULT / FAIL from the workers.
    XPUB  binds tcp://*:port_out: replies to clients (SUB, topic = identity).

XPUB rather than PUB: the sink sees each client's subscription, so a reply to a
client whose subscription has not arrived yet is held back (for a bounded time)
instead of being dropped. That closes the "slow joiner" race of a fresh client.
"""
from __future__ import annotations

import json
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set

import numpy as np
import zmq

from bert_serving.client import protocol

from . import messages as msg
from .launcher import install_stop_handler, parent_alive, read_spec, signal_ready
from ..log import get_logger

__all__ = ['Sink', 'SinkSettings']

POLL_MS = 100
HOLD_SECONDS = 10.0  # how long a reply waits for its client's subscription
FINISHED_MEMORY = 10000  # finished (failed or answered) requests remembered, to drop late pieces


@dataclass(frozen=True)
class SinkSettings:
    sink_addr: str
    port_out: int
    bind_host: str = '*'
    verbose: bool = False
    parent_pid: int = 0


@dataclass
class _Assembly:
    """The pieces of one request received so far."""
    n: Optional[int] = None  # rows expected; None until REGISTER arrives
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
    """Reassembles results and publishes every reply to clients.

    Args:
        settings: addresses and flags.
        stop_event: set means stop (SIGTERM from the parent).
        on_ready: called once both sockets are bound.
    """

    def __init__(self, settings: SinkSettings, stop_event, on_ready=lambda: None):
        self.settings = settings
        self.stop_event = stop_event
        self.on_ready = on_ready

    def run(self) -> None:
        s = self.settings
        self.logger = get_logger('SINK', s.verbose)
        self.pending: Dict[msg.RequestKey, _Assembly] = {}
        self.finished: 'OrderedDict[msg.RequestKey, None]' = OrderedDict()
        self.subscribed = set()
        self.held: Dict[bytes, List] = {}
        with zmq.Context() as ctx:
            receiver = ctx.socket(zmq.PULL)
            self.pub = ctx.socket(zmq.XPUB)
            try:
                for sock in (receiver, self.pub):
                    sock.setsockopt(zmq.LINGER, 0)
                self.pub.setsockopt(zmq.XPUB_VERBOSE, 1)
                self.pub.setsockopt(zmq.SNDHWM, 0)
                receiver.bind(s.sink_addr)
                self.pub.bind(f'tcp://{s.bind_host}:{s.port_out}')
                self.on_ready()
                self._loop(receiver)
            except zmq.ZMQError as e:
                if e.errno != zmq.ETERM:
                    self.logger.error('sink stopped: %s', e)
            finally:
                receiver.close()
                self.pub.close()

    def _loop(self, receiver) -> None:
        poller = zmq.Poller()
        poller.register(receiver, zmq.POLLIN)
        poller.register(self.pub, zmq.POLLIN)
        while not self.stop_event.is_set() and parent_alive(self.settings.parent_pid):
            events = dict(poller.poll(POLL_MS))
            if self.pub in events:
                self._on_subscription(self.pub.recv())
            if receiver in events:
                for _ in range(1000):  # drain, but keep subscriptions flowing
                    try:
                        frames = receiver.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self._on_message([f.buffer if i == 4 else f.bytes for i, f in enumerate(frames)])
            self._expire_held()

    def _on_subscription(self, event: bytes) -> None:
        topic = event[1:]
        if event[:1] == b'\x01':
            self.subscribed.add(topic)
            for _, frames in self.held.pop(topic, []):
                self.pub.send_multipart(frames, copy=False)
        elif event[:1] == b'\x00':
            self.subscribed.discard(topic)

    def _publish(self, client: bytes, frames) -> None:
        if client in self.subscribed:
            self.pub.send_multipart(frames, copy=False)
        else:
            self.held.setdefault(client, []).append((time.monotonic() + HOLD_SECONDS, frames))

    def _expire_held(self) -> None:
        now = time.monotonic()
        for client in [c for c, items in self.held.items() if items[0][0] < now]:
            self.logger.warning('dropped %d replies to client %r: it never subscribed to port_out',
                                len(self.held[client]), client[:40])
            del self.held[client]

    def _finish(self, key) -> None:
        self.pending.pop(key, None)
        self.finished[key] = None
        if len(self.finished) > FINISHED_MEMORY:
            self.finished.popitem(last=False)

    def _fail(self, key, message: str) -> None:
        if key in self.finished:
            return
        self._finish(key)
        self.logger.warning('request %d of client %r failed: %s', key[1], key[0][:40], message)
        self._publish(key[0], protocol.pack_error(key[0], key[1], message))

    def _on_message(self, frames) -> None:
        kind, client = frames[0], frames[1]
        if kind == msg.JSON_REPLY:
            self._publish(client, [client, frames[3], frames[2]])
            return
        req_id = int(frames[2])
        if kind == msg.FAIL:
            message = bytes(frames[3]).decode('utf-8', 'replace')
            if len(frames) == 5:
                self._fail((client, req_id, int(frames[4])), message)
            else:  # refused before it was registered: nothing to clean up
                self.logger.warning('request %d of client %r refused: %s', req_id, client[:40], message)
                self._publish(client, protocol.pack_error(client, req_id, message))
            return
        if kind == msg.REGISTER:
            info = json.loads(frames[3])
            key = (client, req_id, int(info['serial']))
        else:
            key, rows, array, tokens = msg.unpack_result(frames)
        if key in self.finished:
            return  # a late or repeated piece of a request already answered
        job = self.pending.setdefault(key, _Assembly())
        if kind == msg.REGISTER:
            job.n = int(info['n'])
        else:
            # A worker that died after sending a piece but before its DONE reached the ventilator
            # has that piece re-queued: the same rows may come twice. Count them once.
            if job.seen.isdisjoint(rows):
                job.parts.append((rows, array, tokens))
                job.seen.update(rows)
                job.received += len(rows)
        if job.complete():
            self._finish(key)
            array, tokens = job.assemble()
            self.logger.debug('request %d of client %r done: %s', key[1], key[0][:40], array.shape)
            self._publish(key[0], protocol.pack_result(key[0], key[1], array, tokens))


def main() -> None:
    """``python -m bert_serving.server.pipeline.sink``: the SinkSettings fields come as JSON on stdin."""
    spec = read_spec()
    stop = install_stop_handler()
    fields = {k: v for k, v in spec.items() if k in SinkSettings.__dataclass_fields__}
    Sink(SinkSettings(**fields), stop, on_ready=lambda: signal_ready(spec)).run()


if __name__ == '__main__':
    main()
