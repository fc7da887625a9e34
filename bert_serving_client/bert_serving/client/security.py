"""CurveZMQ keys of a connecting peer: a client, a worker, the HTTP proxy, bert-serving-terminate.

A server started with ``-auth_dir`` lets in only peers whose public key it holds. Such a peer needs
three keys, all z85 text (40 characters) as pyzmq's ``zmq.auth`` certificate files hold them:

    server public key    from the server's ``server.key`` (``server_key=``)
    own public key       from the peer's ``NAME.key_secret`` (``client_key=``), which holds both
    own secret key       halves of its pair

Files are read with ``zmq.auth.load_certificate``; the handshake, encryption and authentication are
libzmq's CURVE mechanism. Nothing here is cryptography of our own.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Tuple

import zmq
import zmq.auth
from zmq.utils import z85

from .errors import BertServingError, KeyFileError

__all__ = ['CurveKeys', 'KeyFileError', 'load_public_key', 'load_keypair', 'secure_client_socket',
           'ENV_SERVER_KEY', 'ENV_CLIENT_KEY']

# Used when BertClient gets no server_key / client_key: keys for scripts that must not change.
ENV_SERVER_KEY = 'BERT_SERVING_SERVER_KEY'
ENV_CLIENT_KEY = 'BERT_SERVING_CLIENT_KEY'
KEY_LENGTH = 40  # z85 text of a 32-byte Curve25519 key


def _check_key(key: bytes, path, what: str) -> bytes:
    try:
        if len(key) != KEY_LENGTH or len(z85.decode(key)) != 32:
            raise ValueError
    except (ValueError, KeyError):  # z85.decode raises KeyError on a character outside its alphabet
        raise KeyFileError(f'{path}: the {what} is not a 40-character z85 Curve key; write the file with '
                           '`bert-serving-keygen DIR NAME`') from None
    return key


def _read(path, role: str) -> Tuple[bytes, Optional[bytes]]:
    try:
        return zmq.auth.load_certificate(os.fspath(path))
    except OSError as e:
        raise KeyFileError(f'{role}: cannot read the key file {path} ({e}); check the path and its '
                           'permissions') from e
    except ValueError as e:  # no public-key line: not a certificate file at all
        raise KeyFileError(f'{role}: {path} is not a ZeroMQ certificate ({e}); give a file written by '
                           '`bert-serving-keygen`') from e


def load_public_key(path, role: str = 'server_key') -> bytes:
    """The public key (z85 bytes) of a public ``.key`` certificate.

    Args:
        path: a ``NAME.key`` file.
        role: the option that named the file, for the error message.

    Raises:
        KeyFileError: the file is missing or unreadable, is no certificate, or holds a secret key
            (a ``.key_secret`` never leaves its owner; give its ``.key`` twin instead).
    """
    public, secret = _read(path, role)
    if secret is not None:
        raise KeyFileError(f'{role}: {path} holds a secret key; give the public certificate (the .key file '
                           'beside it) instead, and keep the .key_secret file on the machine it belongs to')
    return _check_key(public, path, 'public key')


def load_keypair(path, role: str = 'client_key') -> Tuple[bytes, bytes]:
    """(public, secret) z85 keys of a ``.key_secret`` certificate.

    Raises:
        KeyFileError: the file is missing or unreadable, is no certificate, or holds only a public key.
    """
    public, secret = _read(path, role)
    if secret is None:
        raise KeyFileError(f'{role}: {path} is a public certificate without a secret key; give the '
                           '.key_secret file of this pair (written beside it by `bert-serving-keygen`)')
    return _check_key(public, path, 'public key'), _check_key(secret, path, 'secret key')


@dataclass(frozen=True)
class CurveKeys:
    """What a connecting socket needs to pass a server's CurveZMQ check. z85 text, 40 characters each.

    Attributes:
        server_public: the server's public key.
        public, secret: this peer's own pair; ``public`` must be in the server's ``authorized/``.
    """
    server_public: str
    public: str
    secret: str

    def __post_init__(self):
        for name in ('server_public', 'public', 'secret'):
            value = getattr(self, name)
            if isinstance(value, bytes):
                value = value.decode('ascii')
                object.__setattr__(self, name, value)
            _check_key(value.encode('ascii'), f'CurveKeys.{name}', 'key')

    def __repr__(self) -> str:  # never print a secret into a log
        return f'CurveKeys(server_public={self.server_public!r}, public={self.public!r}, secret=...)'

    @classmethod
    def from_files(cls, server_key=None, client_key=None) -> Optional['CurveKeys']:
        """Reads the keys from ``server_key`` (the server's ``.key``) and ``client_key`` (this peer's
        ``.key_secret``); a path left None comes from ``$BERT_SERVING_SERVER_KEY`` /
        ``$BERT_SERVING_CLIENT_KEY``.

        Returns:
            None when neither is given anywhere: the connection is plain, as with 1.10.

        Raises:
            KeyFileError: only one of the two is given, or a file is wrong (see the loaders).
        """
        server_key = server_key or os.environ.get(ENV_SERVER_KEY) or None
        client_key = client_key or os.environ.get(ENV_CLIENT_KEY) or None
        if server_key is None and client_key is None:
            return None
        if server_key is None or client_key is None:
            given, missing = ('client_key', 'server_key') if server_key is None else ('server_key', 'client_key')
            raise KeyFileError(f'{given} is set but {missing} is not: a CurveZMQ connection needs both, the '
                               'server\'s public server.key (server_key=, or $BERT_SERVING_SERVER_KEY) and this '
                               'client\'s NAME.key_secret (client_key=, or $BERT_SERVING_CLIENT_KEY)')
        public, secret = load_keypair(client_key, 'client_key')
        return cls(load_public_key(server_key, 'server_key'), public, secret)


def secure_client_socket(sock: zmq.Socket, keys: Optional[CurveKeys]) -> None:
    """Makes ``sock`` a CURVE client of the server ``keys`` names; call it before ``connect``.
    ``keys=None`` leaves the socket plain (a server without ``-auth_dir``).

    Raises:
        BertServingError: libzmq was built without CURVE (pyzmq's wheels have it).
    """
    if keys is None:
        return
    if not zmq.has('curve'):
        raise BertServingError(f'this libzmq ({zmq.zmq_version()}) has no CURVE support, so it cannot connect '
                               'to a server started with -auth_dir; install pyzmq from its wheels')
    sock.curve_serverkey = keys.server_public.encode('ascii')
    sock.curve_publickey = keys.public.encode('ascii')
    sock.curve_secretkey = keys.secret.encode('ascii')
