"""A fake bert-serving server for the client tests, and guards against leaked threads and sockets.

The fake runs in a thread of the test process. It binds, on random free ports of 127.0.0.1::

    PULL  <- port       requests from clients
    XPUB  -> port_out   replies; the XPUB also reports each client's subscription

Like the real server, it holds a client's requests until that client's subscription has arrived
(the ``\\x01<identity>`` message on the XPUB), so no reply is lost to a slow-joining SUB socket.
Its "model" is deterministic: see :func:`fake_vector`. A few magic texts make it fail a request
instead (see ``FAILURES``).
"""
from __future__ import annotations

import heapq
import json
import os
import threading
import time
import zlib

import numpy as np
import pytest
import zmq

from bert_serving.client import BertClient
from bert_serving.client.protocol import (Command, ErrorCode, pack_error, pack_json_reply, pack_result,
                                         unpack_request)

FAKE_WIDTH = 8
LEAK_GRACE_SECONDS = 3.0
WAIT_SECONDS = 10.0  # the most a test waits for the fake to reach a state; reached in milliseconds

# A request holding one of these texts fails with (error code, retry_after); 'RAISE' sends no code, as 1.10.
FAILURES = {'RAISE': (None, None), 'BUSY': (ErrorCode.BUSY, 2.5), 'BUSY-NO-HINT': (ErrorCode.BUSY, None),
            'STOPPING': (ErrorCode.SHUTTING_DOWN, None), 'DEADLINE': (ErrorCode.TIMEOUT, None)}


def fake_vector(item) -> np.ndarray:
    """The fake encoding of one input (a str, or a token list): float32 [FAKE_WIDTH].

    [number of characters, number of words, then 6 values in [0, 1) taken from a CRC of the text].
    """
    text = item if isinstance(item, str) else ' '.join(item)
    crc = zlib.crc32(text.encode('utf-8'))
    noise = [((crc >> (5 * i)) & 31) / 32 for i in range(FAKE_WIDTH - 2)]
    return np.array([len(text), len(text.split()), *noise], dtype=np.float32)


def fake_encode(texts) -> np.ndarray:
    """float32 [B, FAKE_WIDTH], row i for ``texts[i]``."""
    return np.stack([fake_vector(t) for t in texts])


def fake_tokens(item) -> list:
    words = item.split() if isinstance(item, str) else list(item)
    return ['[CLS]', *words, '[SEP]']


