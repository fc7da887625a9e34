"""The shared input validator: what the client, the ventilator and the HTTP proxy refuse, and how they say it."""
import json

import pytest

from bert_serving.client import BadRequest
from bert_serving.client.validation import JSON, PYTHON, json_type, parse_payload, validate_texts


@pytest.mark.parametrize('texts, is_tokenized, expected', [
    (['a', '', ' ', 'b ||| c'], False, (['a', '', ' ', 'b ||| c'], False)),
    (('a', 'b'), False, (['a', 'b'], False)),
    ([['a', 'b'], []], True, ([['a', 'b'], []], True)),
    (['a'], None, (['a'], False)),
    ([['a'], ('b',)], None, ([['a'], ('b',)], True)),
    (['an emoji \U0001F600'], None, (['an emoji \U0001F600'], False)),
])
def test_valid_inputs_come_back_as_a_list_with_the_flag(texts, is_tokenized, expected):
    assert validate_texts(texts, is_tokenized) == expected


@pytest.mark.parametrize('texts, is_tokenized, message', [
    (['a', 'b', 'c', 5], False, 'texts[3] is int (5), expected str'),
    (['a', None], None, 'texts[1] is NoneType (None), expected str'),
    ([['a', 'b']], False, "texts[0] is list (['a', 'b']), expected str; pass is_tokenized=True for lists of tokens"),
    (['a', ['b']], None, "texts[1] is list (['b']), expected str like texts[0]"),
    ([['a'], 'b'], None, "texts[1] is str ('b'), expected a list of str like texts[0]"),
    ([['a'], 'b'], True, "texts[1] is str ('b'), expected a list of str (is_tokenized=True)"),
    ([['a', 3]], None, 'texts[0][1] is int (3), expected str'),
    ('one', False, "texts is str ('one'), expected a list of str; wrap a single sentence in a list: ['one']"),
    (None, False, 'texts is NoneType (None), expected a list of str'),
    ([], False, 'texts is empty: send a list of str with at least one element'),
    ([], True, 'texts is empty: send a list of token lists (list of str) with at least one element'),
])
def test_python_wording_names_the_element(texts, is_tokenized, message):
    with pytest.raises(BadRequest) as info:
        validate_texts(texts, is_tokenized)
    assert str(info.value) == message


@pytest.mark.parametrize('texts, is_tokenized, message', [
    (None, False, 'texts is missing: send an array of strings'),
    ('hello', False, 'texts is a string, expected an array of strings'),
    ([], False, 'texts is empty: send an array of strings with at least one element'),
    (['a', 'b', 3], False, 'texts[2] is a number, expected a string'),
    (['a', None], False, 'texts[1] is null, expected a string'),
    (['a', True], False, 'texts[1] is a boolean, expected a string'),
    (['a', {'b': 1}], False, 'texts[1] is an object, expected a string'),
    ([['a']], False, 'texts[0] is an array, expected a string'),
    ([['a'], 'b'], True, 'texts[1] is a string, expected an array of token strings (is_tokenized is true)'),
    ([['a', 1]], True, 'texts[0][1] is a number, expected a string'),
])
def test_json_wording_names_the_element(texts, is_tokenized, message):
    with pytest.raises(BadRequest) as info:
        validate_texts(texts, is_tokenized, wording=JSON)
    assert str(info.value) == message


def test_the_field_name_is_the_callers():
    with pytest.raises(BadRequest, match=r'^input\[1\] is a number, expected a string$'):
        validate_texts(['a', 2], False, name='input', wording=JSON)


@pytest.mark.parametrize('texts, is_tokenized, where, char, position', [
    (['fine', 'x \ud800'], False, 'texts[1]', r'\ud800', 2),
    (['\udfff'], None, 'texts[0]', r'\udfff', 0),
    ([['ok', 'a\udc00b']], True, 'texts[0][1]', r'\udc00', 1),
])
def test_a_lone_surrogate_is_refused_where_it_is(texts, is_tokenized, where, char, position):
    for wording in (PYTHON, JSON):
        with pytest.raises(BadRequest) as info:
            validate_texts(texts, is_tokenized, wording=wording)
        assert str(info.value).startswith(f"{where} holds a lone surrogate '{char}' at character {position}")
        assert 'valid UTF-8 text' in str(info.value)


