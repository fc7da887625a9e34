"""CurveZMQ on loopback: security.py binds sockets the way the server does, with no server running.

``CurveFake`` stands where the ventilator and the sink stand::

    PULL  binds tcp://127.0.0.1:port      secure_server_socket + the context's authenticator
    XPUB  binds tcp://127.0.0.1:port_out  the same

Real BertClient / ConcurrentBertClient connect to it with and without keys. A peer the server does
not know must get nothing: every such test waits a bounded time and asserts that no message (no
request, no subscription) reached the fake.
"""
from __future__ import annotations

import os
import shutil
import stat
import threading
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import zmq

from bert_serving.client import BertClient, BertTimeoutError, ConcurrentBertClient
from bert_serving.client.protocol import Command, pack_json_reply, pack_request, pack_result, unpack_request
from bert_serving.client.security import load_keypair, load_public_key
from bert_serving.server.cli import keygen
from bert_serving.server.errors import ConfigError
from bert_serving.server.keygen import write_keypair
from bert_serving.server.log import redact_args
from bert_serving.server.pipeline.peers import is_loopback_address, may_terminate, peer_of
from bert_serving.server.security import (AUTHORIZED_DIR, AuthConfig, CurveKeys, authenticator, bind_address,
                                          local_peer_keys, secure_client_socket, secure_server_socket)

WAIT_SECONDS = 10.0  # the most any wait for something that must happen may take
NOTHING_MS = 1500  # how long a refused peer is watched; nothing may arrive in that time
WIDTH = 4


@pytest.fixture(autouse=True)
def no_leaked_threads():
    """Every authenticator and fake stops with its test."""
    before = set(threading.enumerate())
    yield
    left = [t for t in threading.enumerate() if t not in before]
    for t in left:
        t.join(WAIT_SECONDS)
    assert not [t for t in left if t.is_alive()], f'threads left running: {left}'


@pytest.fixture
def auth_dir(tmp_path) -> Path:
    """An -auth_dir with the server's pair and one authorized client, alice; bob's pair is unknown."""
    folder = tmp_path / 'auth'
    write_keypair(folder, 'server')
    write_keypair(tmp_path / 'alice', 'alice')
    (tmp_path / 'alice' / 'alice.key').rename(folder / AUTHORIZED_DIR / 'alice.key')
    write_keypair(tmp_path / 'bob', 'bob')
    return folder


def client_keys(auth_dir: Path, name: str) -> dict:
    return {'server_key': str(auth_dir / 'server.key'),
            'client_key': str(auth_dir.parent / name / f'{name}.key_secret')}


class CurveFake:
    """A server stand-in whose two TCP sockets are secured by security.py; records what arrives.

    Attributes:
        requests: every request that passed the handshake (``protocol.Request``).
        first_frames: the first frame (a ``zmq.Frame``, with its metadata) of each request.
        subscriptions: identities that subscribed on the XPUB.
    """

    def __init__(self, auth: AuthConfig, port: int, port_out: int, extra_public_keys=()):
        self.auth, self.port, self.port_out, self.extra = auth, port, port_out, extra_public_keys
        self.requests, self.first_frames, self.subscriptions = [], [], set()
        self._stop, self._ready = threading.Event(), threading.Event()
        self._error = None
        self._thread = threading.Thread(target=self._run, name='curve-fake')

    def __enter__(self) -> 'CurveFake':
        self._thread.start()
        assert self._ready.wait(WAIT_SECONDS), 'the fake did not bind in time'
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(WAIT_SECONDS)
        assert not self._thread.is_alive()

    def _run(self):
        try:
            with zmq.Context() as ctx, authenticator(ctx, self.auth, self.extra):
                pull, xpub = ctx.socket(zmq.PULL), ctx.socket(zmq.XPUB)
                try:
                    for sock, port in ((pull, self.port), (xpub, self.port_out)):
                        sock.linger = 0
                        secure_server_socket(sock, self.auth)
                        sock.bind(bind_address(self.auth, port))
                    self._ready.set()
                    self._serve(pull, xpub)
                finally:
                    pull.close()
                    xpub.close()
        except Exception as e:  # noqa: BLE001 - reported in the test's thread
            self._error = e
            self._ready.set()

    def _serve(self, pull, xpub):
        poller = zmq.Poller()
        poller.register(pull, zmq.POLLIN)
        poller.register(xpub, zmq.POLLIN)
        held = []
        while not self._stop.is_set():
            events = dict(poller.poll(50))
            if xpub in events:
                event = xpub.recv()
                if event[:1] == b'\x01':
                    self.subscriptions.add(event[1:])
            if pull in events:
                frames = pull.recv_multipart(copy=False)
                self.first_frames.append(frames[0])
                request = unpack_request([f.bytes for f in frames])
                self.requests.append(request)
                held.append(request)
            for request in [r for r in held if r.identity in self.subscriptions]:
                held.remove(request)
                xpub.send_multipart(self._answer(request))

    @staticmethod
    def _answer(request):
        if request.command is not None:
            return pack_json_reply(request.identity, request.req_id, {'max_seq_len': 25, 'protocol_version': 1})
        n = request.msg_len
        return pack_result(request.identity, request.req_id, np.full((n, WIDTH), 7, dtype=np.float32))


