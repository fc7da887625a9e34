"""One asynchronous ZeroMQ connection to the server, shared by every HTTP request.

Connects, never binds (the frames are described in ``bert_serving.client.protocol``)::

    PUSH -> tcp://server_ip:port       requests, to the ventilator's PULL
    SUB  <- tcp://server_ip:port_out   replies, from the sink's XPUB; topic = this proxy's identity
                                       (checked whole: ``protocol.is_reply_for``)

Both are CurveZMQ clients when the server runs with -auth_dir (``curve_keys``).

Every request takes the next req_id and an asyncio Future; one reader task receives the
replies and resolves the Future of the same req_id. Hundreds of HTTP requests thus share two
sockets and one identity. The sink holds replies until it has seen our subscription, so no
handshake is needed; a request whose reply never comes fails after its timeout.

A SUB receives every topic that starts with its subscription, so a reply is taken only when its
topic names this identity whole; one to an identity that merely starts with ours is dropped and
counted (``num_foreign_reply``), never taken for one of our req_ids.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import logging
import uuid
from typing import Dict, List, Optional

import zmq
import zmq.asyncio

from bert_serving.client import __version__
from bert_serving.client.protocol import PROTOCOL_VERSION
from bert_serving.client.errors import ProtocolError
from bert_serving.client.protocol import (HTTP_PROXY_PREFIX, Command, Reply, is_reply_for, pack_request, reply_error,
                                          unpack_reply)
from bert_serving.client.security import CurveKeys, secure_client_socket

from .errors import BackendError, BackendTimeout, BackendUnavailable, from_client_error

__all__ = ['ZmqBackend']

SHOWN_PENDING = 50  # req_ids listed by client_status; the count is always exact


class ZmqBackend:
    """The proxy's client of the server. Use from one event loop: ``await start()`` ... ``await close()``.

    Args:
        server_ip: Address of the server's ZeroMQ ports.
        port: The server's request port.
        port_out: The server's result port.
        request_timeout: Seconds an encoding request may wait for its reply.
        status_timeout: Seconds a SHOW_STATUS / SHOW_CONFIG may wait for its reply.
        logger: Where to report dropped or malformed replies.
        curve_keys: The proxy's CurveZMQ keys for a server with -auth_dir; None: plain sockets.
    """

    def __init__(self, server_ip: str, port: int, port_out: int, *, request_timeout: float,
                 status_timeout: float, logger: Optional[logging.Logger] = None,
                 curve_keys: Optional[CurveKeys] = None):
        self.server_ip, self.port, self.port_out = server_ip, port, port_out
        self.curve_keys = curve_keys
        self.request_timeout = request_timeout
        self.status_timeout = status_timeout
        self.identity = HTTP_PROXY_PREFIX + str(uuid.uuid4()).encode('ascii')  # the server's metrics: door http
        self.logger = logger or logging.getLogger(__name__)
        self._ids = itertools.count(1)
        self._pending: Dict[int, asyncio.Future] = {}
        self._ctx: Optional[zmq.asyncio.Context] = None
        self._push = self._sub = None
        self._reader: Optional[asyncio.Task] = None
        self._closed = False
        self.counts = {'num_request': 0, 'num_reply': 0, 'num_error': 0, 'num_timeout': 0, 'num_late_reply': 0,
                       'num_foreign_reply': 0}

    async def start(self) -> None:
        """Connects both sockets and starts the reader task."""
        self._ctx = zmq.asyncio.Context()
        self._push = self._ctx.socket(zmq.PUSH)
        self._sub = self._ctx.socket(zmq.SUB)
        for sock in (self._push, self._sub):
            sock.setsockopt(zmq.LINGER, 0)
            secure_client_socket(sock, self.curve_keys)
        self._sub.setsockopt(zmq.SUBSCRIBE, self.identity)
        host = self.server_ip
        if ':' in host:  # an IPv6 address: ZeroMQ needs it in brackets, and IPv6 on
            host = f'[{host}]'
            for sock in (self._push, self._sub):
                sock.setsockopt(zmq.IPV6, 1)
        self._push.connect(f'tcp://{host}:{self.port}')
        self._sub.connect(f'tcp://{host}:{self.port_out}')
        self._reader = asyncio.get_running_loop().create_task(self._read(), name='zmq-reader')

    async def close(self) -> None:
        """Stops the reader, fails what is still pending, and closes the sockets. Idempotent."""
        self._closed = True
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except asyncio.CancelledError:
                pass
            self._reader = None
        self._fail_pending('the proxy is shutting down')
        for sock in (self._push, self._sub):
            if sock is not None:
                sock.close(linger=0)
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    @property
    def connected(self) -> bool:
        return not self._closed and self._reader is not None and not self._reader.done()

    # -- requests ------------------------------------------------------------------------------
    async def encode(self, texts: List, show_tokens: bool = False) -> Reply:
        """Encodes texts: strings, or token lists (the server tells them apart by ``texts[0]``).

        The server is asked for the word pieces only with ``show_tokens``: they are the texts
        themselves, and the less of them travels to port_out, the better.

        Returns:
            A result Reply: ``array`` float32 [B, D] ([B, T, D] with pooling NONE); ``tokens``
            B token lists if ``show_tokens`` (or the server sends them to everyone), else None.

        Raises:
            BackendError: the server failed the request.
            ServerBusy, ServerShuttingDown, InvalidField, BackendTimeout: the server refused it as
                busy, shutting down, invalid or past its deadline (``errors.from_client_error``).
            BackendTimeout: no reply within ``request_timeout``.
            BackendUnavailable: the connection is closed.
        """
        body = {'texts': texts, 'show_tokens': True} if show_tokens else texts
        payload = json.dumps(body, ensure_ascii=False).encode('utf-8')
        reply = await self._request(payload, len(texts), self.request_timeout)
        if reply.kind != 'result':
            raise BackendError(f'the server answered request {reply.req_id} with a {reply.kind} reply, '
                               'not an encoding; is port_out the server\'s result port?')
        return reply

    async def server_status(self) -> dict:
        """The server's SHOW_STATUS reply (config, 'statistic', readiness, per-worker counts)."""
        return await self._command(Command.SHOW_STATUS)

    async def server_config(self) -> dict:
        """The server's SHOW_CONFIG reply."""
        return await self._command(Command.SHOW_CONFIG)

    async def _command(self, command: bytes) -> dict:
        reply = await self._request(command, 0, self.status_timeout)
        if reply.kind != 'json' or not isinstance(reply.data, dict):
            raise BackendError(f'the server answered {command.decode()} with a {reply.kind} reply')
        return reply.data

    async def _request(self, payload: bytes, msg_len: int, timeout: float) -> Reply:
        if not self.connected:
            raise BackendUnavailable('the proxy has no connection to the server (shutting down?)')
        req_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._pending[req_id] = future
        self.counts['num_request'] += 1
        try:
            reply = await asyncio.wait_for(self._send_and_wait(req_id, payload, msg_len, future), timeout)
        except asyncio.TimeoutError:
            self.counts['num_timeout'] += 1
            raise BackendTimeout(
                f'no reply from the server within {timeout:g}s; check that it runs with -port {self.port} '
                f'-port_out {self.port_out} on {self.server_ip}, and that it is not overloaded') from None
        finally:
            self._pending.pop(req_id, None)
        if reply.kind == 'error':
            self.counts['num_error'] += 1
            raise from_client_error(reply_error(reply))
        return reply

    async def _send_and_wait(self, req_id: int, payload: bytes, msg_len: int, future: asyncio.Future) -> Reply:
        await self._push.send_multipart(pack_request(self.identity, payload, req_id, msg_len))
        return await future

    # -- replies -------------------------------------------------------------------------------
    async def _read(self) -> None:
        """Reader task: hands each reply to the Future of its req_id."""
        try:
            while True:
                frames = await self._sub.recv_multipart()
                if not frames or not is_reply_for(self.identity, frames[0]):
                    self.counts['num_foreign_reply'] += 1
                    self.logger.debug('dropped a reply whose topic is not this proxy\'s identity')
                    continue
                try:
                    reply = unpack_reply(frames)
                except ProtocolError as e:
                    self.logger.warning('dropped a malformed reply from the server: %s', e)
                    continue
                future = self._pending.get(reply.req_id)
                if future is None or future.done():
                    self.counts['num_late_reply'] += 1
                    self.logger.debug('reply %d came after its request timed out; dropped', reply.req_id)
                    continue
                self.counts['num_reply'] += 1
                future.set_result(reply)
        except zmq.ZMQError as e:
            if e.errno != zmq.ETERM:
                self.logger.error('the connection to the server broke: %s', e)
        finally:
            self._fail_pending('the connection to the server was closed')

    def _fail_pending(self, message: str) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(BackendUnavailable(message))

    def client_status(self) -> dict:
        """The proxy's own view of its connection, for ``GET /status/client``."""
        pending = sorted(self._pending)
        return {
            'identity': self.identity.decode('ascii'),
            'server_ip': self.server_ip,
            'port': self.port,
            'port_out': self.port_out,
            'client_version': __version__,
            'protocol_version': PROTOCOL_VERSION,
            'timeout': self.request_timeout,
            'status_timeout': self.status_timeout,
            'connected': self.connected,
            'curve': self.curve_keys is not None,
            'num_pending_request': len(pending),
            'pending_request': pending[:SHOWN_PENDING],
            **self.counts,
        }
