"""The proxy's bearer token (``-http_token`` / ``-http_token_file``): who may use the HTTP endpoints.

With a token, every request needs ``Authorization: Bearer <token>`` (what the ``openai`` client sends
for ``api_key``), except:

    /health     always open: load balancers and readiness probes send no credentials
    /metrics    open with ``-metrics_public``; else it needs the token (Prometheus sends it with
                ``authorization: {credentials_file: ...}`` in its scrape config)
    dashboard   a browser cannot add a header to a page it opens: ``GET /`` from a browser without a
                session answers with a sign-in page (login.html), whose form posts the token in the
                body of ``POST /login`` (never in a URL, so never in a history, a log or a Referer).
                The answer is a redirect to ``/`` with a session cookie; with that cookie, GET
                requests (the page and the ``status/server`` it polls) pass.

The session cookie is ``EXPIRY.MAC``: the expiry time (Unix seconds) and an HMAC of it keyed with the
token, so it holds no token, cannot be extended or forged without the token, stops working at its
expiry (``Max-Age`` tells the browser the same) and when the token changes. It is ``HttpOnly``,
``SameSite=Lax``, and ``Secure`` when the request came over TLS (directly, or through a reverse proxy
that says ``X-Forwarded-Proto: https``) or with ``-http_secure_cookie``. It opens no POST, so it
cannot encode, nor be replayed as a bearer token.

Other requests get 401 with ``WWW-Authenticate: Bearer`` and the proxy's JSON error body. Tokens
and sessions are compared in constant time (``hmac.compare_digest``). Without a token nothing is
checked, as 1.10.
"""
from __future__ import annotations

import hashlib
import hmac
import time
from importlib import resources
from typing import Optional

from aiohttp import hdrs, web

from .errors import Unauthorized

__all__ = ['TokenCheck', 'make_auth_middleware', 'COOKIE_NAME', 'OPEN_PATHS', 'LOGIN_PATH', 'SESSION_SECONDS']

COOKIE_NAME = 'bert_serving_session'
OPEN_PATHS = frozenset({'/health'})
LOGIN_PATH = '/login'
# A dashboard session lasts a working day; then the page asks for the token again.
SESSION_SECONDS = 12 * 3600
_COOKIE_CONTEXT = b'bert-serving dashboard session v2:'
_SAFE_METHODS = frozenset({'GET', 'HEAD'})
_MESSAGE_MARK = '<!--MESSAGE-->'
_NO_STORE = {hdrs.CACHE_CONTROL: 'no-store', 'Referrer-Policy': 'no-referrer'}


