"""GET /openapi.json: a valid OpenAPI 3.1 document that names every route of the app, and whose
schemas the app's real replies (from the fake backend) satisfy.
"""
from __future__ import annotations

import pytest
from aiohttp import web
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from bert_serving.server.http import openapi
from bert_serving.server.http.app import create_app
from bert_serving.server.http.errors import BackendTimeout
from bert_serving.server.http.settings import ProxyConfig

from http_support import READY_STATUS, serve

SETTINGS = ProxyConfig(http_port=0, port=1, port_out=2)


def _document(fake) -> dict:
    got = {}

    async def check(client):
        r = await client.get('/openapi.json')
        assert r.status == 200 and r.content_type == 'application/json'
        got.update(await r.json())

    serve(fake, check)
    return got


def test_the_document_is_valid_openapi_3_1(fake):
    document = _document(fake)
    assert document['openapi'] == '3.1.0'
    validate(document)


def test_every_route_of_the_app_is_in_the_document_and_nothing_else(fake):
    app = create_app(fake, SETTINGS)
    routes = {(r.method.lower(), r.resource.canonical) for r in app.router.routes() if r.method != 'HEAD'}
    documented = {(method, path) for path, item in _document(fake)['paths'].items() for method in item}
    assert documented == routes
    assert {('post', '/encode'), ('post', '/v1/embeddings'), ('get', '/status/server'), ('get', '/health'),
            ('get', '/metrics'), ('get', '/openapi.json')} <= routes


def test_an_undocumented_route_stops_the_document_from_being_built(fake):
    async def undocumented(request: web.Request) -> web.Response:
        return web.Response()

    app = create_app(fake, SETTINGS)
    app.router.add_get('/undocumented', undocumented)
    with pytest.raises(LookupError, match='GET /undocumented has no entry in openapi.OPERATIONS'):
        openapi.describe(app.router.routes())


def _check_against(document: dict, path: str, method: str, status: int, content_type: str, body) -> None:
    """Validates a reply body against the document's schema for it (default: the error schema)."""
    responses = document['paths'][path][method]['responses']
    response = responses.get(str(status), responses.get('default'))
    assert response is not None, f'{method.upper()} {path} -> {status} is not in the document'
    assert content_type in response['content'], f'{method.upper()} {path} -> {status} is not {content_type}'
    schema = response['content'][content_type]['schema']
    # The components sit beside the schema so that its "#/components/..." references resolve.
    validator = Draft202012Validator({**schema, 'components': document['components']})
    errors = [f'{"/".join(map(str, e.absolute_path))}: {e.message}' for e in validator.iter_errors(body)]
    assert not errors, f'{method.upper()} {path} -> {status} breaks its schema: {errors}'


REQUESTS = [
    ('post', '/encode', {'id': 'a', 'texts': ['hello world', 'b'], 'show_tokens': True}),
    ('post', '/encode', {'texts': [['hello', 'world']], 'is_tokenized': True}),
    ('post', '/encode', {'texts': 3}),
    ('post', '/v1/embeddings', {'input': ['a', 'b c']}),
    ('post', '/v1/embeddings', {'input': 'a', 'encoding_format': 'base64'}),
    ('post', '/v1/embeddings', {'input': [1, 2]}),
    ('get', '/v1/models', None),
    ('get', '/status/server', None),
    ('get', '/status/client', None),
    ('get', '/health', None),
    ('get', '/metrics', None),
    ('get', '/', None),
    ('get', '/openapi.json', None),
]


@pytest.mark.parametrize('token_level', [False, True], ids=['pooled', 'NONE pooling'])
def test_real_replies_satisfy_the_documented_schemas(fake, token_level):
    fake.token_level = token_level
    document = _document(fake)

    async def check(client):
        for method, path, body in REQUESTS:
            r = await client.request(method, path, json=body)
            reply = await r.json() if r.content_type == 'application/json' else await r.text()
            _check_against(document, path, method, r.status, r.content_type, reply)
        fake.status = {**READY_STATUS, 'ready': False, 'num_ready_worker': 0}
        r = await client.get('/health')
        _check_against(document, '/health', 'get', r.status, r.content_type, await r.json())
        fake.status = BackendTimeout('no reply within 5s')
        r = await client.get('/health')
        _check_against(document, '/health', 'get', r.status, r.content_type, await r.json())
        r = await client.get('/status/server')
        _check_against(document, '/status/server', 'get', r.status, r.content_type, await r.json())

    serve(fake, check)


def test_the_schema_check_itself_catches_a_wrong_reply(fake):
    document = _document(fake)
    with pytest.raises(AssertionError, match='breaks its schema'):
        _check_against(document, '/encode', 'post', 200, 'application/json', {'id': 1, 'result': [['x']]})
    with pytest.raises(AssertionError, match='breaks its schema'):
        _check_against(document, '/health', 'get', 503, 'application/json', {'status': 'asleep', 'ready': False})
