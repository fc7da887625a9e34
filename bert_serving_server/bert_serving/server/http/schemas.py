"""What the HTTP endpoints accept and answer: parsing of request bodies, shaping of replies.

``POST /encode`` (bert-as-service 1.10)::

    request  {"id": any, "texts": [str, ...] or [[str, ...], ...], "is_tokenized": bool,
              "show_tokens": bool (new, optional)}
             or the same fields as a form (urlencoded or multipart), see ``parse_encode_form``
    reply    {"id": <same>, "result": [[float, ...], ...], "status": 200}   (+ "tokens" with show_tokens)

``POST /v1/embeddings`` (OpenAI)::

    request  {"input": str or [str, ...], "model": str, "encoding_format": "float" | "base64"}
    reply    {"object": "list", "model": str,
              "data": [{"object": "embedding", "index": i, "embedding": [float, ...] or base64}],
              "usage": {"prompt_tokens": n, "total_tokens": n}}

Validation errors name the offending field, e.g. ``texts[3] is a number, expected a string``: the
texts go through ``bert_serving.client.validation``, the check the client and the server make too
(which also refuses strings holding a lone surrogate such as ``"\ud800"``, no JSON Schema rule here).

Each shape is also written down as a JSON Schema (``*_SCHEMA``), which ``openapi`` publishes at
``GET /openapi.json``. The tests hold every parser to its schema: a body passes one exactly when it
passes the other.
"""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, List, Mapping, Optional

import numpy as np
from multidict import MultiMapping

from bert_serving.client.errors import BadRequest
from bert_serving.client.validation import JSON, json_type, validate_texts

from .errors import BadJson, InvalidField, NotSupported

__all__ = ['EncodeRequest', 'EmbeddingsRequest', 'parse_json', 'parse_encode', 'parse_encode_form',
           'parse_embeddings', 'encode_reply', 'embeddings_reply', 'json_type', 'FORM_TYPES', 'FORM_FLAGS',
           'ENCODE_SCHEMA', 'ENCODE_FORM_SCHEMA', 'ENCODE_REPLY_SCHEMA', 'EMBEDDINGS_SCHEMA',
           'EMBEDDINGS_REPLY_SCHEMA', 'ERROR_SCHEMA']

ENCODING_FORMATS = ('float', 'base64')
# The content types read as a form, as Flask's request.form did for 1.10's proxy; any other is JSON.
FORM_TYPES = ('application/x-www-form-urlencoded', 'multipart/form-data')
# A form sends flags as text. Python's requests turns True into 'True', an HTML checkbox sends 'on'.
FORM_FLAGS = {'true': True, 'True': True, '1': True, 'on': True,
              'false': False, 'False': False, '0': False, 'off': False, '': False}

_STRINGS = {'type': 'array', 'minItems': 1, 'items': {'type': 'string'}}
_TOKEN_LISTS = {'type': 'array', 'minItems': 1, 'items': {'type': 'array', 'items': {'type': 'string'}}}
_VECTOR = {'type': 'array', 'items': {'type': 'number'}}

