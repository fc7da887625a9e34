"""The proxy's bearer token (-http_token): 401 without it, 200 with it, /health always open, /metrics
as -metrics_public says, the openai client's api_key, and the dashboard's sign-in (a form, never the
token in a URL) and its expiring session cookie. Against the fake backend; the token check does not
depend on the server behind the proxy."""
from __future__ import annotations

import asyncio
import logging
import time
from argparse import Namespace

import pytest
from aiohttp.test_utils import TestClient, TestServer
from openai import AsyncOpenAI, AuthenticationError

from bert_serving.server.args import get_args_parser
from bert_serving.server.errors import ConfigError
from bert_serving.server.http.app import create_app
from bert_serving.server.http.auth import COOKIE_NAME, SESSION_SECONDS, TokenCheck
from bert_serving.server.http.proxy import AccessLog
from bert_serving.server.http.settings import ProxyConfig, read_token

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


HTML = {'Accept': 'text/html,application/xhtml+xml,*/*;q=0.8'}  # what a browser sends for a page


def _cookie_header(value: str) -> dict:
    return {'Cookie': f'{COOKIE_NAME}={value}'}


def test_a_browser_signs_in_with_a_form_and_never_with_the_token_in_a_url(fake):
    async def check(client):
        page = await client.get('/', headers=HTML)
        text = await page.text()
        assert page.status == 401 and page.content_type == 'text/html'
        assert '<form method="post" action="login">' in text and 'type="password" id="token" name="token"' in text
        assert page.headers['Cache-Control'] == 'no-store' and page.headers['Referrer-Policy'] == 'no-referrer'
        assert COOKIE_NAME not in page.cookies
        # The token in the address no longer signs in: the page says to type it instead.
        old = await client.get(f'/?token={TOKEN}', headers=HTML, allow_redirects=False)
        assert old.status == 401 and 'does not go in the address' in await old.text()
        assert COOKIE_NAME not in old.cookies
        assert (await client.get('/login', headers=HTML)).status == 200
        wrong = await client.post('/login', data={'token': 'wrong'}, allow_redirects=False)
        assert wrong.status == 401 and 'That token is wrong' in await wrong.text() and COOKIE_NAME not in wrong.cookies

        r = await client.post('/login', data={'token': TOKEN}, allow_redirects=False)
        assert r.status == 303 and r.headers['Location'] == './' and r.headers['Cache-Control'] == 'no-store'
        cookie = r.cookies[COOKIE_NAME]
        assert cookie['httponly'] and cookie['samesite'] == 'Lax' and cookie['path'] == '/'
        assert int(cookie['max-age']) == SESSION_SECONDS and not cookie['secure']
        assert TOKEN not in cookie.value and TOKEN not in r.headers['Set-Cookie']
        client.session.cookie_jar.clear()  # from here on, only the cookies sent by hand count
        session = _cookie_header(cookie.value)
        page = await client.get('/', headers={**HTML, **session})
        assert page.status == 200 and 'fetch("status/server"' in await page.text()
        assert (await client.get('/status/server', headers=session)).status == 200  # what the page polls
        # The cookie opens reads only: no encoding, and it is no bearer token.
        assert (await client.post('/encode', json={'id': 1, 'texts': ['a']}, headers=session)).status == 401
        assert (await client.get('/status/server', headers={'Authorization': f'Bearer {cookie.value}'})).status == 401
        # API clients that ask for / without a token get JSON, as every other endpoint.
        assert (await (await client.get('/')).json())['error']['code'] == 401

    serve(fake, check, token=TOKEN)
    assert fake.calls == []


def test_a_session_expires_and_cannot_be_forged_or_extended(fake):
    signer = TokenCheck(TOKEN)
    now = time.time()
    expired = signer.session_cookie(now=now - SESSION_SECONDS - 60)
    expiry, mac = signer.session_cookie(now=now).split('.')
    flipped = mac[:-1] + ('1' if mac[-1] == '0' else '0')
    forged = [expired, f'{int(expiry) + 10**6}.{mac}', f'{expiry}.{flipped}', TOKEN, f'{expiry}.{TOKEN}',
              f'{expiry}.', 'x' * 40, TokenCheck('another-token').session_cookie()]

    async def check(client):
        client.session.cookie_jar.clear()
        assert (await client.get('/status/server', headers=_cookie_header(f'{expiry}.{mac}'))).status == 200
        for value in forged:
            assert (await client.get('/status/server', headers=_cookie_header(value))).status == 401, value

    serve(fake, check, token=TOKEN)


@pytest.mark.parametrize('headers, secure_cookie, secure', [
    ({}, False, False),
    ({'X-Forwarded-Proto': 'https'}, False, True),  # a TLS reverse proxy in front
    ({'X-Forwarded-Proto': 'http'}, False, False),
    ({}, True, True),  # -http_secure_cookie
])
def test_the_cookie_is_secure_over_tls_or_when_told(fake, headers, secure_cookie, secure):
    async def check(client):
        r = await client.post('/login', data={'token': TOKEN}, headers=headers, allow_redirects=False)
        assert r.status == 303
        assert bool(r.cookies[COOKIE_NAME]['secure']) is secure
        assert ('Secure' in r.headers['Set-Cookie']) is secure
        assert int(r.cookies[COOKIE_NAME]['max-age']) == 60

    serve(fake, check, token=TOKEN, secure_cookie=secure_cookie, session_seconds=60)


def test_the_secure_cookie_flag_reaches_the_settings():
    parse = get_args_parser().parse_args
    assert ProxyConfig.from_namespace(parse(['-http_port', '1', '-http_secure_cookie'])).secure_cookie
    assert not ProxyConfig.from_namespace(parse(['-http_port', '1'])).secure_cookie


def test_the_access_log_never_shows_a_query_string(fake, caplog):
    """-verbose logs every request; a token someone still puts in a URL (an old bookmark) stays out."""
    logger = logging.getLogger('bert_serving.test.access')

    async def main():
        app = create_app(fake, ProxyConfig(http_port=0, port=1, port_out=2, token=TOKEN))
        server = TestServer(app, host='127.0.0.1')
        await server.start_server(access_log=logger, access_log_class=AccessLog)  # as proxy.py's AppRunner
        async with TestClient(server) as client:
            await client.get(f'/?token={TOKEN}', headers=HTML)
            await client.post('/login', data={'token': TOKEN}, allow_redirects=False)
            await client.get(f'/status/server?token={TOKEN}', headers=BEARER)

    with caplog.at_level(logging.DEBUG, logger=logger.name):
        asyncio.run(main())
    lines = [r.getMessage() for r in caplog.records if r.name == logger.name]
    assert len(lines) == 3 and any('GET / -> 401' in line for line in lines), lines
    assert any('POST /login -> 303' in line for line in lines)
    assert TOKEN not in caplog.text


# -- the token's flags ------------------------------------------------------------------------------
def test_the_token_comes_from_the_flag_or_the_first_line_of_its_file(tmp_path):
    path = tmp_path / 'token'
    path.write_text(f'{TOKEN}\n# comment lines after the first are ignored\n')
    assert read_token(token_file=str(path)) == TOKEN
    assert read_token(token=TOKEN) == TOKEN
    assert read_token() == ''
    args = Namespace(http_port=8125, port=5555, port_out=5556, http_token=None, http_token_file=str(path),
                     metrics_public=True)
    settings = ProxyConfig.from_namespace(args)
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
