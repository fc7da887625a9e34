"""What /encode accepts and answers, as 1.10's Flask proxy did: JSON or a form, ``"status": 200``
in the reply; and every parser held to the JSON Schema that /openapi.json publishes for it.
"""
from __future__ import annotations

import json

import aiohttp
import pytest
from jsonschema import Draft202012Validator
from multidict import MultiDict

from bert_serving.server.http import schemas
from bert_serving.server.http.errors import HttpError

from http_support import serve

HELLO = [11.0, 2.0, 0.0, -1.0]  # the fake's vector of 'hello world' at index 0


def test_the_1_10_readme_request_gets_the_1_10_reply(fake):
    async def check(client):
        r = await client.post('/encode', json={'id': 123, 'texts': ['hello world', 'good day!'],
                                               'is_tokenized': False})
        assert r.status == 200
        assert await r.json() == {'id': 123, 'result': [HELLO, [9.0, 2.0, 1.0, -1.0]], 'status': 200}

    serve(fake, check)


def test_a_urlencoded_form_with_repeated_texts_is_one_text_per_field(fake):
    async def check(client):
        # What requests.post(url, data={'id': 7, 'texts': [...]}) sends.
        r = await client.post('/encode', data=[('id', '7'), ('texts', 'hello world'), ('texts', '[1] a')])
        assert r.status == 200
        assert await r.json() == {'id': '7', 'result': [HELLO, [5.0, 2.0, 1.0, -1.0]], 'status': 200}

    serve(fake, check)
    assert fake.calls == [(['hello world', '[1] a'], False)]


def test_a_form_field_holding_a_json_array_is_read_as_json_texts(fake):
    async def check(client):
        r = await client.post('/encode', data={'texts': json.dumps([['hello', 'world'], ['a']]),
                                               'is_tokenized': 'True', 'show_tokens': 'on'})
        body = await r.json()
        assert r.status == 200 and body['id'] is None
        assert body['tokens'] == [['[CLS]', 'hello', 'world', '[SEP]'], ['[CLS]', 'a', '[SEP]']]
        r = await client.post('/encode', data={'texts': '["one", "two"]', 'is_tokenized': 'false'})
        assert len((await r.json())['result']) == 2

    serve(fake, check)
    assert fake.calls == [([['hello', 'world'], ['a']], True), (['one', 'two'], False)]


def test_a_multipart_form_works_like_a_urlencoded_one(fake):
    async def check(client):
        form = aiohttp.FormData([('id', 'x'), ('texts', 'hello world'), ('texts', 'b')], default_to_multipart=True)
        r = await client.post('/encode', data=form)
        assert r.status == 200 and r.content_type == 'application/json'
        assert await r.json() == {'id': 'x', 'result': [HELLO, [1.0, 1.0, 1.0, -1.0]], 'status': 200}

    serve(fake, check)
    assert fake.calls == [(['hello world', 'b'], False)]


@pytest.mark.parametrize('fields, names', [
    ([('id', '1')], 'texts is missing'),
    ([('texts', 'a'), ('is_tokenized', 'yes')], "is_tokenized is 'yes'"),
    ([('texts', 'a'), ('show_tokens', '2')], "show_tokens is '2'"),
    ([('texts', 'a b'), ('is_tokenized', 'true')], 'texts[0] is a string, expected an array of token strings'),
    ([('texts', '[]')], 'texts is empty'),
    ([('texts', '["a", 3]')], 'texts[1] is a number'),
])
def test_a_wrong_form_is_422_naming_the_field(fake, fields, names):
    async def check(client):
        r = await client.post('/encode', data=fields)
        body = await r.json()
        assert r.status == 422 and body['status'] == 422 and names in body['error']['message']

    serve(fake, check)
    assert fake.calls == []


def test_a_file_in_a_multipart_form_is_refused(fake):
    async def check(client):
        form = aiohttp.FormData()
        form.add_field('texts', b'hello world', filename='texts.txt', content_type='text/plain')
        r = await client.post('/encode', data=form)
        body = await r.json()
        assert r.status == 422 and 'texts is a file upload' in body['error']['message']

    serve(fake, check)


