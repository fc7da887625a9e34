"""The proxy's routes, middlewares and metrics against a fake backend (``http_support.FakeBackend``):
no server, milliseconds each.
"""
from __future__ import annotations

import asyncio
import base64
import json
import logging

import numpy as np
import pytest

from bert_serving.client.errors import (BadRequest, BertServerBusyError, BertServerError,
                                        BertServerShuttingDownError, BertTimeoutError)
from bert_serving.client.protocol import ErrorCode
from bert_serving.server.http.app import model_name
from bert_serving.server.args import get_args_parser
from bert_serving.server.errors import ConfigError
from bert_serving.server.http.errors import BackendError, BackendTimeout, BackendUnavailable
from bert_serving.server.http.middleware import INTERNAL_ERROR
from bert_serving.server.http.settings import MAX_INPUTS, ProxyConfig

from http_support import READY_STATUS, metric_sample, serve

def test_encode_returns_the_id_and_one_float_list_per_text(fake):
    async def check(client):
        r = await client.post('/encode', json={'id': 'abc', 'texts': ['hello world', 'a']})
        assert r.status == 200
        assert await r.json() == {'id': 'abc', 'result': [[11.0, 2.0, 0.0, -1.0], [1.0, 1.0, 1.0, -1.0]],
                                  'status': 200}
        r = await client.post('/encode', json={'id': 2, 'texts': [['hello', 'world']], 'is_tokenized': True,
                                               'show_tokens': True})
        body = await r.json()
        assert r.status == 200 and body['tokens'] == [['[CLS]', 'hello', 'world', '[SEP]']]

    serve(fake, check)
    assert fake.calls == [(['hello world', 'a'], False), ([['hello', 'world']], True)]


@pytest.mark.parametrize('encoding_format', ['float', 'base64', None])
def test_embeddings_have_the_openai_shape_and_count_tokens(fake, encoding_format):
    async def check(client):
        body = {'input': ['hello world', 'a b c'], 'model': 'my-model'}
        if encoding_format:
            body['encoding_format'] = encoding_format
        r = await client.post('/v1/embeddings', json=body)
        reply = await r.json()
        assert r.status == 200
        assert reply['object'] == 'list' and reply['model'] == 'my-model'
        assert reply['usage'] == {'prompt_tokens': 4 + 5, 'total_tokens': 4 + 5}
        assert [d['index'] for d in reply['data']] == [0, 1]
        assert all(d['object'] == 'embedding' for d in reply['data'])
        vectors = [d['embedding'] for d in reply['data']]
        if encoding_format == 'base64':
            vectors = [np.frombuffer(base64.b64decode(v), dtype='<f4').tolist() for v in vectors]
        assert vectors == [[11.0, 2.0, 0.0, -1.0], [5.0, 3.0, 1.0, -1.0]]

    serve(fake, check)
    # The server is not asked for the word pieces (the texts themselves): the proxy counts them.
    assert fake.calls == [(['hello world', 'a b c'], False)]


def test_embeddings_default_model_is_the_server_model_and_a_string_input_is_one_text(fake):
    async def check(client):
        reply = await (await client.post('/v1/embeddings', json={'input': 'hello'})).json()
        assert reply['model'] == 'fake-bert' and len(reply['data']) == 1
        models = await (await client.get('/v1/models')).json()
        assert models['data'][0]['id'] == 'fake-bert'

    serve(fake, check)


@pytest.mark.parametrize('model_dir, name', [
    ('/models/fake-bert/model', 'fake-bert'), ('/x/uncased_L-12_H-768_A-12/', 'uncased_L-12_H-768_A-12'),
    (None, 'bert'), ('model', 'bert')])
def test_model_name(model_dir, name):
    assert model_name(model_dir) == name


def test_embeddings_refuse_token_level_results(fake):
    fake.token_level = True

    async def check(client):
        r = await client.post('/v1/embeddings', json={'input': ['a']})
        assert r.status == 400
        assert 'NONE' in (await r.json())['error']['message']

    serve(fake, check)


@pytest.mark.parametrize('path', ['/encode', '/v1/embeddings'])
@pytest.mark.parametrize('raw', [b'{"texts": [', b'not json', b'\xff\xfe'])
def test_bad_json_is_400(fake, path, raw):
    async def check(client):
        r = await client.post(path, data=raw)
        body = await r.json()
        assert r.status == 400
        assert body['error']['type'] == 'invalid_request_error' and 'not valid JSON' in body['error']['message']

    serve(fake, check)


