"""The HTTP proxy's configuration: one frozen dataclass, filled in from the server's configs.

Where the proxy listens and how it reaches the server come from ``-bind`` (and ``-http_host``):

    -bind          HTTP listens on (default)   the proxy connects to the ZeroMQ ports at
    *              0.0.0.0                     127.0.0.1
    0.0.0.0 / ::   the same                    127.0.0.1 / ::1
    10.0.0.5, ::1  that address                that address
    eth0, a name   its address, as ZeroMQ      that address
                   resolves it for the ports
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Tuple

import zmq

from bert_serving.client.security import CurveKeys

from ..config import EngineConfig, ServerConfig, field_default
from ..errors import ConfigError
from .auth import SESSION_SECONDS

__all__ = ['ProxyConfig', 'read_token', 'resolve_host', 'proxy_hosts', 'MAX_BODY_BYTES', 'MAX_INPUTS',
           'REQUEST_TIMEOUT_SECONDS', 'STATUS_TIMEOUT_SECONDS', 'HEALTH_CACHE_SECONDS']

# A request body above this is refused with 413 before it is parsed. 16 MiB of JSON is about
# 100k short sentences: far more than one request should carry; send several instead.
MAX_BODY_BYTES = 16 * 1024 * 1024
# Inputs one HTTP request may carry (-http_max_inputs), as OpenAI's embeddings endpoint takes: one
# request of 100k short texts fits in the body limit but would hold the proxy (JSON of the reply)
# and the server's queue for everyone; split jobs are answered in about the same total time.
MAX_INPUTS = field_default(ServerConfig, 'http_max_inputs')
# An encoding request that the server has not answered by then fails with 504, so no HTTP
# client waits forever on a server that died or was restarted.
REQUEST_TIMEOUT_SECONDS = 60.0
# /health, /metrics and /status/server must answer quickly even when the server is gone.
STATUS_TIMEOUT_SECONDS = 5.0
# /health needs no credentials and probes call it often: it answers from a status this old at most,
# so that no number of callers makes the server build more than one SHOW_STATUS reply a second.
HEALTH_CACHE_SECONDS = 1.0


@dataclass(frozen=True)
class ProxyConfig:
    """What the proxy process needs; nothing else of the server's flags crosses to it.

    Attributes:
        http_port: TCP port the proxy listens on.
        port: the server's request port (the ventilator's PULL).
        port_out: the server's result port (the sink's XPUB).
        max_connect: encoding requests in flight before the proxy answers 429 (-http_max_connect).
        cors: value of Access-Control-Allow-Origin (-cors).
        host: address the proxy listens on (-http_host, default the -bind address; see ``proxy_hosts``).
        server_ip: address through which the proxy, beside the server, reaches its ZeroMQ ports.
        request_timeout: seconds an encoding request may wait for the server.
        status_timeout: seconds a status request may wait for the server.
        health_cache_seconds: how long /health reuses the server's status (and its failure).
        max_body_bytes: largest request body accepted.
        max_inputs: most inputs (texts) in one request (-http_max_inputs); more get 413.
        token: the bearer token every endpoint but /health needs (-http_token); '' for none.
        metrics_public: /metrics needs no token (-metrics_public).
        session_seconds: how long a dashboard sign-in lasts (auth.py).
        secure_cookie: mark the session cookie Secure even on plain HTTP (-http_secure_cookie; it is
            Secure anyway on a request that came over TLS).
        curve_server_key, curve_public_key, curve_secret_key: z85 keys of the proxy's CurveZMQ
            connection to a server with -auth_dir (``security.local_peer_keys``); '' for a plain one.
        vocab_file: the model's WordPiece vocabulary, with which the proxy counts the tokens of
            /v1/embeddings (usage.py); '' with the fake engine.
        do_lower_case, max_seq_len: the server's tokenizer flags, for the same count.
        max_position_embeddings: the model's position limit, which bounds -max_seq_len NONE.
        verbose: debug logging, including an access log.
        parent_pid: the server's pid; the proxy stops when its parent changes.
    """
    http_port: int
    port: int
    port_out: int
    max_connect: int = field_default(ServerConfig, 'http_max_connect')
    cors: str = field_default(ServerConfig, 'cors')
    host: str = '0.0.0.0'
    server_ip: str = '127.0.0.1'
    request_timeout: float = REQUEST_TIMEOUT_SECONDS
    status_timeout: float = STATUS_TIMEOUT_SECONDS
    health_cache_seconds: float = HEALTH_CACHE_SECONDS
    max_body_bytes: int = MAX_BODY_BYTES
    max_inputs: int = field_default(ServerConfig, 'http_max_inputs')
    token: str = field(default='', repr=False)
    metrics_public: bool = False
    session_seconds: int = SESSION_SECONDS
    secure_cookie: bool = False
    curve_server_key: str = ''
    curve_public_key: str = ''
    curve_secret_key: str = field(default='', repr=False)
    vocab_file: str = ''
    do_lower_case: bool = True
    max_seq_len: Optional[int] = field_default(EngineConfig, 'max_seq_len')
    max_position_embeddings: int = 512
    verbose: bool = False
    parent_pid: int = 0

    def __post_init__(self):
        if self.max_connect < 1:
            raise ConfigError(f'-http_max_connect must be at least 1, got {self.max_connect}')
        if self.max_inputs < 1:
            raise ConfigError(f'-http_max_inputs must be at least 1, got {self.max_inputs}')
        if self.token:
            read_token(self.token)
        self.curve_keys  # all three keys or none, each a z85 key: fail here, not at the first request

    @property
    def curve_keys(self) -> Optional[CurveKeys]:
        """The keys of the proxy's ZeroMQ sockets, or None for plain ones."""
        keys = (self.curve_server_key, self.curve_public_key, self.curve_secret_key)
        if not any(keys):
            return None
        if not all(keys):
            raise ConfigError('curve_server_key, curve_public_key and curve_secret_key go together')
        return CurveKeys(*keys)

    @classmethod
    def from_server(cls, server: ServerConfig, engine: EngineConfig, parent_pid: int = 0,
                    curve_keys: Optional[CurveKeys] = None, vocab_file: str = '',
                    max_position_embeddings: int = 512) -> 'ProxyConfig':
        """Takes the proxy's fields from the server's configs.

        Args:
            server: the server's config (``-http_token`` / ``-http_token_file`` are read here).
            engine: its engine config: the tokenizer flags with which the proxy counts tokens.
            parent_pid: the server's pid.
            curve_keys: the proxy's keys when the server runs with -auth_dir
                (``security.local_peer_keys``).
            vocab_file, max_position_embeddings: of the server's model ('' for the fake engine).

        Raises:
            ConfigError: a token flag is wrong (see ``read_token``), or ``-bind`` / ``-http_host`` names
                no address of this machine.
        """
        if server.http_port is None:
            raise ConfigError('the HTTP proxy needs -http_port')
        token = read_token(server.http_token, server.http_token_file)
        host, server_ip = proxy_hosts(server.bind_host or '*', server.http_host)
        curve = {} if curve_keys is None else {'curve_server_key': curve_keys.server_public,
                                               'curve_public_key': curve_keys.public,
                                               'curve_secret_key': curve_keys.secret}
        return cls(http_port=server.http_port, port=server.port, port_out=server.port_out, host=host,
                   server_ip=server_ip, max_connect=server.http_max_connect, cors=server.cors,
                   max_inputs=server.http_max_inputs, token=token, metrics_public=server.metrics_public,
                   secure_cookie=server.http_secure_cookie, vocab_file=vocab_file,
                   do_lower_case=engine.do_lower_case, max_seq_len=engine.max_seq_len,
                   max_position_embeddings=max_position_embeddings, verbose=server.verbose,
                   parent_pid=parent_pid, **curve)

    @classmethod
    def from_namespace(cls, args, **model) -> 'ProxyConfig':
        """:meth:`from_server` of the server's parsed flags; ``model`` as there."""
        return cls.from_server(ServerConfig.from_namespace(args), EngineConfig.from_namespace(args), **model)

