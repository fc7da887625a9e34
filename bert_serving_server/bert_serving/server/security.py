"""CurveZMQ on the server's TCP sockets and the bind address (keys are written by ``keygen``; who may
send TERMINATE is ``pipeline.peers``).

Without ``-auth_dir`` nothing changes: sockets are plain, as in 1.10. With ``-auth_dir DIR`` every
TCP socket the server binds (the ventilator's client PULL, the sink's XPUB, the worker ports) is a
CURVE server: traffic is encrypted and only peers whose public key the server holds get through the
handshake. A peer without keys, or with a key not in ``DIR/authorized/``, gets no data, no status,
and its TERMINATE never arrives. ``DIR`` holds (``bert-serving-keygen DIR NAME`` writes the pairs)::

    server.key_secret            the server's own pair; stays on the server
    server.key                   its public half, handed to every client and worker (the server does not read it)
    authorized/*.key             the public keys of clients, one file per client or team
    authorized_workers/*.key     the public keys of remote workers (bert-serving-worker)

Clients and workers are apart: the client ports (``port``, ``port_out``) are the ZAP domain
``bert-serving`` and take keys of ``authorized/`` only; the worker ports (``port_worker``,
``port_worker_sink``) are the domain ``bert-serving-workers`` and take keys of
``authorized_workers/`` only. A client key cannot pose as a worker, nor a worker key as a client
(unless the operator puts one key in both folders).

Each process whose context binds such sockets runs one ZAP handler, pyzmq's ThreadAuthenticator
(:func:`authenticator`). It reads ``authorized/`` again at every new connection: a key added or
removed counts from the next connection on, without a restart; a connection already made stays
until it closes (restart the server to cut it). It fails closed: every secured socket sets
``ZAP_ENFORCE_DOMAIN``, so libzmq refuses all peers if the handler is gone, and
:func:`secure_server_socket` refuses a context whose handler is not running.

The ipc:// sockets between the ventilator, the workers and the sink stay plain: they never leave the
machine, and they are not in the ZAP domain, so the handler never sees them.
"""
from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional, Tuple

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from bert_serving.client.errors import KeyFileError
from bert_serving.client.security import CurveKeys, load_keypair, load_public_key, secure_client_socket

from .config import ServerConfig
from .errors import ConfigError

__all__ = ['AuthConfig', 'CurveKeys', 'authenticator', 'start_authenticator', 'secure_server_socket',
           'secure_client_socket', 'bind_address', 'ephemeral_keypair', 'local_peer_keys', 'SERVER_SECRET_FILE',
           'AUTHORIZED_DIR', 'ZAP_DOMAIN', 'WORKERS_DIR', 'WORKER_DOMAIN']

SERVER_SECRET_FILE = 'server.key_secret'
AUTHORIZED_DIR = 'authorized'
WORKERS_DIR = 'authorized_workers'
ZAP_DOMAIN = 'bert-serving'  # the client ports
WORKER_DOMAIN = 'bert-serving-workers'  # the worker ports
MAX_LOGGED_REFUSALS = 1000  # distinct refused keys logged; a peer retrying every 100 ms is logged once

_logger = logging.getLogger(__name__)
_running: 'weakref.WeakKeyDictionary[zmq.Context, ThreadAuthenticator]' = weakref.WeakKeyDictionary()
_running_lock = threading.Lock()


def _bare_host(host: str) -> str:
    return host[1:-1] if host.startswith('[') and host.endswith(']') else host


def _is_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(_bare_host(host)).version == 6
    except ValueError:
        return False