@pytest.mark.parametrize('path, body, names', [
    ('/encode', ['a', 'b'], 'request body is an array'),
    ('/encode', {}, 'texts is missing'),
    ('/encode', {'texts': 'hello'}, 'texts is a string'),
    ('/encode', {'texts': []}, 'texts is empty'),
    ('/encode', {'texts': ['a', 'b', 3]}, 'texts[2] is a number'),
    ('/encode', {'texts': ['a', None]}, 'texts[1] is null'),
    ('/encode', {'texts': ['a'], 'is_tokenized': 'yes'}, 'is_tokenized is a string'),
    ('/encode', {'texts': [['a'], 'b'], 'is_tokenized': True}, 'texts[1] is a string'),
    ('/encode', {'texts': [['a', 1]], 'is_tokenized': True}, 'texts[0][1] is a number'),
    ('/encode', {'texts': [['a']]}, 'texts[0] is an array'),
    ('/v1/embeddings', {}, 'input is missing'),
    ('/v1/embeddings', {'input': 5}, 'input is a number'),
    ('/v1/embeddings', {'input': ['a', {'b': 1}]}, 'input[1] is an object'),
    ('/v1/embeddings', {'input': [1, 2, 3]}, 'token ids'),
    ('/v1/embeddings', {'input': 'a', 'model': 3}, 'model is a number'),
    ('/v1/embeddings', {'input': 'a', 'encoding_format': 'hex'}, 'encoding_format'),
    ('/encode', {'texts': ['fine', 'half \ud800']}, "texts[1] holds a lone surrogate '\\ud800' at character 5"),
    ('/v1/embeddings', {'input': ['\udfff']}, "input[0] holds a lone surrogate"),
])
def test_wrong_types_are_422_naming_the_element(fake, path, body, names):
    async def check(client):
        r = await client.post(path, json=body)
        error = (await r.json())['error']
        assert r.status == 422 and error['code'] == 422
        assert names in error['message']

    serve(fake, check)
    assert fake.calls == []


def test_a_body_over_the_limit_is_413(fake):
    async def check(client):
        r = await client.post('/encode', data=json.dumps({'texts': ['x' * 2000]}))
        assert r.status == 413
        assert '1000 bytes' in (await r.json())['error']['message']
        assert (await client.post('/encode', json={'texts': ['x' * 500]})).status == 200

    serve(fake, check, max_body_bytes=1000)


def test_more_inputs_than_max_inputs_is_413_saying_the_limit_and_what_to_do(fake):
    async def check(client):
        for reply in (await client.post('/encode', json={'texts': ['a'] * 4}),
                      await client.post('/encode', data={'texts': ['a'] * 4}),
                      await client.post('/v1/embeddings', json={'input': ['a'] * 4})):
            body = await reply.json()
            assert reply.status == body['status'] == body['error']['code'] == 413
            message = body['error']['message']
            assert 'holds 4 inputs' in message and 'at most 3' in message and '-http_max_inputs' in message
        assert (await client.post('/encode', json={'texts': ['a'] * 3})).status == 200
        assert (await client.post('/v1/embeddings', json={'input': ['a'] * 3})).status == 200

    serve(fake, check, max_inputs=3)
    assert [len(texts) for texts, _ in fake.calls] == [3, 3], 'a refused request reached the server'


def test_max_inputs_comes_from_its_flag():
    parse = get_args_parser().parse_args
    assert ProxyConfig.from_namespace(parse(['-http_port', '1'])).max_inputs == MAX_INPUTS == 2048
    assert ProxyConfig.from_namespace(parse(['-http_port', '1', '-http_max_inputs', '10'])).max_inputs == 10
    with pytest.raises(ConfigError, match='http_max_inputs must be'):
        ProxyConfig.from_namespace(parse(['-http_port', '1', '-http_max_inputs', '0']))


def test_max_connect_below_one_is_a_config_error():
    parse = get_args_parser().parse_args
    with pytest.raises(ConfigError, match='http_max_connect must be positive, got 0'):
        ProxyConfig.from_namespace(parse(['-http_port', '1', '-http_max_connect', '0']))


def test_unknown_route_is_404_and_wrong_method_405_both_json(fake):
    async def check(client):
        r = await client.get('/nope')
        assert r.status == 404 and (await r.json())['error']['type'] == 'not_found_error'
        r = await client.get('/encode')
        assert r.status == 405 and 'POST' in r.headers['Allow']
        assert 'GET is not allowed' in (await r.json())['error']['message']

    serve(fake, check)