class FakeServer:
    """A bert-serving server stand-in; tests steer it through these attributes.

    ``fake.encode(texts)`` and ``fake.tokens(text)`` give what the fake answers; ``fake.width`` is D.

    Attributes:
        config: What SHOW_CONFIG returns.
        delay: When a data reply goes out: seconds (a float, or a function of the texts), or a
            ``threading.Event`` that holds every reply until the test sets it.
        drop_data: Never answer data requests.
        config_plan: One entry per coming SHOW_CONFIG, consumed in order: 'drop', a delay in seconds,
            or a ``threading.Event`` that holds the reply until set.
        requests: Every request received (``protocol.Request``), in arrival order.
        sent: (identity, req_id) of every reply sent, in sending order (a client receives its
            replies in this order too: one XPUB to one SUB keeps it).
        max_outstanding: Most data requests that were ever received and not yet answered at once.
    """

    def __init__(self, *, max_seq_len=25, show_tokens_to_client=False, protocol_version=1,
                 server_version='2.0.0', omit=(), ports=None):
        self.config = {'server_version': server_version, 'protocol_version': protocol_version,
                       'max_seq_len': max_seq_len, 'show_tokens_to_client': show_tokens_to_client,
                       'pooling_strategy': 'REDUCE_MEAN', 'num_worker': 1}
        for key in omit:
            del self.config[key]
        self.delay = 0.0
        self.drop_data = False
        self.config_plan: list = []
        self.requests: list = []
        self.sent: list = []
        self.max_outstanding = 0
        self._changed = threading.Condition()
        self._gated: list = []  # (event, frames, is data) held until their event is set
        self._ports = ports  # (port, port_out) to bind; None: random free ports
        self.port = self.port_out = None
        self._outstanding = 0
        self._scheduled: list = []  # heap of (due time, sequence number, frames, is data)
        self._sequence = 0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error = None
        self._thread = threading.Thread(target=self._run, name='fake-bert-server', daemon=True)

    def start(self):
        self._thread.start()
        if not self._ready.wait(10) or self._error is not None:
            raise RuntimeError(f'fake server did not start: {self._error!r}')

    def stop(self):
        self._stop.set()
        self._thread.join(10)
        assert not self._thread.is_alive(), 'fake server thread did not stop'
        if self._error is not None:
            raise RuntimeError('fake server failed') from self._error

    width = FAKE_WIDTH
    encode = staticmethod(fake_encode)
    tokens = staticmethod(fake_tokens)

    def client(self, **kwargs) -> BertClient:
        return BertClient(ip='127.0.0.1', port=self.port, port_out=self.port_out, **kwargs)

    def commands(self, command: bytes) -> list:
        return [r for r in self.requests if r.command == command]

    def data_requests(self) -> list:
        return [r for r in self.requests if r.command is None]

    def wait_sent(self, req_id: int, identity=None) -> int:
        """Waits until the reply to ``req_id`` (of ``identity`` if given) has gone out; returns its
        position in ``sent``. Fails the test if it does not go out within WAIT_SECONDS."""
        def position():
            for i, (who, sent_id) in enumerate(self.sent):
                if sent_id == req_id and identity in (None, who):
                    return i
            return None
        with self._changed:
            assert self._changed.wait_for(lambda: position() is not None, WAIT_SECONDS), \
                f'the fake never sent the reply to request {req_id}'
            return position()

    def _send(self, xpub, frames, is_data):
        xpub.send_multipart(frames)
        self._outstanding -= is_data
        with self._changed:
            self.sent.append((bytes(frames[0]), int(frames[-1])))
            self._changed.notify_all()

    def _run(self):
        context = zmq.Context()
        pull, xpub = context.socket(zmq.PULL), context.socket(zmq.XPUB)
        try:
            for sock in (pull, xpub):
                sock.linger = 0
            if self._ports is None:
                self.port = pull.bind_to_random_port('tcp://127.0.0.1')
                self.port_out = xpub.bind_to_random_port('tcp://127.0.0.1')
            else:
                self.port, self.port_out = self._ports
                pull.bind(f'tcp://127.0.0.1:{self.port}')
                xpub.bind(f'tcp://127.0.0.1:{self.port_out}')
            self._ready.set()
            self._serve(pull, xpub)
        except BaseException as err:  # reported by start() or stop() in the test's thread
            self._error = err
            self._ready.set()
        finally:
            pull.close()
            xpub.close()
            context.term()

    def _serve(self, pull, xpub):
        poller = zmq.Poller()
        poller.register(pull, zmq.POLLIN)
        poller.register(xpub, zmq.POLLIN)
        subscribed, held = set(), {}
        while not self._stop.is_set():
            now = time.monotonic()
            while self._scheduled and self._scheduled[0][0] <= now:
                _, _, frames, is_data = heapq.heappop(self._scheduled)
                self._send(xpub, frames, is_data)
            for gated in [g for g in self._gated if g[0].is_set()]:
                self._gated.remove(gated)
                self._send(xpub, *gated[1:])
            wait = 0.05 if not self._scheduled else min(0.05, self._scheduled[0][0] - now)
            for sock, _ in poller.poll(max(1, int(wait * 1000))):
                if sock is xpub:
                    event = xpub.recv()
                    if event[:1] == b'\x01':
                        subscribed.add(event[1:])
                        for request in held.pop(event[1:], []):
                            self._handle(request)
                    elif event[:1] == b'\x00':
                        subscribed.discard(event[1:])
                else:
                    request = unpack_request(pull.recv_multipart())
                    self.requests.append(request)
                    if request.identity in subscribed:
                        self._handle(request)
                    else:
                        held.setdefault(request.identity, []).append(request)

    def _schedule(self, frames, delay, is_data=False):
        if isinstance(delay, threading.Event):
            self._gated.append((delay, frames, is_data))
            return
        self._sequence += 1
        heapq.heappush(self._scheduled, (time.monotonic() + delay, self._sequence, frames, is_data))

    def _handle(self, request):
        who, req_id = request.identity, request.req_id
        if request.command == Command.SHOW_CONFIG:
            plan = self.config_plan.pop(0) if self.config_plan else 0.0
            if plan != 'drop':
                self._schedule(pack_json_reply(who, req_id, self.config), plan)
            return
        if request.command == Command.SHOW_STATUS:
            status = {'num_request': len(self.data_requests()), 'num_config_request': len(self.commands(
                Command.SHOW_CONFIG)), 'server_version': self.config.get('server_version')}
            self._schedule(pack_json_reply(who, req_id, status), 0.0)
            return
        if self.drop_data:
            return
        texts = json.loads(request.payload)
        if len(texts) != request.msg_len:
            frames = pack_error(who, req_id, f'msg_len is {request.msg_len} but {len(texts)} texts came')
        elif any(t in FAILURES for t in texts if isinstance(t, str)):
            i, word = next((i, t) for i, t in enumerate(texts) if isinstance(t, str) and t in FAILURES)
            code, retry_after = FAILURES[word]
            frames = pack_error(who, req_id, f'fake failure: texts[{i}] is {word}', code, retry_after)
        else:
            tokens = [fake_tokens(t) for t in texts] if self.config.get('show_tokens_to_client') else None
            frames = pack_result(who, req_id, fake_encode(texts), tokens)
        delay = self.delay(texts) if callable(self.delay) else self.delay  # an Event is not callable
        self._outstanding += 1
        self.max_outstanding = max(self.max_outstanding, self._outstanding)
        self._schedule(frames, delay, is_data=True)


@pytest.fixture
def fake_server():
    """A function that starts a FakeServer with the given settings; all are stopped after the test."""
    servers = []

    def start(**settings) -> FakeServer:
        server = FakeServer(**settings)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def fake(fake_server) -> FakeServer:
    """A FakeServer with default settings: max_seq_len=25, no tokens for clients."""
    return fake_server()


def _open_fds() -> set:
    return set(os.listdir('/proc/self/fd'))


@pytest.fixture(autouse=True)
def no_leaked_threads_or_sockets():
    """Fails a test that leaves a thread running or a ZeroMQ context (its file descriptors) open."""
    threads_before, fds_before = set(threading.enumerate()), _open_fds()
    yield
    deadline = time.monotonic() + LEAK_GRACE_SECONDS
    while True:
        threads = [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]
        fds = _open_fds() - fds_before
        if (not threads and not fds) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not threads, f'test left threads running: {threads}'
    assert not fds, f'test left {len(fds)} file descriptors open (an unclosed BertClient or socket?)'
