"""The proxy's bearer token (``-http_token`` / ``-http_token_file``): who may use the HTTP endpoints.

With a token, every request needs ``Authorization: Bearer <token>`` (what the ``openai`` client sends
for ``api_key``), except:

    /health     always open: load balancers and readiness probes send no credentials
    /metrics    open with ``-metrics_public``; else it needs the token (Prometheus sends it with
                ``authorization: {credentials_file: ...}`` in its scrape config)
    dashboard   a browser cannot add a header to a page it opens: ``GET /?token=<token>`` answers
                with a session cookie and a redirect to ``/``; with that cookie, GET requests (the
                page and the ``status/server`` it polls) pass. The cookie is an HMAC of the token,
                not the token, is HttpOnly, and opens no POST, so it cannot encode or be replayed
                as a bearer token.

Other requests get 401 with ``WWW-Authenticate: Bearer`` and the proxy's JSON error body. Tokens
are compared in constant time (``hmac.compare_digest``). Without a token nothing is checked, as 1.10.
"""
from __future__ import annotations

import hashlib
import hmac
from typing import Optional

from aiohttp import hdrs, web

from .errors import Unauthorized

__all__ = ['TokenCheck', 'make_auth_middleware', 'COOKIE_NAME', 'OPEN_PATHS']

COOKIE_NAME = 'bert_serving_session'
OPEN_PATHS = frozenset({'/health'})
_COOKIE_CONTEXT = b'bert-serving dashboard session v1'
_SAFE_METHODS = frozenset({'GET', 'HEAD'})


class TokenCheck:
    """Decides whether a request may pass.

    Args:
        token: the required bearer token; '' lets everything pass.
        metrics_public: /metrics needs no token.
    """

    def __init__(self, token: str, metrics_public: bool = False):
        self._token = token.encode('ascii')
        self.open_paths = OPEN_PATHS | ({'/metrics'} if metrics_public else set())
        self._cookie = hmac.new(self._token, _COOKIE_CONTEXT, hashlib.sha256).hexdigest().encode('ascii')

    @property
    def enabled(self) -> bool:
        return bool(self._token)

    def _matches(self, presented: str, expected: bytes) -> bool:
        # compare_digest needs equal types; presented text may be any Unicode: compare its UTF-8.
        return hmac.compare_digest(presented.encode('utf-8', 'surrogateescape'), expected)

    def bearer(self, request: web.Request) -> Optional[bool]:
        """True/False for a right/wrong ``Authorization: Bearer`` header; None if it has none."""
        header = request.headers.get(hdrs.AUTHORIZATION)
        if header is None:
            return None
        scheme, _, credentials = header.strip().partition(' ')
        return scheme.lower() == 'bearer' and self._matches(credentials.strip(), self._token)

    def has_session(self, request: web.Request) -> bool:
        """The dashboard's cookie, which counts for GET and HEAD only."""
        cookie = request.cookies.get(COOKIE_NAME)
        return request.method in _SAFE_METHODS and cookie is not None and self._matches(cookie, self._cookie)

    def login(self, request: web.Request) -> Optional[web.Response]:
        """For ``GET /?token=<token>``: a redirect to the page that sets the session cookie, or None
        if this request is no such login or its token is wrong."""
        presented = request.query.get('token')
        if request.method not in _SAFE_METHODS or request.path != '/' or presented is None:
            return None
        if not self._matches(presented, self._token):
            return None
        # Relative, so the page also works behind a reverse proxy that serves it under a prefix.
        response = web.Response(status=303, headers={hdrs.LOCATION: './', hdrs.CACHE_CONTROL: 'no-store'})
        response.set_cookie(COOKIE_NAME, self._cookie.decode('ascii'), httponly=True, samesite='Lax', path='/')
        return response


def make_auth_middleware(check: TokenCheck):
    """The middleware that enforces ``check``; it raises :class:`Unauthorized` (401) for the error
    middleware to answer, so refusals are counted in /metrics like any other reply."""

    @web.middleware
    async def auth_middleware(request: web.Request, handler) -> web.StreamResponse:
        if not check.enabled or request.path in check.open_paths:
            return await handler(request)
        verdict = check.bearer(request)
        if verdict or (verdict is None and check.has_session(request)):
            return await handler(request)
        login = check.login(request)
        if login is not None:
            return login
        if verdict is False or (request.path == '/' and 'token' in request.query):
            raise Unauthorized('the bearer token is wrong; send the one the proxy was started with '
                               '(-http_token / -http_token_file)', invalid=True)
        raise Unauthorized('this endpoint needs "Authorization: Bearer <token>" (the token of -http_token); with '
                           'the openai client pass api_key=<token>; in a browser open /?token=<token> once')

    return auth_middleware
