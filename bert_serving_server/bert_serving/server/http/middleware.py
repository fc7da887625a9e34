"""The proxy's middlewares, outermost first: CORS, compression, metrics, errors, token, concurrency limit.

    cors     answers OPTIONS preflights; adds Access-Control-Allow-Origin to every reply
    gzip     gzips JSON and text replies of COMPRESS_MIN_BYTES or more for clients that accept it
    metrics  counts every reply by endpoint and status code, and times it
    errors   the one place where exceptions become JSON error replies with a status code
    token    with -http_token: 401 without the bearer token (auth.py says which paths are open)
    limit    refuses an encoding request with 429 when -http_max_connect are already in flight
"""
from __future__ import annotations

import logging
import time
from typing import Awaitable, Callable, Collection, List, Optional

from aiohttp import hdrs, web
from aiohttp.web import ContentCoding

from bert_serving.client.errors import BertServingError

from .auth import TokenCheck, make_auth_middleware
from .errors import TooManyRequests, from_client_error
from .metrics import ProxyMetrics

__all__ = ['make_middlewares', 'error_response', 'endpoint_of', 'accepts_gzip', 'COMPRESS_MIN_BYTES', 'INTERNAL_ERROR']

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PREFLIGHT_MAX_AGE = '600'
# The whole message of a 500: a bug of the proxy, whose detail goes to the proxy's log only.
INTERNAL_ERROR = 'internal error of the proxy; its log (PROXY) has the detail'
# Status of a request whose HTTP client went away before the reply (nginx's convention).
CLIENT_CLOSED = 499

# As flask-compress (which 1.10's proxy used): below this, gzip's framing costs more than it saves.
COMPRESS_MIN_BYTES = 500
_COMPRESSIBLE_TYPES = ('application/json', 'text/')

_HTTP_TYPES = {400: 'invalid_request_error', 401: 'authentication_error', 404: 'not_found_error', 405: 'invalid_request_error',
               413: 'invalid_request_error', 422: 'invalid_request_error', 429: 'rate_limit_error'}


def error_response(status: int, message: str, type_: str, headers=None) -> web.Response:
    """A JSON error reply: ``{"error": {"message", "type", "code"}, "status"}``."""
    return web.json_response({'error': {'message': message, 'type': type_, 'code': status}, 'status': status},
                             status=status, headers=headers)


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an Accept-Encoding header allows gzip, by name or as ``*``; ``gzip;q=0`` refuses it."""
    weights = {}
    for item in accept_encoding.lower().split(','):
        coding, _, params = item.partition(';')
        name, _, value = params.partition('=')
        try:
            weights[coding.strip()] = float(value) if name.strip() == 'q' else 1.0
        except ValueError:
            weights[coding.strip()] = 0.0
    return weights.get('gzip', weights.get('*', 0.0)) > 0


def endpoint_of(request: web.Request) -> str:
    """The route's path pattern, so that metrics labels stay few whatever the URL."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else 'unmatched'


def make_middlewares(*, cors: str, max_connect: int, limited: Collection[str], max_body_bytes: int,
                     metrics: ProxyMetrics, logger: logging.Logger, token: Optional[TokenCheck] = None) -> List:
    """Builds the middleware chain.

    Args:
        cors: Access-Control-Allow-Origin value.
        max_connect: Encoding requests allowed in flight at once.
        limited: Endpoints (path patterns) that count against ``max_connect``.
        max_body_bytes: The body limit, for the 413 message.
        metrics: Where requests are counted.
        logger: Where unexpected errors are logged.
        token: The bearer-token check; None (or one without a token) lets every request in.
    """
    in_flight = 0

    @web.middleware
    async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == 'OPTIONS' and 'Access-Control-Request-Method' in request.headers:
            return web.Response(status=204, headers={
                'Access-Control-Allow-Origin': cors,
                'Access-Control-Allow-Methods': 'GET, POST, OPTIONS',
                'Access-Control-Allow-Headers': request.headers.get('Access-Control-Request-Headers',
                                                                    'Content-Type, Authorization'),
                'Access-Control-Max-Age': PREFLIGHT_MAX_AGE,
            })
        response = await handler(request)
        response.headers['Access-Control-Allow-Origin'] = cors
        return response

    @web.middleware
    async def gzip_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        if (isinstance(response, web.Response) and isinstance(response.body, bytes)
                and len(response.body) >= COMPRESS_MIN_BYTES
                and response.content_type.startswith(_COMPRESSIBLE_TYPES)):
            response.headers.add(hdrs.VARY, hdrs.ACCEPT_ENCODING)  # caches must key on it
            if accepts_gzip(request.headers.get(hdrs.ACCEPT_ENCODING, '')):
                response.enable_compression(ContentCoding.gzip)
        return response

    @web.middleware
    async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        start = time.perf_counter()
        code = CLIENT_CLOSED
        try:
            response = await handler(request)
            code = response.status
            return response
        finally:
            metrics.observe(endpoint_of(request), request.method, code, time.perf_counter() - start)

    @web.middleware
    async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except BertServingError as error:  # HttpError, or a client-library error to translate
            e = from_client_error(error)
            if e.status >= 500:
                logger.warning('%s %s -> %d: %s', request.method, request.path, e.status, e.message)
            return error_response(e.status, e.message, e.type, e.headers or None)
        except web.HTTPException as e:  # raised by aiohttp itself: 404, 405, 413
            if e.status < 400:
                raise
            if e.status == 413:
                message = (f'the request body exceeds {max_body_bytes} bytes; '
                           'send fewer texts per request')
            elif e.status == 404:
                message = f'no endpoint at {request.path}; see GET / for the dashboard and docs/http.md'
            elif e.status == 405:
                message = f'{request.method} is not allowed on {request.path} (allowed: {e.headers.get("Allow")})'
            else:
                message = e.reason
            headers = {'Allow': e.headers['Allow']} if 'Allow' in e.headers else None
            return error_response(e.status, message, _HTTP_TYPES.get(e.status, 'server_error'), headers)
        except Exception:  # CancelledError (client gone) is a BaseException and passes
            # The exception's text may hold paths, settings or parts of the request: log it, never send it.
            logger.exception('%s %s failed', request.method, request.path)
            return error_response(500, INTERNAL_ERROR, 'server_error')

    @web.middleware
    async def limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        nonlocal in_flight
        if endpoint_of(request) not in limited:
            return await handler(request)
        if in_flight >= max_connect:
            raise TooManyRequests(f'{max_connect} requests are already in flight (-http_max_connect); '
                                  'retry shortly, or start the server with a higher -http_max_connect')
        in_flight += 1
        metrics.in_flight.inc()
        try:
            return await handler(request)
        finally:
            in_flight -= 1
            metrics.in_flight.dec()

    chain = [cors_middleware, gzip_middleware, metrics_middleware, error_middleware]
    if token is not None and token.enabled:
        chain.append(make_auth_middleware(token))  # inside errors and metrics: a 401 is counted and JSON
    return chain + [limit_middleware]
