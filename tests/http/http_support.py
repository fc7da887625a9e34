"""What the HTTP proxy tests share besides fixtures: a handle on a running server with its proxy,
and a standard-library HTTP call. Test modules import it by name (pytest puts this folder on
``sys.path``); the fixtures that start servers live in ``conftest.py``.
"""
from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import pytest

from bert_serving.server.service import BertServer

__all__ = ['HTTP_TIMEOUT', 'HttpServer', 'http', 'metric_sample', 'assert_port_free']

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
