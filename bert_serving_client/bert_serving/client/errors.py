"""The exception hierarchy shared by the client, the server and the HTTP proxy.

Every error this project raises derives from :class:`BertServingError`::

    BertServingError
    ├── BertServerError                the server's own message, from an error reply
    │   ├── BertServerBusyError        the server's queue is full: retry after ``retry_after`` seconds
    │   └── BertServerShuttingDownError  the server stops and will not serve this request
    ├── BertTimeoutError               no reply in time (also a TimeoutError)
    ├── BertServerGoneError            the connection to the server dropped and did not come back
    ├── ProtocolError                  a malformed message on the wire (also a ValueError)
    ├── BadRequest                     invalid input, named element by element (also a ValueError)
    ├── ConfigError                    a BertClient argument or a server flag is invalid (also a ValueError)
    └── KeyFileError                   a CurveZMQ key file is missing or of the wrong kind (also a ValueError)

The server adds its own (``bert_serving.server.errors``, which lists the whole tree) and the
HTTP proxy its ``HttpError`` family under the same root, so one ``except BertServingError``
catches anything this project raises.
"""
from __future__ import annotations

from typing import Optional

__all__ = ['BertServingError', 'BertServerError', 'BertServerBusyError', 'BertServerShuttingDownError',
           'BertTimeoutError', 'BertServerGoneError', 'ProtocolError', 'BadRequest', 'ConfigError', 'KeyFileError']


class BertServingError(Exception):
    """Root of every bert-serving error."""


class BertServerError(BertServingError, RuntimeError):
    """The server could not serve a request; the message is the server's own.

    Attributes:
        code: The reason the server gave (one of ``protocol.ErrorCode``), or None if it gave none
            (a 1.10 server, or a server older than error codes).
        req_id: The request it answers, once the client knows it.
    """

    def __init__(self, message: str, *, code: Optional[str] = None, req_id: Optional[int] = None):
        super().__init__(message)
        self.code = code
        self.req_id = req_id


class BertServerBusyError(BertServerError):
    """The server refused the request at once because its queue is full; sending it again later
    may succeed.

    Attributes:
        retry_after: Seconds the server suggests waiting before a retry (float), or None.
    """

    def __init__(self, message: str, *, retry_after: Optional[float] = None, req_id: Optional[int] = None):
        super().__init__(message, code='busy', req_id=req_id)  # protocol.ErrorCode.BUSY
        self.retry_after = retry_after


class BertServerShuttingDownError(BertServerError):
    """The server is stopping and failed this request instead of serving it; send it to another
    server, or again once this one is back."""

    def __init__(self, message: str, *, req_id: Optional[int] = None):
        super().__init__(message, code='shutting_down', req_id=req_id)  # protocol.ErrorCode.SHUTTING_DOWN


class BertTimeoutError(BertServingError, TimeoutError):
    """No answer from the server in time; the message says what to check."""


class BertServerGoneError(BertServingError, ConnectionError):
    """The client's connection to the server dropped and did not come back in time (the server was
    killed, stopped, or is unreachable); the requests still waiting for a reply failed. Raised
    whatever ``timeout`` says; the message names the address and what to check."""


class ProtocolError(BertServingError, ValueError):
    """A message on the wire is malformed."""


class BadRequest(BertServingError, ValueError, TypeError):
    """Input that no server can encode; the message names the offending element, e.g.
    ``texts[3] is int (5), expected str``.

    Raised by ``bert_serving.client.validation`` wherever input is checked: in the client before
    sending, in the server's ventilator, in the HTTP proxy. It is a ValueError, and a TypeError too
    because 1.10's client raised TypeError for an element of the wrong type.
    """


class ConfigError(BertServingError, ValueError):
    """A setting is invalid: a ``BertClient`` argument (``output_fmt``, ``identity``,
    ``max_concurrency``) or a server flag (a layer out of range, two ports that clash, ...); the
    message names it and says what to give instead. The server raises it from
    ``bert_serving.server.errors``, where it is the same class."""


class KeyFileError(BertServingError, ValueError):
    """A CurveZMQ key file (``server_key``, ``client_key``, ``-auth_dir``) is missing, unreadable, or
    not the kind expected: a secret ``.key_secret`` where the public ``.key`` belongs, or the other
    way round. The message names the file and says which one to give instead."""
