"""What the HTTP proxy tests share besides fixtures: a handle on a running server with its proxy,
a standard-library HTTP call, and a fake backend that stands in for the server. Test modules import
it by name (pytest puts this folder on ``sys.path``); the fixtures live in ``conftest.py``.

The fake stands in for ZmqBackend: its "model" maps text i of a request to
float32 [len(text), number of words, i, -1] and its tokens, sent only when asked for, are
[CLS] + words + [SEP].
"""
from __future__ import annotations

import asyncio
import json
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Awaitable, Callable, List, Optional, Tuple

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer

from bert_serving.client.protocol import Reply
from bert_serving.server.http.app import create_app
from bert_serving.server.http.settings import ProxyConfig
from bert_serving.server.service import BertServer

__all__ = ['HTTP_TIMEOUT', 'HttpServer', 'http', 'metric_sample', 'assert_port_free',
           'READY_STATUS', 'FakeBackend', 'serve']

HTTP_TIMEOUT = 30  # seconds any test HTTP call may take; nothing may hang a test


@dataclass
class HttpServer:
    """A running BertServer with its HTTP proxy.

    Attributes:
        server: the BertServer thread.
        port, port_out: its ZeroMQ ports.
        http_port: the proxy's port.
        health_log: (seconds since start, status code) of every /health answer while it started.
    """
    server: BertServer
    port: int
    port_out: int
    http_port: int
    health_log: List[Tuple[float, int]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f'http://127.0.0.1:{self.http_port}'

    def client(self, **kwargs):
        """A BertClient of the same server; close it."""
        from bert_serving.client import BertClient

        kwargs.setdefault('timeout', HTTP_TIMEOUT * 1000)
        return BertClient(ip='127.0.0.1', port=self.port, port_out=self.port_out, **kwargs)


def http(method: str, url: str, body=None, *, raw: Optional[bytes] = None, headers=None):
    """One HTTP call with the standard library. Returns (status, headers, decoded JSON or text)."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        request.add_header('Content-Type', 'application/json')
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
            status, got_headers, payload = response.status, response.headers, response.read()
    except urllib.error.HTTPError as e:
        status, got_headers, payload = e.code, e.headers, e.read()
    text = payload.decode('utf-8')
    if got_headers.get('Content-Type', '').startswith('application/json'):
        return status, got_headers, json.loads(text)
    return status, got_headers, text


def metric_sample(text: str, name: str) -> float:
    """The value of one sample of a Prometheus text page (``name`` with its labels as printed), 0 if absent."""
    for line in text.splitlines():
        if line.rsplit(' ', 1)[0] == name:
            return float(line.rsplit(' ', 1)[1])
    return 0.0


def assert_port_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(('0.0.0.0', port))
        except OSError as e:
            pytest.fail(f'port {port} is still in use after the server stopped: {e}')


READY_STATUS = {'ready': True, 'num_worker': 2, 'num_ready_worker': 2, 'num_queued_piece': 0,
                'statistic': {'num_data_request': 7, 'num_total_seq': 21},
                'batches_per_worker': {'0': 3, '1': 4}, 'sequences_per_worker': {'0': 10, '1': 11},
                'model_dir': '/models/fake-bert/model'}


class FakeBackend:
    """Steer it through attributes: ``delay`` (seconds per encode), ``hold`` (an asyncio.Event every
    encode waits for, if set to one), ``error`` (raised by encode), ``status`` (SHOW_STATUS reply, or
    an exception to raise), ``token_level`` (3-D results). ``calls`` lists every encode as it starts,
    ``status_calls`` counts the SHOW_STATUS requests."""

    def __init__(self):
        self.delay = 0.0
        self.hold: Optional[asyncio.Event] = None
        self.error = None
        self.status = dict(READY_STATUS)
        self.token_level = False
        self.calls = []
        self.status_calls = 0

    async def encode(self, texts, show_tokens=False):
        self.calls.append((list(texts), show_tokens))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.hold is not None:
            await self.hold.wait()
        if self.error is not None:
            raise self.error
        words = [t.split() if isinstance(t, str) else t for t in texts]
        array = np.array([[len(t), len(w), i, -1] for i, (t, w) in enumerate(zip(texts, words))], dtype=np.float32)
        if self.token_level:
            array = array[:, None, :].repeat(3, axis=1)
        tokens = [['[CLS]', *w, '[SEP]'] for w in words] if show_tokens else None
        return Reply('result', 1, array=array, tokens=tokens)

    async def wait_calls(self, n: int) -> None:
        """Waits until ``n`` encodes have started; fails the test after HTTP_TIMEOUT seconds."""
        async def started():
            while len(self.calls) < n:
                await asyncio.sleep(0.01)
        try:
            await asyncio.wait_for(started(), HTTP_TIMEOUT)
        except asyncio.TimeoutError:
            pytest.fail(f'{len(self.calls)} encodes started, not {n}')

    async def server_status(self):
        self.status_calls += 1
        await asyncio.sleep(0)  # as a real request, it lets other callers run meanwhile
        if isinstance(self.status, Exception):
            raise self.status
        return dict(self.status)

    async def server_config(self):
        return {'model_dir': self.status['model_dir'] if isinstance(self.status, dict) else None}

    def client_status(self):
        return {'identity': 'fake', 'num_pending_request': 0}


def serve(backend: FakeBackend, check: Callable[[TestClient], Awaitable[None]], *,
          auto_decompress: bool = True, **settings) -> None:
    """Runs ``check(client)`` against the app on a random port of 127.0.0.1.

    Args:
        backend: What the app calls instead of the server.
        check: The test's requests and assertions.
        auto_decompress: False to see replies as sent, e.g. gzipped.
        **settings: ProxyConfig fields (max_connect, cors, max_body_bytes, ...).
    """
    async def main():
        app = create_app(backend, ProxyConfig(http_port=0, port=1, port_out=2, **settings))
        async with TestClient(TestServer(app, host='127.0.0.1'), auto_decompress=auto_decompress) as client:
            await check(client)

    asyncio.run(main())
