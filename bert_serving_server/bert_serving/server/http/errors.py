"""Errors of the HTTP proxy, each carrying the status code it is answered with.

The one place that turns exceptions into HTTP replies is ``middleware.error_middleware``;
everything below the routes raises one of these (or a client-library error, which the
middleware maps too). The body is OpenAI-shaped, plus the top-level ``status`` that 1.10's
Flask proxy put in every reply::

    {"error": {"message": "...", "type": "...", "code": <status>}, "status": <status>}
"""
from __future__ import annotations

from bert_serving.client.errors import BertServingError

__all__ = ['HttpError', 'BadJson', 'BadForm', 'InvalidField', 'NotSupported', 'TooManyRequests',
           'BackendError', 'BackendUnavailable', 'BackendTimeout']


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


class InvalidField(HttpError):
    """The body is JSON but a field is missing or has the wrong type; the message names it."""
    status = 422
    type = 'invalid_request_error'


class TooManyRequests(HttpError):
    """More requests in flight than ``-http_max_connect``."""
    status = 429
    type = 'rate_limit_error'
    headers = {'Retry-After': '1'}


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