def test_an_unreadable_multipart_body_is_400_and_a_big_form_413(fake):
    async def check(client):
        r = await client.post('/encode', data=b'--x\r\nnonsense', headers={'Content-Type': 'multipart/form-data'})
        body = await r.json()
        assert r.status == 400 and body['status'] == 400 and 'multipart/form-data' in body['error']['message']
        r = await client.post('/encode', data={'texts': 'x' * 2000})
        assert r.status == 413 and (await r.json())['status'] == 413

    serve(fake, check, max_body_bytes=1000)


def test_the_1_10_status_routes_carry_status_200_and_the_others_keep_their_shape(fake):
    async def check(client):
        for path in ('/status/server', '/status/client'):
            assert (await (await client.get(path)).json())['status'] == 200
        assert (await (await client.get('/health')).json())['status'] == 'ready'
        embeddings = await (await client.post('/v1/embeddings', json={'input': 'a'})).json()
        assert 'status' not in embeddings  # OpenAI's shape has none

    serve(fake, check)


# (path, body) pairs for the parser-versus-schema check: valid ones first, then one per rule.
ENCODE_BODIES = [
    {'texts': ['a']}, {'id': [1, {'x': None}], 'texts': ['a', ''], 'is_tokenized': False, 'show_tokens': True},
    {'texts': [['a'], []], 'is_tokenized': True}, {'texts': ['a'], 'is_tokenized': None, 'extra': 1},
    {}, {'texts': None}, {'texts': 'hello'}, {'texts': []}, {'texts': ['a', 3]}, {'texts': ['a', None]},
    {'texts': ['a'], 'is_tokenized': 'yes'}, {'texts': ['a'], 'show_tokens': 1}, {'texts': [['a']]},
    {'texts': [['a'], 'b'], 'is_tokenized': True}, {'texts': [['a', 1]], 'is_tokenized': True},
    {'texts': [], 'is_tokenized': True},
]
EMBEDDINGS_BODIES = [
    {'input': 'a'}, {'input': ['a', 'b'], 'model': 'm', 'encoding_format': 'base64'},
    {'input': [''], 'model': None, 'encoding_format': None, 'user': 'u'},
    {}, {'input': 5}, {'input': []}, {'input': ['a', {'b': 1}]}, {'input': [1, 2, 3]}, {'input': [[1, 2]]},
    {'input': 'a', 'model': 3}, {'input': 'a', 'encoding_format': 'hex'}, {'input': 'a', 'encoding_format': ''},
]
FORMS = [
    {'texts': ['a', 'b']}, {'id': ['1'], 'texts': ['a'], 'is_tokenized': ['False'], 'show_tokens': ['on']},
    {'texts': ['a'], 'is_tokenized': ['']},
    {'id': ['1']}, {'texts': ['a'], 'is_tokenized': ['yes']}, {'texts': ['a'], 'show_tokens': ['TRUE']},
]


def _passes(parse, body) -> bool:
    try:
        parse(body)
    except HttpError:
        return False
    return True


@pytest.mark.parametrize('parse, schema, body', [
    *[pytest.param(schemas.parse_encode, schemas.ENCODE_SCHEMA, b, id=f'encode {json.dumps(b)}')
      for b in ENCODE_BODIES],
    *[pytest.param(schemas.parse_embeddings, schemas.EMBEDDINGS_SCHEMA, b, id=f'embeddings {json.dumps(b)}')
      for b in EMBEDDINGS_BODIES],
])
def test_a_json_body_passes_its_parser_exactly_when_it_passes_its_schema(parse, schema, body):
    Draft202012Validator.check_schema(schema)
    assert _passes(parse, body) == Draft202012Validator(schema).is_valid(body)


@pytest.mark.parametrize('fields', FORMS, ids=json.dumps)
def test_a_plain_form_passes_its_parser_exactly_when_it_passes_its_schema(fields):
    form = MultiDict((name, value) for name, values in fields.items() for value in values)
    # The schema sees each field as OpenAPI does: texts an array, the others single strings.
    as_schema_sees_it = {name: values if name == 'texts' else values[0] for name, values in fields.items()}
    valid = Draft202012Validator(schemas.ENCODE_FORM_SCHEMA).is_valid(as_schema_sees_it)
    assert _passes(schemas.parse_encode_form, form) == valid