ENCODE_SCHEMA = {
    'type': 'object',
    'required': ['texts'],
    'properties': {
        'id': {'description': 'Any JSON value; the reply echoes it.'},
        'texts': {'description': 'Strings; token lists when is_tokenized is true. '
                                 'A string holding " ||| " is a sentence pair.'},
        'is_tokenized': {'type': ['boolean', 'null'], 'default': False},
        'show_tokens': {'type': ['boolean', 'null'], 'default': False,
                        'description': 'Adds the word pieces the model saw to the reply.'},
    },
    'if': {'required': ['is_tokenized'], 'properties': {'is_tokenized': {'const': True}}},
    'then': {'properties': {'texts': _TOKEN_LISTS}},
    'else': {'properties': {'texts': _STRINGS}},
}
ENCODE_FORM_SCHEMA = {
    'type': 'object',
    'required': ['texts'],
    'properties': {
        'id': {'type': 'string', 'description': 'Echoed as a string.'},
        'texts': {'type': 'array', 'minItems': 1, 'items': {'type': 'string'},
                  'description': 'Repeat the field, one text each; or send it once holding a JSON array, '
                                 'read as texts in a JSON body (the way to send token lists).'},
        'is_tokenized': {'type': 'string', 'enum': list(FORM_FLAGS)},
        'show_tokens': {'type': 'string', 'enum': list(FORM_FLAGS)},
    },
}
ENCODE_REPLY_SCHEMA = {
    'type': 'object',
    'required': ['id', 'result', 'status'],
    'properties': {
        'id': {'description': 'The request\'s id; null if it sent none.'},
        'result': {'type': 'array', 'items': {'oneOf': [
            {**_VECTOR, 'description': 'One vector per text.'},
            {'type': 'array', 'items': _VECTOR, 'description': 'With -pooling_strategy NONE: one per token.'}]}},
        'tokens': {'type': 'array', 'items': {'type': 'array', 'items': {'type': 'string'}},
                   'description': 'With show_tokens: the word pieces of each text, [CLS] and [SEP] included.'},
        'status': {'const': 200},
    },
}
EMBEDDINGS_SCHEMA = {
    'type': 'object',
    'required': ['input'],
    'properties': {
        'input': {'oneOf': [{'type': 'string'}, _STRINGS]},
        'model': {'type': ['string', 'null'], 'description': 'Echoed; the server\'s model by default.'},
        'encoding_format': {'enum': [*ENCODING_FORMATS, None], 'default': 'float'},
    },
}
EMBEDDINGS_REPLY_SCHEMA = {
    'type': 'object',
    'required': ['object', 'data', 'model', 'usage'],
    'properties': {
        'object': {'const': 'list'},
        'data': {'type': 'array', 'items': {
            'type': 'object',
            'required': ['object', 'index', 'embedding'],
            'properties': {
                'object': {'const': 'embedding'},
                'index': {'type': 'integer', 'minimum': 0},
                'embedding': {'oneOf': [_VECTOR, {'type': 'string', 'contentEncoding': 'base64',
                                                  'description': 'Little-endian float32 bytes.'}]},
            }}},
        'model': {'type': 'string'},
        'usage': {'type': 'object', 'required': ['prompt_tokens', 'total_tokens'], 'properties': {
            'prompt_tokens': {'type': 'integer', 'minimum': 0}, 'total_tokens': {'type': 'integer', 'minimum': 0}}},
    },
}
ERROR_SCHEMA = {
    'type': 'object',
    'required': ['error', 'status'],
    'properties': {
        'error': {'type': 'object', 'required': ['message', 'type', 'code'], 'properties': {
            'message': {'type': 'string', 'description': 'What went wrong and what to change.'},
            'type': {'type': 'string'},
            'code': {'type': 'integer', 'description': 'The HTTP status.'}}},
        'status': {'type': 'integer', 'description': 'The HTTP status again, as 1.10\'s proxy sent it.'},
    },
}


@dataclass(frozen=True)
class EncodeRequest:
    id: Any
    texts: List[Any]
    is_tokenized: bool
    show_tokens: bool


@dataclass(frozen=True)
class EmbeddingsRequest:
    inputs: List[str]
    model: Optional[str]
    encoding_format: str


def parse_json(body: bytes) -> dict:
    """Decodes a request body that must be a JSON object.

    Raises:
        BadJson: not JSON (400).
        InvalidField: JSON, but not an object (422).
    """
    try:
        obj = json.loads(body)
    except ValueError as e:  # also UnicodeDecodeError
        raise BadJson(f'the request body is not valid JSON ({e}); send a JSON object') from None
    if not isinstance(obj, dict):
        raise InvalidField(f'the request body is {json_type(obj)}, expected a JSON object')
    return obj


def _flag(obj: dict, name: str) -> bool:
    value = obj.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidField(f'{name} is {json_type(value)}, expected true or false')
    return value


def _texts(items: Any, is_tokenized: bool, name: str) -> List[Any]:
    """The shared validator's check of ``items``, its BadRequest answered as 422."""
    try:
        return validate_texts(items, is_tokenized, name=name, wording=JSON)[0]
    except BadRequest as e:
        raise InvalidField(str(e)) from e


def parse_encode(obj: dict) -> EncodeRequest:
    """Validates a ``POST /encode`` body.

    Raises:
        InvalidField: a field is missing or has the wrong type; the message names it.
    """
    is_tokenized = _flag(obj, 'is_tokenized')
    texts = _texts(obj.get('texts'), is_tokenized, 'texts')
    return EncodeRequest(obj.get('id'), texts, is_tokenized, _flag(obj, 'show_tokens'))


