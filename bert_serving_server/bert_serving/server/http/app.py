"""The proxy's routes. ``create_app`` wires them to a backend (normally a :class:`ZmqBackend`).

    GET  /                 the dashboard (dashboard.html)
    POST /encode           bert-as-service 1.10's HTTP encode (JSON, or a form as 1.10 took too)
    POST /v1/embeddings    OpenAI-compatible embeddings
    GET  /v1/models        the one model, OpenAI-style
    GET  /status/server    the server's SHOW_STATUS reply
    GET  /status/client    the proxy's own connection
    GET  /health           200 when every local worker (at least one worker) is ready, else 503;
                           from a status at most health_cache_seconds old (StatusCache)
    GET  /metrics          Prometheus text
    GET  /openapi.json     the OpenAPI description of all of the above (openapi.py)

With -http_token every route but /health (and /metrics with -metrics_public) needs the bearer
token; auth.py has the rules, including how the dashboard's browser signs in (GET/POST /login, which
only exist then).

The 1.10 routes (/encode, /status/*) add ``"status": 200`` to their replies, as 1.10's Flask-JSON did.

The backend only needs ``encode(texts, show_tokens)``, ``server_status()``, ``server_config()``
and ``client_status()``, so tests can stand a fake in for the server. It is asked for word pieces
only when the HTTP caller asks for them (``/encode`` with ``show_tokens``); ``/v1/embeddings``
counts its ``usage`` tokens in the proxy (usage.py).
"""
from __future__ import annotations

import asyncio
import logging
import math
from importlib import resources
from pathlib import PurePath
from typing import Awaitable, Callable, Optional, Tuple

from aiohttp import web

from . import openapi, schemas
from .auth import TokenCheck
from .errors import BadForm, HttpError, TooManyInputs
from .metrics import CONTENT_TYPE_LATEST, ProxyMetrics
from .middleware import make_middlewares
from .settings import ProxyConfig
from .usage import TokenCounter

__all__ = ['create_app', 'model_name', 'StatusCache', 'LIMITED_ENDPOINTS']

# The endpoints that make the server encode; -http_max_connect bounds these. Status, health and
# metrics stay outside the limit so that probes and dashboards keep answering under load.
LIMITED_ENDPOINTS = frozenset({'/encode', '/v1/embeddings'})
# Directory names that say nothing about the model; the name comes from the folder above them.
_GENERIC_DIRS = {'', 'model', 'models', 'checkpoint', 'checkpoints', 'weights'}


def model_name(model_dir: Optional[str]) -> str:
    """The model's name for OpenAI replies: the last meaningful folder of its directory."""
    path = PurePath(model_dir or 'bert')
    for part in reversed(path.parts):
        if part.lower() not in _GENERIC_DIRS and part not in ('/', '\\'):
            return part
    return 'bert'


class StatusCache:
    """The server's status, asked for at most once per ``seconds`` however many callers want it.

    Callers that come while a request is out wait for that one; its answer, or its failure (an
    :class:`HttpError` such as a timeout), is then reused for ``seconds``. So a flood of unauthenticated
    probes costs the server one SHOW_STATUS a second, and a dead server one timeout at a time.

    Args:
        fetch: asks the server (``backend.server_status``).
        seconds: how long an answer is reused; 0 asks every time (callers that arrive together
            still share one request).
    """

    def __init__(self, fetch: Callable[[], Awaitable[dict]], seconds: float):
        self._fetch = fetch
        self.seconds = seconds
        self._outcome: Optional[Tuple[Optional[dict], Optional[HttpError]]] = None
        self._at = -math.inf
        self._pending: Optional[asyncio.Future] = None

    async def get(self) -> dict:
        """The status; raises the HttpError of the last request if that failed."""
        loop = asyncio.get_running_loop()
        if self._outcome is None or loop.time() - self._at >= self.seconds:
            if self._pending is None:
                self._pending = loop.create_task(self._refresh())
            await asyncio.shield(self._pending)  # a caller that goes away does not cancel the others' request
        status, error = self._outcome
        if error is not None:
            raise error.with_traceback(None)  # raised again each time: keep one raise's traceback only
        return status

    async def _refresh(self) -> None:
        try:
            outcome = (await self._fetch(), None)
        except HttpError as e:
            outcome = (None, e)
        finally:
            self._pending = None
        self._outcome, self._at = outcome, asyncio.get_running_loop().time()


