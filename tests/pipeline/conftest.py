"""Fixtures of the pipeline unit tests: a Ventilator in a thread between the test's sockets, and an
-auth_dir with a context that runs its authenticator."""
import functools
import shutil
from types import SimpleNamespace

import pytest
import zmq

from bert_serving.client.security import CurveKeys
from bert_serving.server.keygen import write_keypair
from bert_serving.server.security import AuthConfig, authenticator, secure_server_socket

from ventilator_support import VentilatorHarness


@pytest.fixture
def ventilator(free_port):
    """``ventilator(num_worker=1, remote=False, **Ventilator keywords)`` -> a started VentilatorHarness,
    stopped (and checked to stop) after the test."""
    made = []

    def start(**options) -> VentilatorHarness:
        harness = VentilatorHarness(free_port, **options)
        made.append(harness)
        return harness.start()

    yield start
    for harness in made:
        harness.close()


@pytest.fixture
def curve(tmp_path):
    """An -auth_dir with a client key and two worker keys (``a``, ``b``), and a context that runs its
    authenticator.

    Yields:
        a namespace: ``ctx``, ``auth`` (AuthConfig), ``secure`` (applies Curve to a socket before it
        binds, as BertServer's), ``keys[name]`` (a worker's CurveKeys) and ``key_args(name)`` (its
        ``-server_key``/``-client_key`` flags).
    """
    auth_dir = tmp_path / 'auth'
    write_keypair(auth_dir, 'server')
    server_key = str(auth_dir / 'server.key')
    keys, secrets = {}, {}
    for name, folder in (('client', 'authorized'), ('a', 'authorized_workers'), ('b', 'authorized_workers')):
        public, secret = write_keypair(tmp_path / name, name)
        shutil.copy(public, auth_dir / folder)
        keys[name], secrets[name] = CurveKeys.from_files(server_key, str(secret)), str(secret)
    auth = AuthConfig(auth_dir=str(auth_dir), bind_host='127.0.0.1')
    ctx = zmq.Context()
    with authenticator(ctx, auth):
        yield SimpleNamespace(ctx=ctx, auth=auth, secure=functools.partial(secure_server_socket, auth=auth), keys=keys,
                              key_args=lambda name: ['-server_key', server_key, '-client_key', secrets[name]])
    ctx.term()