class TokenCheck:
    """Decides whether a request may pass, and signs browsers in.

    Args:
        token: the required bearer token; '' lets everything pass.
        metrics_public: /metrics needs no token.
        session_seconds: how long a dashboard session lasts.
        secure_cookie: always mark the session cookie ``Secure`` (-http_secure_cookie), not only
            when the request came over TLS.
    """

    def __init__(self, token: str, metrics_public: bool = False, session_seconds: int = SESSION_SECONDS,
                 secure_cookie: bool = False):
        self._token = token.encode('ascii')
        self.open_paths = OPEN_PATHS | ({'/metrics'} if metrics_public else set())
        self.session_seconds = int(session_seconds)
        self.secure_cookie = secure_cookie
        self._login_page: Optional[str] = None

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

    # -- the dashboard's session ------------------------------------------------------------------
    def _mac(self, expiry: int) -> bytes:
        return hmac.new(self._token, _COOKIE_CONTEXT + b'%d' % expiry, hashlib.sha256).hexdigest().encode('ascii')

    def session_cookie(self, now: Optional[float] = None) -> str:
        """A new session's cookie value, valid for ``session_seconds`` from ``now``."""
        expiry = int(now if now is not None else time.time()) + self.session_seconds
        return f'{expiry}.{self._mac(expiry).decode("ascii")}'

    def has_session(self, request: web.Request, now: Optional[float] = None) -> bool:
        """A valid, unexpired dashboard cookie, which counts for GET and HEAD only."""
        cookie = request.cookies.get(COOKIE_NAME)
        if request.method not in _SAFE_METHODS or cookie is None:
            return False
        expiry, _, mac = cookie.partition('.')
        if not (expiry.isascii() and expiry.isdigit()) or len(expiry) > 12:
            return False
        now = now if now is not None else time.time()
        return int(expiry) > now and self._matches(mac, self._mac(int(expiry)))

    def _secure(self, request: web.Request) -> bool:
        forwarded = request.headers.get('X-Forwarded-Proto', '').split(',')[0].strip().lower()
        return self.secure_cookie or request.secure or forwarded == 'https'

    def wants_page(self, request: web.Request) -> bool:
        """A browser opening the dashboard: ``GET /`` that accepts HTML (API clients get JSON)."""
        return (request.method in _SAFE_METHODS and request.path == '/'
                and 'text/html' in request.headers.get(hdrs.ACCEPT, ''))

    def login_page(self, message: str = '', status: int = 401) -> web.Response:
        """The sign-in page; ``message`` (fixed text, no user input) says why it is shown again."""
        if self._login_page is None:
            self._login_page = resources.files(__package__).joinpath('login.html').read_text(encoding='utf-8')
        body = self._login_page.replace(_MESSAGE_MARK, f'<p class="message">{message}</p>' if message else '')
        challenge = {'WWW-Authenticate': 'Bearer realm="bert-serving"'} if status == 401 else {}
        return web.Response(text=body, content_type='text/html', status=status, headers={**_NO_STORE, **challenge})

    async def login(self, request: web.Request) -> web.Response:
        """``GET /login``: the page; ``POST /login`` with the form field ``token``: a redirect to the
        dashboard with a session cookie, or the page again saying the token is wrong."""
        if request.method in _SAFE_METHODS:
            return self.login_page(status=200)
        if request.method != 'POST':
            raise web.HTTPMethodNotAllowed(request.method, ['GET', 'POST'])
        try:
            form = await request.post()
        except ValueError:  # not a form at all
            form = {}
        presented = form.get('token')
        if not isinstance(presented, str) or not self._matches(presented.strip(), self._token):
            return self.login_page('That token is wrong: give the one the proxy was started with '
                                   '(-http_token or the first line of -http_token_file).')
        # Relative, so the page also works behind a reverse proxy that serves it under a prefix.
        response = web.Response(status=303, headers={hdrs.LOCATION: './', **_NO_STORE})
        response.set_cookie(COOKIE_NAME, self.session_cookie(), max_age=self.session_seconds, path='/',
                            httponly=True, samesite='Lax', secure=self._secure(request))
        return response


def make_auth_middleware(check: TokenCheck):
    """The middleware that enforces ``check``; it raises :class:`Unauthorized` (401) for the error
    middleware to answer, so refusals are counted in /metrics like any other reply."""

    @web.middleware
    async def auth_middleware(request: web.Request, handler) -> web.StreamResponse:
        if not check.enabled or request.path in check.open_paths:
            return await handler(request)
        if request.path == LOGIN_PATH:
            return await check.login(request)
        verdict = check.bearer(request)
        if verdict or (verdict is None and check.has_session(request)):
            return await handler(request)
        if verdict is None and check.wants_page(request):
            note = ('The token does not go in the address any more (it would stay in the history and the logs): '
                    'type it here.') if 'token' in request.query else ''
            return check.login_page(note)
        if verdict is False:
            raise Unauthorized('the bearer token is wrong; send the one the proxy was started with '
                               '(-http_token / -http_token_file)', invalid=True)
        raise Unauthorized('this endpoint needs "Authorization: Bearer <token>" (the token of -http_token); with '
                           'the openai client pass api_key=<token>; in a browser open / and sign in')

    return auth_middleware
