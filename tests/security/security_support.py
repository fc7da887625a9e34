"""What the security tests share besides fixtures; test modules import it by name (pytest puts this
folder on ``sys.path``)."""
from __future__ import annotations

import socket
from dataclasses import dataclass

import pytest

from bert_serving.server.service import BertServer

__all__ = ['Running', 'assert_port_free']


@dataclass
class Running:
    """A ready server: the BertServer thread and its two client ports."""
    server: BertServer
    port: int
    port_out: int


def assert_port_free(port: int) -> None:
    """Binds the port on all interfaces, as the server did; fails if anything still listens there."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(('0.0.0.0', port))
        except OSError as e:
            pytest.fail(f'port {port} is still in use after the server stopped: {e}')