@pytest.fixture
def curve_fake(auth_dir, pick_port):
    """``with curve_fake() as fake:`` a CurveFake of ``auth_dir`` on two free loopback ports."""
    def start(**kwargs) -> CurveFake:
        auth = AuthConfig(str(auth_dir), bind_host='127.0.0.1', **kwargs.pop('config', {}))
        return CurveFake(auth, pick_port(), pick_port(), **kwargs)
    return start


def connect(fake: CurveFake, **kwargs) -> BertClient:
    kwargs.setdefault('timeout', int(WAIT_SECONDS * 1000))
    return BertClient(ip='127.0.0.1', port=fake.port, port_out=fake.port_out, **kwargs)


# -- the round trip ----------------------------------------------------------------------------------
def test_an_authorized_client_is_served(curve_fake, auth_dir):
    with curve_fake() as fake, connect(fake, **client_keys(auth_dir, 'alice')) as bc:
        vectors = bc.encode(['hello world', 'second'])
        assert vectors.shape == (2, WIDTH) and (vectors == 7).all()
        assert bc.server_status['max_seq_len'] == 25


def test_concurrent_client_passes_the_keys_to_every_client(curve_fake, auth_dir):
    with curve_fake() as fake:
        with ConcurrentBertClient(max_concurrency=3, ip='127.0.0.1', port=fake.port, port_out=fake.port_out,
                                  timeout=int(WAIT_SECONDS * 1000), **client_keys(auth_dir, 'alice')) as pool:
            assert pool.encode(['a b c']).shape == (1, WIDTH)
        assert len({r.identity for r in fake.requests}) == 3  # each client made its own handshake


def test_the_keys_may_come_from_the_environment(curve_fake, auth_dir, monkeypatch):
    keys = client_keys(auth_dir, 'alice')
    monkeypatch.setenv('BERT_SERVING_SERVER_KEY', keys['server_key'])
    monkeypatch.setenv('BERT_SERVING_CLIENT_KEY', keys['client_key'])
    with curve_fake() as fake, connect(fake) as bc:
        assert bc.encode(['x']).shape == (1, WIDTH)


@pytest.mark.parametrize('who', ['unknown key', 'no key'])
def test_a_stranger_gets_nothing_through(curve_fake, auth_dir, who):
    keys = client_keys(auth_dir, 'bob') if who == 'unknown key' else {}
    with curve_fake() as fake:
        with connect(fake, ignore_all_checks=True, timeout=NOTHING_MS, **keys) as bc:
            with pytest.raises(BertTimeoutError, match='server_key'):
                bc.encode(['let me in'])
        with zmq.Context() as ctx, ctx.socket(zmq.PUSH) as raw:  # its TERMINATE never arrives either
            raw.linger = 0
            if keys:
                secure_client_socket(raw, CurveKeys.from_files(**keys))
            raw.connect(f'tcp://127.0.0.1:{fake.port}')
            raw.send_multipart(pack_request(b'stranger', Command.TERMINATE, 0, 0))  # queued, never delivered
            threading.Event().wait(NOTHING_MS / 1000)
        assert fake.requests == [] and fake.subscriptions == set()


def test_a_client_cannot_pass_the_handshake_with_a_wrong_server_key(curve_fake, auth_dir, tmp_path):
    write_keypair(tmp_path / 'impostor', 'server')
    keys = dict(client_keys(auth_dir, 'alice'), server_key=str(tmp_path / 'impostor' / 'server.key'))
    with curve_fake() as fake, connect(fake, ignore_all_checks=True, timeout=NOTHING_MS, **keys) as bc:
        with pytest.raises(BertTimeoutError):
            bc.encode(['x'])
    assert fake.requests == []


