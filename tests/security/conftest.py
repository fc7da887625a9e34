"""Fixtures of the attack tests.

Each test here plays an unfriendly peer against a real server on loopback (real processes, real
sockets): a stranger on port_out, a peer that never reads, a sender of huge identities, a client key
posing as a worker, a forger on the workers' results port, a worker that sends hostile strings.
The servers come from tests/service's fixtures (``launch``, ``server_factory``, ``raw_peer``,
``fake_vectors``), which check on exit that every process ended and every port is free::

    test process ─ BertServer thread (ventilator)   PULL  binds tcp://BIND:port (and port_worker)
                 ├ SINK process                     XPUB  binds tcp://BIND:port_out
                 ├ WORKER-n processes (spawned)     ipc to the ventilator and the sink
                 └ PROXY process, with -http_port   HTTP  binds http_port
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path
import pytest

from bert_serving.server.keygen import write_keypair
from bert_serving.server.security import AUTHORIZED_DIR, WORKERS_DIR

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / 'service'))  # service_support, by name
from service.conftest import fake_vectors, launch, raw_peer, server_factory  # noqa: E402,F401 - fixtures
from service_support import FAKE  # noqa: E402

CLIENTS = ('alice', 'bob')
WORKERS = ('worker',)


@pytest.fixture
def fake_server(launch):  # noqa: F811 - launch is the imported fixture
    """``with fake_server(['-num_worker', '1', ...]) as running:`` -> RunningServer of ``-engine fake``."""
    return lambda flags=(): launch(FAKE, flags)


@pytest.fixture(scope='module')
def keys(tmp_path_factory):
    """``keys / 'dir'`` is an -auth_dir whose authorized/ holds alice and bob (clients) and whose
    authorized_workers/ holds worker; each name's pair is in ``keys / NAME``."""
    root = tmp_path_factory.mktemp('keys')
    write_keypair(root / 'dir', 'server')
    for name, folder in [(c, AUTHORIZED_DIR) for c in CLIENTS] + [(w, WORKERS_DIR) for w in WORKERS]:
        write_keypair(root / name, name)
        shutil.copy(root / name / f'{name}.key', root / 'dir' / folder / f'{name}.key')
    return root

