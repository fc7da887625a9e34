"""Fixtures of the service tests: real BertServer instances on random free ports, expected vectors
from the in-process engine, and raw protocol peers.

Most tests test the pipeline (processes, sockets, splitting, order, faults), not the model: their
servers run ``-engine fake`` (``FAKE`` as the model dir), whose workers are ready in about a second,
and expected vectors come from ``fake_vectors``. A few keep the tiny TensorFlow model (``tiny_hf_dir``,
``tiny_expected``), whose workers import TensorFlow and take seconds to start.

Servers are shared:
``shared_server`` lives for the whole session and serves every test that leaves it as it found it;
a module that needs other flags starts its own through ``launch`` in a module-scoped fixture, and a
test that breaks its server (kills a worker, shuts it down) gets one from ``server_factory``.

A server started here::

    test process ─ BertServer thread (ventilator)   PULL  binds tcp://*:port
                 ├ SINK process                     XPUB  binds tcp://*:port_out
                 └ WORKER-n processes (spawned)     connect to the ventilator and the sink (ipc)
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Iterator, List, Optional, Sequence

import pytest

from bert_serving.server.config import EngineConfig
from bert_serving.server.service import BertServer

from service_support import (FAKE, SHARED_FLAGS, SHARED_MAX_REQUEST_BYTES, Expected, RawPeer, RunningServer,
                             assert_port_free, fake_expected, server_args)

READY_SECONDS = 240  # an upper bound: under heavy load a cold build of the bundled model took 77 s


@contextlib.contextmanager
def _serving(pick_port, model_dir: Optional[Path], flags: Sequence[str], fields: dict) -> Iterator[RunningServer]:
    port, port_out = pick_port(), pick_port()
    server = BertServer(server_args(model_dir, port, port_out, flags, **fields))
    server.start()
    try:
        deadline = time.monotonic() + READY_SECONDS
        while not server.is_ready.wait(0.2):
            if not server.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f'the server did not become ready (failure: {server.failure})')
        yield RunningServer(server, port, port_out)
    finally:
        server.close()
    assert not server.is_alive(), 'BertServer thread still running after close()'
    assert all(not p.is_alive() for p in server.processes), 'a server process survived close()'
    assert_port_free(port)
    assert_port_free(port_out)


@pytest.fixture(scope='session')
def launch(pick_port):
    """``with launch(model_dir, ['-num_worker', '2'], max_request_bytes=10000) as running: ...``

    Starts a BertServer on two fresh ports and waits until it is ready; on exit closes it and
    checks that its thread and processes ended and both ports are free. ``model_dir`` FAKE (None)
    starts ``-engine fake``.
    """
    def start(model_dir: Optional[Path], flags: Sequence[str] = (), **fields) -> contextlib.AbstractContextManager:
        return _serving(pick_port, model_dir, flags, fields)

    return start


@pytest.fixture
def server_factory(launch):
    """``server_factory(model_dir, flags, **fields)`` -> RunningServer, closed after the test."""
    with contextlib.ExitStack() as stack:
        yield lambda model_dir, flags=(), **fields: stack.enter_context(launch(model_dir, flags, **fields))


@pytest.fixture(scope='session')
def shared_server(launch) -> Iterator[RunningServer]:
    """The fake engine with ``SHARED_FLAGS``, requests limited to ``SHARED_MAX_REQUEST_BYTES``;
    its vectors are ``fake_vectors``.

    Tests must leave it as they found it: no killed workers, no shutdown, and no assertions on
    its statistics (other tests' traffic shows there).
    """
    with launch(FAKE, SHARED_FLAGS, max_request_bytes=SHARED_MAX_REQUEST_BYTES) as running:
        yield running


@pytest.fixture(scope='session')
def fake_vectors() -> Expected:
    """Expected vectors of a ``-engine fake`` server under the default flags (REDUCE_MEAN,
    max_seq_len 25): float32 [FAKE_WIDTH] per input."""
    return fake_expected()


@pytest.fixture(scope='session')
def tiny_expected(tiny_hf_dir, graph_cache_dir) -> Iterator[Expected]:
    """Expected vectors of the tiny model under the default flags (REDUCE_MEAN, layer -2,
    max_seq_len 25): float32 [32] per input."""
    from bert_serving.server.engine.encoder import Encoder

    encoder = Encoder(EngineConfig(model_dir=str(tiny_hf_dir), graph_tmp_dir=str(graph_cache_dir)))
    yield Expected(encoder)
    encoder.close()


@pytest.fixture
def raw_peer():
    """``raw_peer(running, identity)`` -> RawPeer; every peer is closed after the test."""
    peers: List[RawPeer] = []

    def make(running: RunningServer, identity: bytes) -> RawPeer:
        peers.append(RawPeer(running, identity))
        return peers[-1]

    yield make
    for peer in peers:
        peer.close()
