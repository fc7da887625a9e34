"""The proxy's bearer token (-http_token): 401 without it, 200 with it, /health always open, /metrics
as -metrics_public says, the openai client's api_key, and the dashboard's cookie. Against the fake
backend; the token check does not depend on the server behind the proxy."""
from __future__ import annotations

from argparse import Namespace

import pytest
from openai import AsyncOpenAI, AuthenticationError

from bert_serving.server.errors import ConfigError
from bert_serving.server.http.auth import COOKIE_NAME
from bert_serving.server.http.settings import ProxySettings, read_token

from http_support import HTTP_TIMEOUT, metric_sample, serve

TOKEN = 'tok-3f9a0c1e7b2d4a6f8e1c5b7a9d0e2f4a'
BEARER = {'Authorization': f'Bearer {TOKEN}'}
ENDPOINTS = [('POST', '/encode', {'id': 1, 'texts': ['a b']}), ('POST', '/v1/embeddings', {'input': ['a b']}),
             ('GET', '/v1/models', None), ('GET', '/status/server', None), ('GET', '/status/client', None),
             ('GET', '/openapi.json', None), ('GET', '/', None), ('GET', '/metrics', None)]


@pytest.mark.parametrize('method, path, body', ENDPOINTS)
def test_every_endpoint_needs_the_token(fake, method, path, body):
    async def check(client):
        r = await client.request(method, path, json=body)
        assert r.status == 401 and r.headers['WWW-Authenticate'] == 'Bearer realm="bert-serving"'
        error = (await r.json())['error']
        assert error['code'] == 401 and error['type'] == 'authentication_error' and 'Bearer' in error['message']
        r = await client.request(method, path, json=body, headers={'Authorization': 'Bearer wrong'})
        assert r.status == 401 and 'error="invalid_token"' in r.headers['WWW-Authenticate']
        r = await client.request(method, path, json=body, headers={'Authorization': f'Basic {TOKEN}'})
        assert r.status == 401
        r = await client.request(method, path, json=body, headers={'Authorization': f'bearer {TOKEN}'})
        assert r.status == 200, await r.text()

    serve(fake, check, token=TOKEN)
    assert len(fake.calls) == (path in ('/encode', '/v1/embeddings'))  # only the request with the token


def test_a_refused_request_never_reaches_the_server(fake):
    async def check(client):
        assert (await client.post('/encode', json={'id': 1, 'texts': ['a']})).status == 401
        assert (await client.post('/v1/embeddings', json={'input': 'a'}, headers={'Authorization': 'Bearer x'}
                                  )).status == 401

    serve(fake, check, token=TOKEN)
    assert fake.calls == []


def test_health_is_always_open_and_metrics_as_configured(fake):
    async def check(client):
        assert (await client.get('/health')).status == 200
        assert (await client.get('/metrics')).status == 401
        r = await client.get('/metrics', headers=BEARER)
        assert r.status == 200
        refused = 'bert_http_requests_total{code="401",endpoint="/metrics",method="GET"}'
        assert metric_sample(await r.text(), refused) == 1  # refusals are counted like any reply

    serve(fake, check, token=TOKEN)

    async def public(client):
        assert (await client.get('/metrics')).status == 200
        assert (await client.get('/status/server')).status == 401

    serve(fake, public, token=TOKEN, metrics_public=True)


def test_without_a_token_everything_is_open_as_in_1_10(fake):
    async def check(client):
        for method, path, body in ENDPOINTS:
            assert (await client.request(method, path, json=body)).status == 200, path

    serve(fake, check)


def test_a_cors_preflight_needs_no_token(fake):
    async def check(client):
        r = await client.options('/v1/embeddings', headers={'Origin': 'http://elsewhere',
                                                            'Access-Control-Request-Method': 'POST',
                                                            'Access-Control-Request-Headers': 'authorization'})
        assert r.status == 204 and r.headers['Access-Control-Allow-Headers'] == 'authorization'

    serve(fake, check, token=TOKEN)


def test_the_openai_client_sends_its_api_key_as_the_token(fake):
    async def check(client):
        base_url = str(client.server.make_url('/v1'))
        async with AsyncOpenAI(base_url=base_url, api_key=TOKEN, timeout=HTTP_TIMEOUT, max_retries=0) as openai:
            reply = await openai.embeddings.create(model='bert', input=['one two', 'three'], encoding_format='float')
            assert [d.embedding[:2] for d in reply.data] == [[7.0, 2.0], [5.0, 1.0]]
        async with AsyncOpenAI(base_url=base_url, api_key='wrong', timeout=HTTP_TIMEOUT, max_retries=0) as openai:
            with pytest.raises(AuthenticationError):
                await openai.embeddings.create(model='bert', input=['x'])

    serve(fake, check, token=TOKEN)


def test_the_dashboard_logs_in_once_with_the_token_in_the_url(fake):
    async def check(client):
        assert (await client.get('/?token=wrong')).status == 401
        r = await client.get(f'/?token={TOKEN}', allow_redirects=False)
        assert r.status == 303 and r.headers['Location'] == './'
        cookie = r.cookies[COOKIE_NAME]
        assert cookie['httponly'] and cookie['samesite'] == 'Lax' and TOKEN not in cookie.value
        session = {'Cookie': f'{COOKIE_NAME}={cookie.value}'}
        page = await client.get('/', headers=session)
        assert page.status == 200 and 'fetch("status/server"' in await page.text()
        assert (await client.get('/status/server', headers=session)).status == 200  # what the page polls
        # The cookie opens reads only: no encoding, and it is no bearer token.
        assert (await client.post('/encode', json={'id': 1, 'texts': ['a']}, headers=session)).status == 401
        assert (await client.get('/status/server', headers={'Authorization': f'Bearer {cookie.value}'})).status == 401
        client.session.cookie_jar.clear()  # from here on, only the cookies sent by hand count
        forged = {'Cookie': f'{COOKIE_NAME}={TOKEN}'}
        assert (await client.get('/status/server', headers=forged)).status == 401

    serve(fake, check, token=TOKEN)
    assert fake.calls == []


# -- the token's flags ------------------------------------------------------------------------------
def test_the_token_comes_from_the_flag_or_the_first_line_of_its_file(tmp_path):
    path = tmp_path / 'token'
    path.write_text(f'{TOKEN}\n# comment lines after the first are ignored\n')
    assert read_token(token_file=str(path)) == TOKEN
    assert read_token(token=TOKEN) == TOKEN
    assert read_token() == ''
    args = Namespace(http_port=8125, port=5555, port_out=5556, http_token=None, http_token_file=str(path),
                     metrics_public=True)
    settings = ProxySettings.from_namespace(args)
    assert settings.token == TOKEN and settings.metrics_public and TOKEN not in repr(settings)


@pytest.mark.parametrize('token, file_text, message', [
    ('', None, 'is empty'),
    (TOKEN, '', 'not both'),
    (None, '', 'is empty'),
    (None, '\n\n', 'is empty'),
    ('has space', None, 'printable ASCII'),
    ('naïve', None, 'printable ASCII'),
    (None, 'missing', 'cannot read'),
])
def test_a_bad_token_flag_is_refused(tmp_path, token, file_text, message):
    path = None
    if file_text is not None:
        path = tmp_path / 'token'
        if file_text != 'missing':
            path.write_text(file_text)
        path = str(path)
    with pytest.raises(ConfigError, match=message):
        read_token(token, path)
