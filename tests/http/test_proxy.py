"""The HTTP proxy in front of a real server (tiny model): same vectors as BertClient, OpenAI
compatibility with real token counts, hundreds of concurrent requests, errors, health and metrics.
"""
from __future__ import annotations

import asyncio
import base64
import json

import aiohttp
import numpy as np
import pytest
from openai import OpenAI

from http_support import HTTP_TIMEOUT, http, metric_sample

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

MAX_CONNECT = 64
TEXTS = ['hello world', 'the quick brown fox jumps over the lazy dog near the river bank', 'a',
         'how old are you? ||| what is your age?', 'Café naïve résumé', '']
ATOL, RTOL = 1e-6, 1e-5


@pytest.fixture(scope='module')
def tiny(launch_http, tiny_hf_dir):
    with launch_http(tiny_hf_dir, ['-num_worker', '1', '-http_max_connect', str(MAX_CONNECT)]) as running:
        yield running


@pytest.fixture(scope='module')
def expected(tiny):
    """What BertClient gets for TEXTS: float32 [6, 32]."""
    with tiny.client() as bc:
        return bc.encode(TEXTS)


def test_health_was_503_while_the_workers_loaded_then_200(tiny):
    codes = [code for _, code in tiny.health_log]
    assert codes[0] == 503, f'the proxy answered only after the workers were ready: {tiny.health_log}'
    assert codes[-1] == 200 and codes == sorted(codes, reverse=True), codes
    status, _, body = http('GET', tiny.url + '/health')
    assert status == 200 and body == {'status': 'ready', 'ready': True, 'num_worker': 1, 'num_ready_worker': 1}


def test_encode_gives_the_bert_client_vectors(tiny, expected):
    status, headers, body = http('POST', tiny.url + '/encode', {'id': 42, 'texts': TEXTS})
    assert status == 200 and body['id'] == 42
    np.testing.assert_allclose(np.array(body['result'], dtype=np.float32), expected, atol=ATOL, rtol=RTOL)
    assert headers['Access-Control-Allow-Origin'] == '*'


def test_encode_tokenized_and_show_tokens(tiny):
    tokenized = [['hello', 'world'], ['a', '|||', 'b']]
    with tiny.client() as bc:
        want = bc.encode(tokenized, is_tokenized=True)
    status, _, body = http('POST', tiny.url + '/encode', {'texts': tokenized, 'is_tokenized': True,
                                                          'show_tokens': True})
    assert status == 200
    np.testing.assert_allclose(np.array(body['result'], dtype=np.float32), want, atol=ATOL, rtol=RTOL)
    assert body['tokens'] == [['[CLS]', 'hello', 'world', '[SEP]'], ['[CLS]', 'a', '[SEP]', 'b', '[SEP]']]


def test_tokens_are_sent_only_to_the_request_that_asks(tiny):
    # The server runs without -show_tokens_to_client: a list payload (what 1.10 clients send) gets none.
    with tiny.client() as bc:
        with pytest.warns(UserWarning, match='show_tokens_to_client'):
            result = bc.encode(['hello world'], show_tokens=True)
    assert isinstance(result, np.ndarray)


@pytest.mark.parametrize('encoding_format', [None, 'float', 'base64'])
def test_openai_client_gets_the_vectors_and_real_token_counts(tiny, expected, encoding_format):
    # Without encoding_format the openai package asks for base64 and decodes it itself; with an
    # explicit 'base64' it hands the string over as it came.
    _, _, tokens = http('POST', tiny.url + '/encode', {'texts': TEXTS, 'show_tokens': True})
    client = OpenAI(base_url=tiny.url + '/v1', api_key='unused', timeout=HTTP_TIMEOUT, max_retries=0)
    try:
        kwargs = {'encoding_format': encoding_format} if encoding_format else {}
        reply = client.embeddings.create(model='tiny-bert', input=TEXTS, **kwargs)
    finally:
        client.close()
    assert reply.model == 'tiny-bert'
    assert [d.index for d in reply.data] == list(range(len(TEXTS)))
    if encoding_format == 'base64':
        vectors = np.stack([np.frombuffer(base64.b64decode(d.embedding), dtype='<f4') for d in reply.data])
    else:
        vectors = np.array([d.embedding for d in reply.data], dtype=np.float32)
    np.testing.assert_allclose(vectors, expected, atol=ATOL, rtol=RTOL)
    num_tokens = sum(len(t) for t in tokens['tokens'])
    assert num_tokens > 2 * len(TEXTS)
    assert reply.usage.prompt_tokens == reply.usage.total_tokens == num_tokens


