"""gzip for clients that ask for it (1.10's proxy had flask-compress), and error replies that carry
their HTTP status as 1.10's did. Against the fake backend, with replies read as they were sent.
"""
from __future__ import annotations

import gzip
import json

import pytest

from bert_serving.server.http.errors import BackendError
from bert_serving.server.http.middleware import COMPRESS_MIN_BYTES, accepts_gzip

from http_support import serve

BIG_ENCODE = {'id': 1, 'texts': [f'sentence number {i}' for i in range(200)]}


@pytest.mark.parametrize('method, path, body', [
    ('POST', '/encode', BIG_ENCODE), ('GET', '/metrics', None), ('GET', '/', None), ('GET', '/openapi.json', None)])
def test_a_big_reply_is_gzipped_when_the_client_accepts_it_and_plain_otherwise(fake, method, path, body):
    async def check(client):
        r = await client.request(method, path, json=body, headers={'Accept-Encoding': 'gzip'})
        zipped = await r.read()
        assert r.status == 200 and r.headers['Content-Encoding'] == 'gzip'
        assert 'Accept-Encoding' in r.headers['Vary']
        r = await client.request(method, path, json=body, skip_auto_headers=['Accept-Encoding'])
        plain = await r.read()
        assert r.status == 200 and 'Content-Encoding' not in r.headers
        assert len(plain) >= COMPRESS_MIN_BYTES and len(zipped) < len(plain)
        if path == '/metrics':  # its counters move between the two requests
            assert gzip.decompress(zipped).startswith(b'# HELP ')
        else:
            assert gzip.decompress(zipped) == plain

    serve(fake, check, auto_decompress=False)


def test_the_gzipped_encode_reply_decodes_to_the_same_json(fake):
    async def check(client):
        r = await client.post('/encode', json=BIG_ENCODE, headers={'Accept-Encoding': 'deflate, gzip;q=0.8'})
        assert r.headers['Content-Encoding'] == 'gzip' and r.content_type == 'application/json'
        reply = json.loads(gzip.decompress(await r.read()))
        assert reply['id'] == 1 and reply['status'] == 200 and len(reply['result']) == 200
        assert reply['result'][3] == [len('sentence number 3'), 3.0, 3.0, -1.0]

    serve(fake, check, auto_decompress=False)


def test_a_small_reply_or_a_refused_gzip_stays_plain(fake):
    async def check(client):
        r = await client.get('/status/client', headers={'Accept-Encoding': 'gzip'})
        assert 'Content-Encoding' not in r.headers and (await r.json())['identity'] == 'fake'
        r = await client.post('/encode', json=BIG_ENCODE, headers={'Accept-Encoding': 'gzip;q=0, identity'})
        assert 'Content-Encoding' not in r.headers and len((await r.json())['result']) == 200

    serve(fake, check, auto_decompress=False)


@pytest.mark.parametrize('header, accepted', [
    ('gzip', True), ('GZIP', True), ('deflate, gzip', True), ('gzip;q=0.5', True), ('*', True),
    ('', False), ('deflate, br', False), ('gzip;q=0', False), ('gzip; q=0.000', False), ('*;q=0', False),
    ('*, gzip;q=0', False), ('*;q=0, gzip', True), ('gzip;q=zero', False)])
def test_accepts_gzip(header, accepted):
    assert accepts_gzip(header) is accepted


@pytest.mark.parametrize('method, path, body, status', [
    ('POST', '/encode', b'{"texts": [', 400), ('POST', '/encode', {'texts': 3}, 422),
    ('POST', '/v1/embeddings', {'input': []}, 422), ('GET', '/nope', None, 404), ('GET', '/encode', None, 405),
    ('POST', '/encode', {'texts': ['a']}, 502)])
def test_every_error_reply_carries_its_status_and_a_message(fake, method, path, body, status):
    fake.error = BackendError('the server failed this request: boom')

    async def check(client):
        if isinstance(body, bytes):
            r = await client.request(method, path, data=body)
        else:
            r = await client.request(method, path, json=body)
        reply = await r.json()
        assert r.status == status and reply['status'] == status and reply['error']['code'] == status
        assert len(reply['error']['message']) > 10

    serve(fake, check)