def read_token(token: Optional[str] = None, token_file: Optional[str] = None) -> str:
    """The token of ``-http_token`` or of the first line of ``-http_token_file``; '' when neither is given.

    Raises:
        ConfigError: both are given, the file cannot be read, or the token is empty (an unset shell
            variable must not silently open the proxy) or holds spaces or non-ASCII characters (it
            travels in an HTTP header).
    """
    if token is not None and token_file is not None:
        raise ConfigError('give -http_token or -http_token_file, not both (the file keeps the token out of '
                          '`ps` and shell history)')
    if token_file:
        try:
            lines = Path(token_file).read_text(encoding='utf-8').splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f'-http_token_file: cannot read {token_file} ({e})') from e
        token = lines[0].strip() if lines else ''
        if not token:
            raise ConfigError(f'-http_token_file: {token_file} is empty; write the token on its first line')
    if token is None:
        return ''
    if not token:
        raise ConfigError('-http_token is empty; give a token, or leave the flag out to run without one')
    if not all('!' <= c <= '~' for c in token):
        raise ConfigError('the HTTP token must be printable ASCII without spaces (it is sent in a header); '
                          'make one with: python -c "import secrets; print(secrets.token_urlsafe(32))"')
    return token


def resolve_host(host: str, flag: str = '-bind') -> str:
    """The address a host flag stands for: ``*`` is 0.0.0.0, an address is itself (IPv6 without
    brackets), an interface or host name is the address ZeroMQ binds for it, as the server's
    ports do (so ``eth0`` means the same for the HTTP port as for the ZeroMQ ports).

    Raises:
        ConfigError: the name is no interface nor host name of this machine.
    """
    bare = host[1:-1] if host.startswith('[') and host.endswith(']') else host
    if bare == '*':
        return '0.0.0.0'
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        pass
    # Ask ZeroMQ, which resolves names for the ports: bind a throwaway socket, read where it went.
    with zmq.Context() as ctx, ctx.socket(zmq.PULL) as sock:
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.bind(f'tcp://{bare}:*')
        except zmq.ZMQError as e:
            raise ConfigError(f'{flag} {host}: no interface or address of this machine has that name ({e}); '
                              'give an address such as 127.0.0.1, * for all interfaces, or an interface '
                              'that has an address (see `ip addr`)') from e
        endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)  # tcp://ADDRESS:PORT, IPv6 in brackets
    return endpoint[len('tcp://'):].rsplit(':', 1)[0].strip('[]')


def proxy_hosts(bind_host: str, http_host: Optional[str] = None) -> Tuple[str, str]:
    """(where the proxy listens, where it connects to the ZeroMQ ports) for ``-bind`` and ``-http_host``.

    The ZeroMQ ports listen on ``bind_host``, so the proxy connects there, or to the loopback of
    the same family when they listen on every interface; the HTTP port listens on ``http_host``,
    by default on the ``bind_host`` address.

    Raises:
        ConfigError: a name that is no interface of this machine (see ``resolve_host``).
    """
    ports = resolve_host(bind_host, '-bind')
    listen = ports if http_host is None else resolve_host(http_host, '-http_host')
    connect = ports
    if ipaddress.ip_address(ports).is_unspecified:
        connect = '::1' if ipaddress.ip_address(ports).version == 6 else '127.0.0.1'
    return listen, connect
