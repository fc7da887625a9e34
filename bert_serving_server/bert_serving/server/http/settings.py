"""The HTTP proxy's configuration: one frozen dataclass, filled in from the server's flags."""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ['ProxySettings', 'MAX_BODY_BYTES', 'REQUEST_TIMEOUT_SECONDS', 'STATUS_TIMEOUT_SECONDS']

# A request body above this is refused with 413 before it is parsed. 16 MiB of JSON is about
# 100k short sentences: far more than one request should carry; send several instead.
MAX_BODY_BYTES = 16 * 1024 * 1024
# An encoding request that the server has not answered by then fails with 504, so no HTTP
# client waits forever on a server that died or was restarted.
REQUEST_TIMEOUT_SECONDS = 60.0
# /health, /metrics and /status/server must answer quickly even when the server is gone.
STATUS_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class ProxySettings:
    """What the proxy process needs; nothing else of the server's flags crosses to it.

    Attributes:
        http_port: TCP port the proxy listens on.
        port: the server's request port (the ventilator's PULL).
        port_out: the server's result port (the sink's XPUB).
        max_connect: encoding requests in flight before the proxy answers 429 (-http_max_connect).
        cors: value of Access-Control-Allow-Origin (-cors).
        host: address the proxy listens on.
        server_ip: address of the server's ZeroMQ ports; the proxy runs beside the server.
        request_timeout: seconds an encoding request may wait for the server.
        status_timeout: seconds a status request may wait for the server.
        max_body_bytes: largest request body accepted.
        verbose: debug logging, including an access log.
        parent_pid: the server's pid; the proxy stops when its parent changes.
    """
    http_port: int
    port: int
    port_out: int
    max_connect: int = 10
    cors: str = '*'
    host: str = '0.0.0.0'
    server_ip: str = '127.0.0.1'
    request_timeout: float = REQUEST_TIMEOUT_SECONDS
    status_timeout: float = STATUS_TIMEOUT_SECONDS
    max_body_bytes: int = MAX_BODY_BYTES
    verbose: bool = False
    parent_pid: int = 0

    def __post_init__(self):
        if self.max_connect < 1:
            raise ValueError(f'http_max_connect must be at least 1, got {self.max_connect}')

    @classmethod
    def from_namespace(cls, args, parent_pid: int = 0) -> 'ProxySettings':
        """Takes the proxy's fields from the server's parsed flags."""
        return cls(http_port=args.http_port, port=args.port, port_out=args.port_out,
                   max_connect=getattr(args, 'http_max_connect', 10), cors=getattr(args, 'cors', '*'),
                   verbose=bool(getattr(args, 'verbose', False)), parent_pid=parent_pid)
