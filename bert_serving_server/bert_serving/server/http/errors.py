"""Errors of the HTTP proxy, each carrying the status code it is answered with.

The one place that turns exceptions into HTTP replies is ``middleware.error_middleware``;
everything below the routes raises one of these, or a client-library error that
:func:`from_client_error` translates. The body is OpenAI-shaped, plus the top-level ``status``
that 1.10's Flask proxy put in every reply::

    {"error": {"message": "...", "type": "...", "code": <status>}, "status": <status>}

What the server's error codes (``protocol.ErrorCode``) become::

    busy           429  ServerBusy, with Retry-After (the server's retry_after rounded up, at least 1)
    shutting_down  503  ServerShuttingDown
    bad_request    422  InvalidField (the server's message names the element)
    timeout        504  BackendTimeout
    failed, none   502  BackendError
"""
from __future__ import annotations

import math
from typing import Optional

from bert_serving.client.errors import (BadRequest, BertServerBusyError, BertServerError,
                                        BertServerShuttingDownError, BertServingError, BertTimeoutError)
from bert_serving.client.protocol import ErrorCode

__all__ = ['HttpError', 'BadJson', 'BadForm', 'InvalidField', 'NotSupported', 'TooManyInputs', 'TooManyRequests',
           'Unauthorized',
           'ServerBusy', 'ServerShuttingDown', 'BackendError', 'BackendUnavailable', 'BackendTimeout',
           'from_client_error', 'retry_after_header']


class HttpError(BertServingError):
    """Root of the proxy's errors. Subclasses fix ``status`` and ``type``."""
    status = 500
    type = 'server_error'
    headers: dict = {}

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BadJson(HttpError):
    """The body is not JSON at all."""
    status = 400
    type = 'invalid_request_error'


class BadForm(HttpError):
    """The body claims to be a form (urlencoded or multipart) but cannot be read as one."""
    status = 400
    type = 'invalid_request_error'


class NotSupported(HttpError):
    """A valid request this server cannot serve in its current configuration."""
    status = 400
    type = 'invalid_request_error'


class TooManyInputs(HttpError):
    """More inputs in one request than ``-http_max_inputs``."""
    status = 413
    type = 'invalid_request_error'

    def __init__(self, count: int, limit: int):
        super().__init__(f'this request holds {count} inputs; the proxy takes at most {limit} per request '
                         f'(-http_max_inputs): send them in requests of {limit} or fewer, or start the server '
                         'with a higher -http_max_inputs')


class InvalidField(HttpError):
    """The body is JSON but a field is missing or has the wrong type; the message names it."""
    status = 422
    type = 'invalid_request_error'


class Unauthorized(HttpError):
    """No bearer token, or a wrong one, on an endpoint that needs it (``-http_token``)."""
    status = 401
    type = 'authentication_error'

    def __init__(self, message: str, invalid: bool = False):
        super().__init__(message)
        # RFC 6750: name the scheme; say invalid_token only when a token was presented.
        error = ', error="invalid_token"' if invalid else ''
        self.headers = {'WWW-Authenticate': f'Bearer realm="bert-serving"{error}'}


class TooManyRequests(HttpError):
    """More requests in flight than ``-http_max_connect``."""
    status = 429
    type = 'rate_limit_error'
    headers = {'Retry-After': '1'}


def retry_after_header(seconds: Optional[float]) -> str:
    """Retry-After takes whole seconds: round up, and never say 0 (clients would retry at once)."""
    if seconds is None or not math.isfinite(seconds):
        return '1'
    return str(max(1, math.ceil(seconds)))


class ServerBusy(HttpError):
    """The server's queue is full: it refused the request at once."""
    status = 429
    type = 'rate_limit_error'

    def __init__(self, message: str, retry_after: Optional[float] = None):
        super().__init__(message)
        self.headers = {'Retry-After': retry_after_header(retry_after)}


class ServerShuttingDown(HttpError):
    """The server is stopping and failed the request instead of serving it."""
    status = 503
    type = 'service_unavailable'


class BackendError(HttpError):
    """The server answered with an error."""
    status = 502
    type = 'backend_error'


class BackendUnavailable(HttpError):
    """The proxy has no working connection to the server (closing, or the reader died)."""
    status = 503
    type = 'service_unavailable'


class BackendTimeout(HttpError):
    """The server did not answer in time."""
    status = 504
    type = 'timeout_error'


def from_client_error(err: BertServingError) -> HttpError:
    """The HTTP error a client-library error stands for (see the table in the module docstring)."""
    if isinstance(err, HttpError):
        return err
    if isinstance(err, BertServerBusyError):
        return ServerBusy(f'the server is busy: {err}', err.retry_after)
    if isinstance(err, BertServerShuttingDownError):
        return ServerShuttingDown(f'the server is shutting down: {err}')
    if isinstance(err, BadRequest) or (isinstance(err, BertServerError) and err.code == ErrorCode.BAD_REQUEST):
        return InvalidField(str(err))
    if isinstance(err, BertTimeoutError) or (isinstance(err, BertServerError) and err.code == ErrorCode.TIMEOUT):
        return BackendTimeout(str(err))
    if isinstance(err, BertServerError):
        return BackendError(f'the server failed this request: {err}')
    return BackendError(str(err))