@pytest.mark.parametrize('error, status', [
    (BackendError('the server failed this request: boom'), 502),
    (BackendUnavailable('closed'), 503),
    (BackendTimeout('no reply'), 504),
])
def test_backend_failures_map_to_status_codes(fake, error, status):
    fake.error = error

    async def check(client):
        r = await client.post('/encode', json={'texts': ['a']})
        body = await r.json()
        assert r.status == status and body['error']['code'] == status
        assert str(error) in body['error']['message']

    serve(fake, check)


def test_a_bug_is_500_internal_error_and_only_the_log_has_the_detail(fake, caplog):
    fake.error = KeyError('/srv/secret/path and the text "my private sentence"')

    async def check(client):
        r = await client.post('/encode', json={'texts': ['my private sentence']})
        body = await r.json()
        assert (r.status, body['status'], body['error']['type']) == (500, 500, 'server_error')
        assert body['error']['message'] == INTERNAL_ERROR and 'internal error' in INTERNAL_ERROR
        assert 'secret' not in await r.text() and 'KeyError' not in await r.text()

    with caplog.at_level(logging.ERROR):
        serve(fake, check)
    failed = [r for r in caplog.records if r.getMessage() == 'POST /encode failed']
    assert len(failed) == 1 and failed[0].exc_info[0] is KeyError and '/srv/secret/path' in caplog.text


def test_requests_beyond_max_connect_get_429_at_once_while_status_stays_open(fake):
    async def check(client):
        fake.hold = asyncio.Event()

        async def encode():
            r = await client.post('/encode', json={'texts': ['a']})
            return r.status, r.headers.get('Retry-After')

        admitted = [asyncio.ensure_future(encode()) for _ in range(2)]
        await fake.wait_calls(2)  # both are in flight, held by the fake
        refused = await asyncio.gather(*(encode() for _ in range(3)))
        assert refused == [(429, '1')] * 3
        health = await client.get('/health')
        assert health.status == 200, 'probes are not limited'
        fake.hold.set()
        assert await asyncio.gather(*admitted) == [(200, None)] * 2
        assert len(fake.calls) == 2

    serve(fake, check, max_connect=2)


@pytest.mark.parametrize('error, status, retry_after', [
    (BertServerBusyError('queue full', retry_after=2.1), 429, '3'),
    (BertServerBusyError('queue full', retry_after=0.2), 429, '1'),
    (BertServerBusyError('queue full'), 429, '1'),
    (BertServerShuttingDownError('server shutting down'), 503, None),
    (BertServerError('texts[0] is bad', code=ErrorCode.BAD_REQUEST), 422, None),
    (BadRequest('texts[0] holds a lone surrogate'), 422, None),
    (BertServerError('past its deadline', code=ErrorCode.TIMEOUT), 504, None),
    (BertTimeoutError('no reply'), 504, None),
    (BertServerError('worker died', code=ErrorCode.FAILED), 502, None),
    (BertServerError('a 1.10 server failed'), 502, None),
])
def test_server_errors_map_to_status_codes_by_their_code(fake, error, status, retry_after):
    fake.error = error

    async def check(client):
        r = await client.post('/v1/embeddings', json={'input': 'a'})
        body = await r.json()
        assert (r.status, body['status'], body['error']['code']) == (status, status, status)
        assert r.headers.get('Retry-After') == retry_after
        assert str(error) in body['error']['message']

    serve(fake, check)


def test_health_is_503_until_every_worker_is_ready(fake):
    async def check(client):
        fake.status = {**READY_STATUS, 'ready': False, 'num_ready_worker': 0}
        r = await client.get('/health')
        assert r.status == 503 and (await r.json())['status'] == 'loading'
        fake.status = {**READY_STATUS, 'ready': True, 'num_ready_worker': 1}  # a worker restarts
        assert (await client.get('/health')).status == 503
        fake.status = dict(READY_STATUS)
        r = await client.get('/health')
        assert r.status == 200
        assert await r.json() == {'status': 'ready', 'ready': True, 'num_worker': 2, 'num_ready_worker': 2}
        fake.status = BackendTimeout('no reply within 5s')
        r = await client.get('/health')
        assert r.status == 503 and (await r.json())['status'] == 'unavailable'

    serve(fake, check, health_cache_seconds=0)