def _form_flag(form: Mapping[str, str], name: str) -> bool:
    value = form.get(name, '')
    if value not in FORM_FLAGS:
        raise InvalidField(f'{name} is {value!r}, expected one of {", ".join(repr(v) for v in FORM_FLAGS)}')
    return FORM_FLAGS[value]


def parse_encode_form(form: MultiMapping) -> EncodeRequest:
    """Validates a form-encoded ``POST /encode`` (urlencoded or multipart), as 1.10's Flask proxy took.

    ``texts`` is either repeated, one text per field (what ``requests.post(data={'texts': [...]})``
    sends), or sent once holding a JSON array, which is then read exactly like ``texts`` in a JSON
    body; token lists (``is_tokenized``) can only come that way. A single text that merely starts
    with ``[`` and is no JSON array stays a text. ``id`` stays a string; the flags take ``FORM_FLAGS``.

    Raises:
        InvalidField: a field is missing, a file, or has a wrong value; the message names it.
    """
    for name, value in form.items():
        if not isinstance(value, str):
            raise InvalidField(f'{name} is a file upload; send it as a plain form field')
    texts = form.getall('texts', None)
    if texts is not None and len(texts) == 1 and texts[0].lstrip().startswith('['):
        try:
            texts = json.loads(texts[0])
        except ValueError:
            pass
    return parse_encode({'id': form.get('id'), 'texts': texts,
                         'is_tokenized': _form_flag(form, 'is_tokenized'),
                         'show_tokens': _form_flag(form, 'show_tokens')})


def parse_embeddings(obj: dict) -> EmbeddingsRequest:
    """Validates a ``POST /v1/embeddings`` body.

    Raises:
        InvalidField: a field is missing or has the wrong type; the message names it.
    """
    inputs = obj.get('input')
    if isinstance(inputs, str):
        inputs = [inputs]
    elif isinstance(inputs, list) and inputs and not isinstance(inputs[0], str) and \
            isinstance(inputs[0], (int, list)) and not isinstance(inputs[0], bool):
        raise InvalidField('input holds token ids; this server only takes text: send strings')
    inputs = _texts(inputs, False, 'input')
    model = obj.get('model')
    if model is not None and not isinstance(model, str):
        raise InvalidField(f'model is {json_type(model)}, expected a string')
    encoding_format = obj.get('encoding_format')
    if encoding_format is None:
        encoding_format = 'float'
    if encoding_format not in ENCODING_FORMATS:
        raise InvalidField(f'encoding_format is {encoding_format!r}, expected "float" or "base64"')
    return EmbeddingsRequest(inputs, model, encoding_format)


def encode_reply(request: EncodeRequest, array: np.ndarray, tokens: Optional[list]) -> dict:
    """The ``/encode`` reply; ``array`` is float32 [B, D] (or [B, T, D] with pooling NONE)."""
    body = {'id': request.id, 'result': array.tolist(), 'status': 200}
    if request.show_tokens:
        body['tokens'] = tokens
    return body


def _base64(vector: np.ndarray) -> str:
    # OpenAI's base64 format: the raw little-endian float32 bytes of one vector.
    return base64.b64encode(np.ascontiguousarray(vector, dtype='<f4').tobytes()).decode('ascii')


def embeddings_reply(request: EmbeddingsRequest, model: str, array: np.ndarray, num_tokens: int) -> dict:
    """The OpenAI embeddings reply.

    Args:
        request: The parsed request.
        model: The model name to report.
        array: float32 [B, D], row i for ``request.inputs[i]``.
        num_tokens: the tokens of all B inputs as the model saw them ([CLS]/[SEP] included, after
            truncation; see ``usage.TokenCounter``).

    Raises:
        NotSupported: the server pools nothing (NONE), so there is no single vector per input.
    """
    if array.ndim != 2:
        raise NotSupported('the server runs with -pooling_strategy NONE and returns one vector per token; '
                           '/v1/embeddings needs one vector per input: use POST /encode instead')
    encode = _base64 if request.encoding_format == 'base64' else (lambda v: v.tolist())
    return {
        'object': 'list',
        'data': [{'object': 'embedding', 'index': i, 'embedding': encode(row)} for i, row in enumerate(array)],
        'model': model,
        'usage': {'prompt_tokens': num_tokens, 'total_tokens': num_tokens},
    }