def test_a_key_added_to_authorized_counts_from_the_next_connection(curve_fake, auth_dir):
    with curve_fake() as fake:
        with connect(fake, ignore_all_checks=True, timeout=NOTHING_MS, **client_keys(auth_dir, 'bob')) as bc:
            with pytest.raises(BertTimeoutError):
                bc.encode(['before'])
        (auth_dir.parent / 'bob' / 'bob.key').rename(auth_dir / AUTHORIZED_DIR / 'bob.key')
        with connect(fake, **client_keys(auth_dir, 'bob')) as bc:
            assert bc.encode(['after']).shape == (1, WIDTH)


def test_the_servers_own_in_memory_peer_is_let_in(curve_fake, auth_dir):
    keys = local_peer_keys(AuthConfig(str(auth_dir)))
    assert keys.server_public.encode() == load_public_key(auth_dir / 'server.key')
    with curve_fake(extra_public_keys=(keys.public,)) as fake, zmq.Context() as ctx:
        push, sub = ctx.socket(zmq.PUSH), ctx.socket(zmq.SUB)
        try:
            for sock in (push, sub):
                sock.linger = 0
                secure_client_socket(sock, keys)
            sub.subscribe(b'proxy')
            sub.connect(f'tcp://127.0.0.1:{fake.port_out}')
            push.connect(f'tcp://127.0.0.1:{fake.port}')
            push.send_multipart(pack_request(b'proxy', b'["a"]', 1, 1))
            assert sub.poll(WAIT_SECONDS * 1000), 'the proxy-like peer got no reply'
            assert sub.recv_multipart()[0] == b'proxy'
        finally:
            push.close()
            sub.close()


def test_plain_ipc_sockets_keep_working_beside_the_authenticator(auth_dir, tmp_path):
    # The pipeline's ventilator/worker/sink sockets are ipc:// and stay plain in the same context.
    with zmq.Context() as ctx, authenticator(ctx, AuthConfig(str(auth_dir))):
        pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
        try:
            pull.bind(f'ipc://{tmp_path}/backend')
            push.connect(f'ipc://{tmp_path}/backend')
            push.send(b'batch')
            assert pull.poll(WAIT_SECONDS * 1000) and pull.recv() == b'batch'
        finally:
            push.close(0)
            pull.close(0)


def test_terminate_from_loopback_and_who_sent_it(curve_fake, auth_dir):
    with curve_fake() as fake, connect(fake, **client_keys(auth_dir, 'alice')):
        frame = fake.first_frames[0]
    alice_public, _ = load_keypair(auth_dir.parent / 'alice' / 'alice.key_secret')
    assert peer_of(frame) == f'key {alice_public.decode()} from 127.0.0.1'
    assert may_terminate(AuthConfig(allow_remote_terminate=False), frame)
    assert may_terminate(AuthConfig(), b'no metadata')
    assert not may_terminate(AuthConfig(allow_remote_terminate=False), b'no metadata')


@pytest.mark.parametrize('address, loopback', [('127.0.0.1', True), ('127.8.9.10', True), ('::1', True),
                                               ('::ffff:127.0.0.1', True), ('10.1.2.3', False),
                                               ('198.18.0.2', False), ('fe80::1%eth0', False), ('', False),
                                               ('not an address', False)])
def test_only_loopback_counts_as_local(address, loopback):
    assert is_loopback_address(address) is loopback


def test_a_secured_socket_needs_a_running_authenticator(auth_dir):
    # Without a ZAP handler libzmq would let any key in: refuse to secure such a socket.
    with zmq.Context() as ctx, ctx.socket(zmq.PULL) as sock:
        with pytest.raises(RuntimeError, match='authenticator'):
            secure_server_socket(sock, AuthConfig(str(auth_dir)))


def test_without_auth_dir_sockets_stay_plain():
    with zmq.Context() as ctx, ctx.socket(zmq.PULL) as sock:
        secure_server_socket(sock, AuthConfig())
        assert sock.curve_server == 0 and sock.mechanism == zmq.NULL


# -- configuration ------------------------------------------------------------------------------------
def test_auth_config_from_flags(auth_dir):
    auth = AuthConfig.from_namespace(Namespace(auth_dir=str(auth_dir), bind_host='127.0.0.1',
                                               no_remote_terminate=True))
    assert (auth.enabled, auth.bind_host, auth.allow_remote_terminate) == (True, '127.0.0.1', False)
    assert AuthConfig.from_namespace(Namespace()) == AuthConfig(None, '*', True)
    assert len(auth.authorized_keys()) == 1