@dataclass(frozen=True)
class AuthConfig:
    """Who may reach the server's TCP sockets.

    Attributes:
        auth_dir: the ``-auth_dir`` folder (layout in the module docstring); None: no CurveZMQ.
        bind_host: the interface the TCP sockets bind (``-bind``): ``*`` for all (1.10's choice),
            an address such as ``127.0.0.1`` or ``::1``, or an interface name such as ``eth0``.
        allow_remote_terminate: False: a TERMINATE that comes from anywhere but this machine's
            loopback is ignored (see :func:`may_terminate`). :meth:`from_server` makes it False
            with ``-auth_dir`` unless ``-remote_terminate`` is given, and with ``-no_remote_terminate``.

    Raises:
        ConfigError: the bind host is malformed; with ``auth_dir``: libzmq lacks CURVE, the folder
            or ``server.key_secret`` is missing or wrong, or ``authorized/`` holds no public key.
    """
    auth_dir: Optional[str] = None
    bind_host: str = '*'
    allow_remote_terminate: bool = True

    def __post_init__(self):
        host = self.bind_host
        if not isinstance(host, str) or not host.strip() or '://' in host or any(c.isspace() for c in host):
            raise ConfigError(f'-bind takes one host: *, an address such as 127.0.0.1, or an interface name '
                              f'such as eth0; got {host!r}')
        if self.auth_dir is not None:
            object.__setattr__(self, 'auth_dir', os.fspath(self.auth_dir))
            self._check_auth_dir()

    @property
    def enabled(self) -> bool:
        """Whether the TCP sockets use CurveZMQ."""
        return self.auth_dir is not None

    @property
    def server_secret_path(self) -> Path:
        return Path(self.auth_dir) / SERVER_SECRET_FILE

    @property
    def authorized_path(self) -> Path:
        return Path(self.auth_dir) / AUTHORIZED_DIR

    @property
    def workers_path(self) -> Path:
        return Path(self.auth_dir) / WORKERS_DIR

    def _check_auth_dir(self) -> None:
        if not zmq.has('curve'):
            raise ConfigError(f'-auth_dir needs a libzmq with CURVE; this one ({zmq.zmq_version()}) has none. '
                              'Install pyzmq from its wheels, which bundle libzmq with libsodium')
        folder = Path(self.auth_dir)
        if not folder.is_dir():
            raise ConfigError(f'-auth_dir {folder} is not a folder; create it with '
                              f'`bert-serving-keygen {folder} server`')
        if not self.server_secret_path.is_file():
            raise ConfigError(f'-auth_dir: {self.server_secret_path} is missing; write the server\'s pair with '
                              f'`bert-serving-keygen {folder} server`')
        self.server_keypair()
        if not self.authorized_path.is_dir():
            raise ConfigError(f'-auth_dir: the folder {self.authorized_path} is missing; create it and copy '
                              'into it the public NAME.key of every client and worker to let in')
        if not self.authorized_keys():
            raise ConfigError(f'-auth_dir: {self.authorized_path} holds no public key (*.key), so nobody could '
                              'connect; write a pair with `bert-serving-keygen DIR NAME` and copy NAME.key there')

    def server_keypair(self) -> Tuple[bytes, bytes]:
        """The server's (public, secret) z85 keys from ``server.key_secret``.

        Raises:
            ConfigError: the file is unreadable or holds no secret key.
        """
        try:
            return load_keypair(self.server_secret_path, '-auth_dir')
        except KeyFileError as e:
            raise ConfigError(str(e)) from e

    def authorized_keys(self, folder: str = AUTHORIZED_DIR) -> frozenset:
        """The public z85 keys of ``authorized/*.key`` (or of ``authorized_workers/*.key``), read now;
        empty if the folder does not exist.

        Raises:
            ConfigError: a file there is unreadable, not a certificate, or holds a secret key.
        """
        keys = set()
        for path in sorted((Path(self.auth_dir) / folder).glob('*.key')):
            try:
                keys.add(load_public_key(path, f'-auth_dir {folder}/'))
            except KeyFileError as e:
                raise ConfigError(str(e)) from e
        return frozenset(keys)

    def worker_keys(self) -> frozenset:
        """The public z85 keys of ``authorized_workers/*.key``, read now (see :meth:`authorized_keys`)."""
        return self.authorized_keys(WORKERS_DIR)

    def check_worker_keys(self) -> None:
        """For a server that takes remote workers: with ``auth_dir``, at least one worker key.

        Raises:
            ConfigError: ``authorized_workers/`` is missing or holds no public key.
        """
        if self.enabled and not self.worker_keys():
            raise ConfigError(f'-auth_dir with -port_worker: {self.workers_path} holds no public key (*.key), so no '
                              'remote worker could join. Worker keys live apart from client keys: write a pair '
                              'with `bert-serving-keygen DIR NAME` and copy NAME.key into that folder')

    @classmethod
    def from_server(cls, server: ServerConfig) -> 'AuthConfig':
        """Takes ``-auth_dir``, ``-bind``, ``-remote_terminate`` and ``-no_remote_terminate`` from the
        server's config.

        Remote TERMINATE: without ``-auth_dir`` it is obeyed from anyone, as in 1.10, unless
        ``-no_remote_terminate``; with ``-auth_dir`` (a server shared between keys) only with
        ``-remote_terminate``, so that no authorised client can stop everyone's server.
        """
        return cls(auth_dir=server.auth_dir, bind_host=server.bind_host or '*',
                   allow_remote_terminate=not server.no_remote_terminate and (
                       server.auth_dir is None or server.remote_terminate))

    @classmethod
    def from_namespace(cls, args) -> 'AuthConfig':
        """:meth:`from_server` of parsed flags (absent ones keep their defaults).

        Raises:
            ConfigError: both ``-remote_terminate`` and ``-no_remote_terminate`` are given.
        """
        return cls.from_server(ServerConfig.from_namespace(args))