def test_health_of_a_front_counts_remote_workers(fake):
    async def check(client):
        fake.status = {**READY_STATUS, 'ready': True, 'num_worker': 0, 'num_ready_worker': 0}
        assert (await client.get('/health')).status == 503  # a front with no worker serves nobody
        fake.status = {**READY_STATUS, 'ready': True, 'num_worker': 0, 'num_ready_worker': 1}
        assert (await client.get('/health')).status == 200
        fake.status = {**READY_STATUS, 'ready': True, 'num_worker': 2, 'num_ready_worker': 3}  # + a remote
        assert (await client.get('/health')).status == 200

    serve(fake, check, health_cache_seconds=0)


def test_health_answers_from_a_status_cached_for_a_while(fake):
    async def check(client):
        replies = await asyncio.gather(*(client.get('/health') for _ in range(20)))
        assert [r.status for r in replies] == [200] * 20
        for _ in range(10):
            assert (await client.get('/health')).status == 200
        assert fake.status_calls == 1, 'every /health call made the server build a SHOW_STATUS reply'
        await client.get('/status/server')  # the dashboard's poll stays live
        assert fake.status_calls == 2

    serve(fake, check, health_cache_seconds=3600)


def test_health_caches_a_failure_too_and_asks_again_once_it_is_old(fake):
    async def check(client):
        fake.status = BackendTimeout('no reply within 5s')
        assert [(await client.get('/health')).status for _ in range(5)] == [503] * 5
        assert fake.status_calls == 1, 'a dead server got one SHOW_STATUS per probe'

    serve(fake, check, health_cache_seconds=3600)

    fake.status_calls = 0

    async def uncached(client):
        for _ in range(3):
            await client.get('/health')
        assert fake.status_calls == 3

    serve(fake, uncached, health_cache_seconds=0)


def test_cors_preflight_and_header(fake):
    async def check(client):
        r = await client.options('/v1/embeddings', headers={
            'Origin': 'https://example.org', 'Access-Control-Request-Method': 'POST',
            'Access-Control-Request-Headers': 'content-type, authorization'})
        assert r.status == 204
        assert r.headers['Access-Control-Allow-Origin'] == 'https://example.org'
        assert 'POST' in r.headers['Access-Control-Allow-Methods']
        assert r.headers['Access-Control-Allow-Headers'] == 'content-type, authorization'
        for response in (await client.get('/status/client'), await client.post('/encode', data=b'{')):
            assert response.headers['Access-Control-Allow-Origin'] == 'https://example.org'

    serve(fake, check, cors='https://example.org')


def test_metrics_count_requests_sequences_and_read_the_server_status(fake):
    async def check(client):
        before = await (await client.get('/metrics')).text()
        await client.post('/encode', json={'texts': ['a', 'b', 'c']})
        await client.post('/encode', json={'texts': 3})
        after = await (await client.get('/metrics')).text()
        ok = 'bert_http_requests_total{code="200",endpoint="/encode",method="POST"}'
        bad = 'bert_http_requests_total{code="422",endpoint="/encode",method="POST"}'
        assert metric_sample(after, ok) == metric_sample(before, ok) + 1
        assert metric_sample(after, bad) == metric_sample(before, bad) + 1
        assert metric_sample(after, 'bert_http_sequences_total{endpoint="/encode"}') == 3
        assert 'bert_http_request_duration_seconds_bucket{endpoint="/encode",le="0.005"}' in after
        assert metric_sample(after, 'bert_http_requests_in_flight') == 0
        assert metric_sample(after, 'bert_server_up') == 1
        assert metric_sample(after, 'bert_worker_batches_total{worker="1"}') == 4
        assert metric_sample(after, 'bert_worker_sequences_total{worker="0"}') == 10
        assert metric_sample(after, 'bert_server_data_requests_total') == 7
        assert metric_sample(after, 'bert_server_ready_workers') == 2
        fake.status = BackendTimeout('gone')
        down = await (await client.get('/metrics')).text()
        assert metric_sample(down, 'bert_server_up') == 0 and 'bert_http_requests_total' in down

    serve(fake, check)


def test_index_serves_the_self_contained_dashboard(fake):
    async def check(client):
        r = await client.get('/')
        html = await r.text()
        assert r.status == 200 and r.content_type == 'text/html'
        for element in ('id="model"', 'id="num-worker"', 'id="num-requests"', 'id="num-seqs"', 'id="rps-chart"'):
            assert element in html
        assert 'http://' not in html and 'https://' not in html, 'no external resources: it must work offline'

    serve(fake, check)


def test_status_endpoints(fake):
    async def check(client):
        assert await (await client.get('/status/server')).json() == {**READY_STATUS, 'status': 200}
        assert await (await client.get('/status/client')).json() == {
            'identity': 'fake', 'num_pending_request': 0, 'status': 200}

    serve(fake, check)