@pytest.mark.parametrize('breakage, message', [
    (lambda d: d.rename(d.with_name('gone')), 'is not a folder'),
    (lambda d: (d / 'server.key_secret').unlink(), 'server.key_secret is missing'),
    (lambda d: (d / 'server.key').replace(d / 'server.key_secret'), 'public certificate without a secret'),
    (lambda d: (d / AUTHORIZED_DIR / 'alice.key').unlink(), 'holds no public key'),
    (lambda d: [p.unlink() for p in (d / AUTHORIZED_DIR).iterdir()] and (d / AUTHORIZED_DIR).rmdir(),
     'authorized is missing'),
    (lambda d: (d / AUTHORIZED_DIR / 'x.key').write_text('hello'), 'not a ZeroMQ certificate'),
    (lambda d: shutil.copy(d / 'server.key_secret', d / AUTHORIZED_DIR / 'oops.key'), 'holds a secret key'),
])
def test_a_broken_auth_dir_says_what_to_fix(auth_dir, breakage, message):
    breakage(auth_dir)
    with pytest.raises(ConfigError, match=message):
        AuthConfig(str(auth_dir))


@pytest.mark.parametrize('host', ['', ' ', 'tcp://0.0.0.0', 'a b'])
def test_a_malformed_bind_host_is_refused(host):
    with pytest.raises(ConfigError, match='-bind'):
        AuthConfig(bind_host=host)


def test_bind_address():
    assert bind_address(AuthConfig(), 5555) == 'tcp://*:5555'
    assert bind_address(AuthConfig(bind_host='127.0.0.1'), 1) == 'tcp://127.0.0.1:1'
    assert bind_address(AuthConfig(bind_host='::1'), 2) == 'tcp://[::1]:2'
    assert bind_address(AuthConfig(bind_host='[::1]'), 3) == 'tcp://[::1]:3'
    assert bind_address(AuthConfig(bind_host='eth0'), 4) == 'tcp://eth0:4'


def test_an_ipv6_bind_host_turns_ipv6_on():
    with zmq.Context() as ctx, ctx.socket(zmq.PULL) as sock:
        secure_server_socket(sock, AuthConfig(bind_host='::1'))
        assert sock.ipv6 == 1


def test_secret_flags_are_redacted():
    flags = {'http_token': 's3cret', 'port': 5555, 'auth_dir': '/etc/bert'}
    assert redact_args(flags) == {'http_token': '***', 'port': 5555, 'auth_dir': '/etc/bert'}
    assert redact_args({'http_token': None}) == {'http_token': None}


def test_curve_keys_never_print_the_secret(auth_dir):
    keys = local_peer_keys(AuthConfig(str(auth_dir)))
    assert keys.secret not in repr(keys) and keys.public in repr(keys)


# -- bert-serving-keygen ------------------------------------------------------------------------------
def test_keygen_writes_a_pair_and_says_where_it_goes(tmp_path, capsys):
    assert keygen([str(tmp_path / 'keys'), 'server']) == 0
    out = capsys.readouterr().out
    public, secret = tmp_path / 'keys' / 'server.key', tmp_path / 'keys' / 'server.key_secret'
    assert str(public) in out and str(secret) in out and 'stays on the server' in out
    assert (tmp_path / 'keys' / AUTHORIZED_DIR).is_dir()
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(public).st_mode) == 0o644
    pair = load_keypair(secret)
    assert load_public_key(public) == pair[0]

    assert keygen([str(tmp_path / 'keys'), 'alice']) == 0
    out = capsys.readouterr().out
    assert 'authorized/' in out and 'alice.key_secret' in out and 'server.key' in out
    assert not (tmp_path / 'keys' / 'alice').exists()


@pytest.mark.parametrize('name', ['server', '../evil', '.hidden', ''])
def test_keygen_refuses_to_overwrite_or_escape(tmp_path, capsys, name):
    assert keygen([str(tmp_path), 'server']) == 0
    before = (tmp_path / 'server.key_secret').read_bytes()
    capsys.readouterr()
    assert keygen([str(tmp_path), name]) == 2
    assert 'bert-serving-keygen:' in capsys.readouterr().err
    assert (tmp_path / 'server.key_secret').read_bytes() == before
    assert not (tmp_path.parent / 'evil.key').exists()