class _KeyRing:
    """pyzmq's credentials provider: a key is let in if it is in ``authorized/`` now, or one of the
    server's own in-memory keys (its HTTP proxy's). Never raises: an exception would end the ZAP
    thread, and a refusal is the only safe answer to a question it cannot answer."""

    def __init__(self, auth: AuthConfig, extra_public_keys: Iterable, folder: str = AUTHORIZED_DIR):
        self.auth = auth
        self.folder = folder
        self.extra = frozenset(k.encode('ascii') if isinstance(k, str) else bytes(k) for k in extra_public_keys)
        self.logged: set = set()  # what was logged already: each refused key, each broken file, once

    def _log_once(self, what, message: str, *args) -> None:
        if what not in self.logged and len(self.logged) < MAX_LOGGED_REFUSALS:
            self.logged.add(what)
            _logger.warning(message, *args)

    def callback(self, domain: str, key: bytes) -> bool:
        try:
            if key in self.extra or key in self.auth.authorized_keys(self.folder):
                return True
            self._log_once(key, 'refused a connection with the unknown key %s: it is not in %s',
                           key.decode('ascii', 'replace'), Path(self.auth.auth_dir) / self.folder)
        except Exception as e:  # noqa: BLE001 - see the class docstring
            self._log_once(str(e), 'refused a connection: %s', e)
        return False


def start_authenticator(ctx: zmq.Context, auth: AuthConfig, extra_public_keys: Iterable = ()):
    """Starts the ZAP handler of ``ctx`` (one per context); call it before binding any secured socket,
    and ``stop()`` the result before terminating the context. :func:`authenticator` does both.

    Args:
        ctx: the context whose sockets :func:`secure_server_socket` secures.
        auth: the config; nothing is started without ``auth_dir``.
        extra_public_keys: z85 public keys let in besides ``authorized/`` (e.g. the server's HTTP proxy,
            see :func:`local_peer_keys`).

    Returns:
        The running ThreadAuthenticator, or None when CurveZMQ is off.
    """
    if not auth.enabled:
        return None
    with _running_lock:
        if ctx in _running and _running[ctx].is_alive():
            raise RuntimeError('this context already has a running authenticator; start one per context')
        handler = ThreadAuthenticator(ctx, log=logging.getLogger(__name__ + '.zap'))
        handler.start()
        handler.configure_curve_callback(ZAP_DOMAIN, _KeyRing(auth, extra_public_keys))
        handler.configure_curve_callback(WORKER_DOMAIN, _KeyRing(auth, (), WORKERS_DIR))
        _running[ctx] = handler
    return handler


@contextlib.contextmanager
def authenticator(ctx: zmq.Context, auth: AuthConfig, extra_public_keys: Iterable = ()) -> Iterator:
    """``with zmq.Context() as ctx, authenticator(ctx, auth, keys):`` runs the ZAP handler of ``ctx``
    while the block runs (nothing without ``auth_dir``), and stops it before the context ends."""
    handler = start_authenticator(ctx, auth, extra_public_keys)
    try:
        yield handler
    finally:
        if handler is not None:
            with _running_lock:
                _running.pop(ctx, None)
            handler.stop()


def secure_server_socket(sock: zmq.Socket, auth: AuthConfig, domain: str = ZAP_DOMAIN) -> None:
    """Prepares a socket that binds a TCP port; call it before ``bind(bind_address(auth, port))``.

    Sets IPV6 for an IPv6 bind host, and with ``auth_dir`` makes the socket a CURVE server with the
    server's secret key, checked by the context's ZAP handler in ``domain``: ZAP_DOMAIN (clients,
    ``authorized/``) or WORKER_DOMAIN (remote workers, ``authorized_workers/``).

    Raises:
        RuntimeError: ``auth_dir`` is set and ``sock``'s context runs no authenticator: without one,
            libzmq would let every peer in (it refuses them all here, and so do we, loudly).
        ConfigError: ``server.key_secret`` became unreadable.
    """
    if _is_ipv6(auth.bind_host):
        sock.ipv6 = True
    if not auth.enabled:
        return
    with _running_lock:
        handler = _running.get(sock.context)
    if handler is None or not handler.is_alive():
        raise RuntimeError('secure_server_socket: the socket\'s context has no running authenticator; '
                           'enter security.authenticator(ctx, auth, ...) before creating its TCP sockets')
    public, secret = auth.server_keypair()
    sock.zap_domain = domain.encode('ascii')
    sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)  # no ZAP handler answering: refuse, never let in
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True


def bind_address(auth: AuthConfig, port: int) -> str:
    """``tcp://HOST:PORT`` for the bind host (IPv6 addresses in brackets)."""
    host = auth.bind_host
    if _is_ipv6(host) and not host.startswith('['):
        host = f'[{host}]'
    return f'tcp://{host}:{int(port)}'


def ephemeral_keypair() -> Tuple[str, str]:
    """A fresh Curve (public, secret) pair as z85 text; it lives in memory only."""
    public, secret = zmq.curve_keypair()
    return public.decode('ascii'), secret.decode('ascii')


def local_peer_keys(auth: AuthConfig) -> Optional[CurveKeys]:
    """Keys for a peer the server starts itself and connects over TCP (its HTTP proxy): a fresh pair,
    let in by passing ``keys.public`` as ``extra_public_keys`` to every authenticator of the server.
    Hand them to the peer (e.g. in ProxyConfig, over the child's stdin), never on a command line.

    Returns:
        None when CurveZMQ is off.
    """
    if not auth.enabled:
        return None
    public, secret = ephemeral_keypair()
    return CurveKeys(auth.server_keypair()[0].decode('ascii'), public, secret)