class _Routes:
    """The handlers; they raise :mod:`.errors` exceptions and leave status codes to the middleware."""

    def __init__(self, backend, metrics: ProxyMetrics, dashboard: str, tokens: TokenCounter, max_inputs: int,
                 health_cache_seconds: float):
        self.backend = backend
        self.health_status = StatusCache(backend.server_status, health_cache_seconds)
        self.tokens = tokens
        self.max_inputs = max_inputs
        self.metrics = metrics
        self.dashboard = dashboard
        self._model: Optional[str] = None
        self.openapi: dict = {}  # filled in once every route is registered

    async def _body(self, request: web.Request) -> dict:
        return schemas.parse_json(await request.read())  # read() raises 413 past client_max_size

    async def _form(self, request: web.Request):
        try:
            return await request.post()  # raises 413 past client_max_size too
        except ValueError as e:  # e.g. multipart without a boundary, or a broken part
            raise BadForm(f'the {request.content_type} body cannot be read ({e}); '
                          'send a well-formed form, or JSON') from e

    async def _model_name(self) -> str:
        if self._model is None:
            self._model = model_name((await self.backend.server_config()).get('model_dir'))
        return self._model

    def _check_size(self, count: int) -> None:
        if count > self.max_inputs:
            raise TooManyInputs(count, self.max_inputs)

    async def index(self, request: web.Request) -> web.Response:
        return web.Response(text=self.dashboard, content_type='text/html')

    async def encode(self, request: web.Request) -> web.Response:
        if request.content_type in schemas.FORM_TYPES:
            req = schemas.parse_encode_form(await self._form(request))
        else:
            req = schemas.parse_encode(await self._body(request))
        self._check_size(len(req.texts))
        reply = await self.backend.encode(req.texts, show_tokens=req.show_tokens)
        self.metrics.sequences.labels('/encode').inc(len(req.texts))
        return web.json_response(schemas.encode_reply(req, reply.array, reply.tokens))

    async def embeddings(self, request: web.Request) -> web.Response:
        req = schemas.parse_embeddings(await self._body(request))
        self._check_size(len(req.inputs))
        # The usage count runs in a thread while the server encodes: it adds no latency.
        reply, counts = await asyncio.gather(self.backend.encode(req.inputs, show_tokens=False),
                                             asyncio.to_thread(self.tokens.counts, req.inputs))
        self.metrics.sequences.labels('/v1/embeddings').inc(len(req.inputs))
        model = req.model or await self._model_name()
        return web.json_response(schemas.embeddings_reply(req, model, reply.array, sum(counts)))

    async def models(self, request: web.Request) -> web.Response:
        name = await self._model_name()
        return web.json_response({'object': 'list', 'data': [
            {'id': name, 'object': 'model', 'created': 0, 'owned_by': 'bert-serving'}]})

    async def server_status(self, request: web.Request) -> web.Response:
        return web.json_response({**await self.backend.server_status(), 'status': 200})

    async def client_status(self, request: web.Request) -> web.Response:
        return web.json_response({**self.backend.client_status(), 'status': 200})

    async def health(self, request: web.Request) -> web.Response:
        try:
            status = await self.health_status.get()
        except HttpError as e:
            return web.json_response({'status': 'unavailable', 'ready': False, 'error': e.message}, status=503)
        num_worker, num_ready = status.get('num_worker'), status.get('num_ready_worker')
        # 'ready' turns true once, at start; num_ready_worker also drops while a crashed worker restarts.
        # Remote workers count too, and a pure front (-num_worker 0) is ready once one has joined.
        ready = bool(status.get('ready')) and num_ready is not None and num_ready >= max(1, num_worker or 0)
        body = {'status': 'ready' if ready else 'loading', 'ready': ready,
                'num_worker': num_worker, 'num_ready_worker': num_ready}
        return web.json_response(body, status=200 if ready else 503)

    async def prometheus(self, request: web.Request) -> web.Response:
        try:
            status = await self.backend.server_status()
        except HttpError:
            status = None  # still expose the proxy's own metrics, with bert_server_up 0
        return web.Response(body=self.metrics.render(status), headers={'Content-Type': CONTENT_TYPE_LATEST})

    async def openapi_document(self, request: web.Request) -> web.Response:
        return web.json_response(self.openapi)


def _dashboard_html() -> str:
    return resources.files(__package__).joinpath('dashboard.html').read_text(encoding='utf-8')


def create_app(backend, config: ProxyConfig, logger: Optional[logging.Logger] = None,
               metrics: Optional[ProxyMetrics] = None) -> web.Application:
    """The aiohttp application of the proxy.

    Args:
        backend: The connection to the server (see the module docstring for what it needs).
        config: Limits, CORS and the token; the ports and keys are the backend's business.
        logger: Where unexpected errors go.
        metrics: The metrics to count into; a new set by default.
    """
    logger = logger or logging.getLogger(__name__)
    metrics = metrics or ProxyMetrics()
    tokens = TokenCounter(config.vocab_file, config.do_lower_case, config.max_seq_len,
                          config.max_position_embeddings)
    routes = _Routes(backend, metrics, _dashboard_html(), tokens, config.max_inputs, config.health_cache_seconds)
    app = web.Application(client_max_size=config.max_body_bytes, middlewares=make_middlewares(
        cors=config.cors, max_connect=config.max_connect, limited=LIMITED_ENDPOINTS,
        max_body_bytes=config.max_body_bytes, metrics=metrics, logger=logger,
        token=TokenCheck(config.token, config.metrics_public, config.session_seconds, config.secure_cookie)))
    app.router.add_get('/', routes.index)
    app.router.add_post('/encode', routes.encode)
    app.router.add_post('/v1/embeddings', routes.embeddings)
    app.router.add_get('/v1/models', routes.models)
    app.router.add_get('/status/server', routes.server_status)
    app.router.add_get('/status/client', routes.client_status)
    app.router.add_get('/health', routes.health)
    app.router.add_get('/metrics', routes.prometheus)
    app.router.add_get('/openapi.json', routes.openapi_document)
    routes.openapi = openapi.describe(app.router.routes())
    return app
