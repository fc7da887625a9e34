"""Fixtures of the security tests (the helpers they share are in ``security_support``): real
``-engine fake`` servers on free ports, started with the flags a test needs and stopped with it.

A server started here::

    test process ─ BertServer thread (ventilator)   PULL  binds tcp://BIND:port (and port_worker)
                 ├ SINK process                     XPUB  binds tcp://BIND:port_out
                 ├ WORKER-n processes (spawned)     ipc to the ventilator and the sink
                 └ PROXY process, with -http_port   HTTP  binds http_port
"""
from __future__ import annotations

import contextlib
import time
from typing import Iterator, Sequence

import pytest

from bert_serving.server.args import get_args_parser
from bert_serving.server.service import BertServer

from security_support import Running, assert_port_free

READY_SECONDS = 60


@pytest.fixture
def fake_server(pick_port):
    """``with fake_server(['-num_worker', '1', ...]) as running:`` -> Running, once it is ready.

    On exit the server is closed, and every process of it must have ended and its ports be free.
    """
    @contextlib.contextmanager
    def start(flags: Sequence[str] = ()) -> Iterator[Running]:
        port, port_out = pick_port(), pick_port()
        args = get_args_parser().parse_args(['-engine', 'fake', '-cpu', '-port', str(port),
                                             '-port_out', str(port_out), *flags])
        server = BertServer(args)
        server.start()
        try:
            deadline = time.monotonic() + READY_SECONDS
            while not server.is_ready.wait(0.2):
                if not server.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError(f'the server did not become ready (failure: {server.failure})')
            yield Running(server, port, port_out)
        finally:
            server.close()
        assert not server.is_alive() and all(not p.is_alive() for p in server.processes)
        for p in (port, port_out):
            assert_port_free(p)

    return start