def test_openai_base64_is_little_endian_float32(tiny, expected):
    status, _, body = http('POST', tiny.url + '/v1/embeddings', {'input': TEXTS[0], 'encoding_format': 'base64'})
    assert status == 200 and body['model'] == model_dir_name(tiny)
    vector = np.frombuffer(base64.b64decode(body['data'][0]['embedding']), dtype='<f4')
    np.testing.assert_allclose(vector, expected[0], atol=ATOL, rtol=RTOL)


def model_dir_name(tiny) -> str:
    from bert_serving.server.http.app import model_name
    _, _, status = http('GET', tiny.url + '/status/server')
    return model_name(status['model_dir'])


def test_256_concurrent_requests_are_answered_or_refused_never_left_hanging(tiny):
    texts = [f'request {i} says ' + ' '.join(['word'] * (i % 7)) for i in range(256)]
    with tiny.client() as bc:
        want = bc.encode(texts)

    async def one(session, i):
        async with session.post(tiny.url + '/encode', json={'id': i, 'texts': [texts[i]]}) as r:
            return i, r.status, await r.json()

    async def main():
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
            return await asyncio.wait_for(asyncio.gather(*(one(session, i) for i in range(256))), 90)

    results = asyncio.run(main())
    answered = 0
    for i, status, body in results:
        assert status in (200, 429, 503), (status, body)
        if status == 200:
            answered += 1
            assert body['id'] == i
            np.testing.assert_allclose(np.array(body['result'][0], dtype=np.float32), want[i], atol=ATOL, rtol=RTOL)
        else:
            assert body['error']['code'] == status
    assert answered >= MAX_CONNECT
    _, _, client_status = http('GET', tiny.url + '/status/client')
    assert client_status['num_pending_request'] == 0 and client_status['num_timeout'] == 0


def test_errors_are_json_with_status_codes(tiny):
    status, _, body = http('POST', tiny.url + '/encode', raw=b'{"texts": ["a"')
    assert status == 400 and 'not valid JSON' in body['error']['message']
    status, _, body = http('POST', tiny.url + '/encode', {'texts': ['a', ['b']]})
    assert status == 422 and body['error']['message'] == 'texts[1] is an array, expected a string'
    status, _, body = http('POST', tiny.url + '/v1/embeddings', {'input': ['a', 7]})
    assert status == 422 and body['error']['message'] == 'input[1] is a number, expected a string'
    status, _, body = http('POST', tiny.url + '/encode', raw=json.dumps({'texts': ['x' * (17 << 20)]}).encode())
    assert status == 413 and 'bytes' in body['error']['message']
    status, _, body = http('GET', tiny.url + '/no/such/route')
    assert status == 404 and body['error']['type'] == 'not_found_error'


def test_status_endpoints(tiny):
    status, _, server = http('GET', tiny.url + '/status/server')
    assert status == 200
    for key in ('statistic', 'ready', 'num_ready_worker', 'num_worker', 'batches_per_worker', 'device_map',
                'worker_devices', 'model_dir', 'pooling_strategy', 'max_seq_len', 'output_dim'):
        assert key in server
    assert server['output_dim'] == 32 and server['pooling_strategy'] == 'REDUCE_MEAN'
    status, _, client = http('GET', tiny.url + '/status/client')
    assert status == 200 and client['port'] == tiny.port and client['port_out'] == tiny.port_out
    assert client['identity'].startswith('http-proxy-') and client['connected']


def test_metrics_rise_with_requests(tiny):
    _, headers, before = http('GET', tiny.url + '/metrics')
    assert headers['Content-Type'].startswith('text/plain')
    http('POST', tiny.url + '/encode', {'texts': ['a', 'b']})
    http('POST', tiny.url + '/v1/embeddings', {'input': ['c']})
    _, _, after = http('GET', tiny.url + '/metrics')
    for name in ('bert_http_requests_total', 'bert_http_request_duration_seconds_bucket',
                 'bert_http_requests_in_flight', 'bert_http_sequences_total', 'bert_worker_batches_total',
                 'bert_worker_sequences_total', 'bert_server_up', 'bert_server_data_requests_total'):
        assert name in after
    ok = 'bert_http_requests_total{code="200",endpoint="/encode",method="POST"}'
    assert metric_sample(after, ok) == metric_sample(before, ok) + 1
    seqs = 'bert_http_sequences_total{endpoint="/v1/embeddings"}'
    assert metric_sample(after, seqs) == metric_sample(before, seqs) + 1
    batches = 'bert_worker_batches_total{worker="0"}'
    assert metric_sample(after, batches) >= metric_sample(before, batches) + 2
    requests = 'bert_server_data_requests_total'
    assert metric_sample(after, requests) == metric_sample(before, requests) + 2