def test_json_type_names():
    assert [json_type(v) for v in (None, True, 1, 1.5, 's', [], {})] == [
        'null', 'a boolean', 'a number', 'a number', 'a string', 'an array', 'an object']


# -- parse_payload: what the ventilator does with a request's payload frame ----------------------

LIMIT = 10000


@pytest.mark.parametrize('payload, msg_len, expected', [
    (b'["a", "b"]', 2, (['a', 'b'], False, False)),
    (b'[["a", "b"], []]', 2, ([['a', 'b'], []], True, False)),
    (b'{"texts": ["a"], "show_tokens": true}', 1, (['a'], False, True)),
    (b'{"texts": [["a"]]}', 1, ([['a']], True, False)),
    ('["caf\u00e9 \U0001F600"]'.encode('utf-8'), 1, (['caf\u00e9 \U0001F600'], False, False)),
    (b'["\\ud83d\\ude00 a pair in JSON escapes"]', 1, (['\U0001F600 a pair in JSON escapes'], False, False)),
])
def test_payloads_that_are_served(payload, msg_len, expected):
    assert parse_payload(payload, msg_len, LIMIT) == expected


@pytest.mark.parametrize('payload, msg_len, message', [
    (b'not json{', 1, 'payload is not valid JSON'),
    (b'["\xff\xfe"]', 1, 'payload is not valid JSON'),
    (b'{"sentences": ["a"]}', 1, 'payload must be a JSON list of strings (or of token lists), got null'),
    (b'42', 1, 'payload must be a JSON list of strings (or of token lists), got a number'),
    (b'"just a string"', 1, 'got a string'),
    (b'{"texts": ["a"], "show_tokens": "yes"}', 1, 'show_tokens is a string, expected true or false'),
    (b'[]', 0, 'texts is empty'),
    (b'[1, 2]', 2, 'texts[0] is int (1), expected str'),
    (b'[null]', 1, 'texts[0] is NoneType (None), expected str'),
    (b'["a", ["b"]]', 2, "texts[1] is list (['b']), expected str like texts[0]"),
    (b'[["a"], "b"]', 2, "texts[1] is str ('b'), expected a list of str like texts[0]"),
    (b'[["a", 3]]', 1, 'texts[0][1] is int (3), expected str'),
    (b'["a", "b"]', 1, 'msg_len frame says 1 but the payload holds 2 inputs'),
    (b'["a"]', -1, 'msg_len frame says -1 but the payload holds 1 inputs'),
    (b'["\\ud800 x", "fine"]', 2, "texts[0] holds a lone surrogate '\\ud800' at character 0"),
    (b'[["\\udc00"]]', 1, "texts[0][0] holds a lone surrogate '\\udc00' at character 0"),
    (b'[' * 50 + b']' * 50, 1, 'texts[0][0] is list'),
    (json.dumps(['word'] * 3000).encode(), 3000, 'exceeds the server limit of 10000 bytes'),
])
def test_payloads_that_are_refused_say_why(payload, msg_len, message):
    with pytest.raises(BadRequest) as info:
        parse_payload(payload, msg_len, LIMIT)
    assert message in str(info.value)


def test_a_payload_nested_beyond_the_json_reader_is_refused():
    # 100,000 levels: beyond the recursion limit of every Python's json (3.13 reads 5,000 levels).
    depth = 100_000
    with pytest.raises(BadRequest, match='payload is nested too deeply to read'):
        parse_payload(b'[' * depth + b']' * depth, 1, 2 * depth)


def test_the_size_limit_is_inclusive():
    payload = json.dumps(['x' * (LIMIT - 4)]).encode()
    assert len(payload) == LIMIT
    assert parse_payload(payload, 1, LIMIT)[0] == ['x' * (LIMIT - 4)]
    with pytest.raises(BadRequest, match=f'request of {LIMIT} bytes exceeds the server limit of {LIMIT - 1}'):
        parse_payload(payload, 1, LIMIT - 1)
