"""What the HTTP endpoints accept and answer: parsing of request bodies, shaping of replies.

``POST /encode`` (bert-as-service 1.10)::

    request  {"id": any, "texts": [str, ...] or [[str, ...], ...], "is_tokenized": bool,
              "show_tokens": bool (new, optional)}
    reply    {"id": <same>, "result": [[float, ...], ...]}     (+ "tokens" with show_tokens)

``POST /v1/embeddings`` (OpenAI)::

    request  {"input": str or [str, ...], "model": str, "encoding_format": "float" | "base64"}
    reply    {"object": "list", "model": str,
              "data": [{"object": "embedding", "index": i, "embedding": [float, ...] or base64}],
              "usage": {"prompt_tokens": n, "total_tokens": n}}

Validation errors name the offending field, e.g. ``texts[3] is a number, expected a string``.
"""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, List, Optional

import numpy as np

from .errors import BadJson, InvalidField, NotSupported

__all__ = ['EncodeRequest', 'EmbeddingsRequest', 'parse_json', 'parse_encode', 'parse_embeddings',
           'encode_reply', 'embeddings_reply', 'json_type']

ENCODING_FORMATS = ('float', 'base64')


def json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    if value is None:
        return 'null'
    if isinstance(value, bool):
        return 'a boolean'
    if isinstance(value, (int, float)):
        return 'a number'
    if isinstance(value, str):
        return 'a string'
    if isinstance(value, list):
        return 'an array'
    return 'an object'


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


def _strings(items: Any, name: str) -> List[Any]:
    """Checks that ``items`` is a non-empty list of strings; the error names the element."""
    if items is None:
        raise InvalidField(f'{name} is missing: send a list of strings')
    if not isinstance(items, list):
        raise InvalidField(f'{name} is {json_type(items)}, expected an array of strings')
    if not items:
        raise InvalidField(f'{name} is empty: send at least one string')
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise InvalidField(f'{name}[{i}] is {json_type(item)}, expected a string')
    return items


def parse_encode(obj: dict) -> EncodeRequest:
    """Validates a ``POST /encode`` body.

    Raises:
        InvalidField: a field is missing or has the wrong type; the message names it.
    """
    is_tokenized = _flag(obj, 'is_tokenized')
    texts = obj.get('texts')
    if not is_tokenized:
        texts = _strings(texts, 'texts')
    else:
        if not isinstance(texts, list) or not texts:
            raise InvalidField(f'texts is {"empty" if texts == [] else json_type(texts)}, expected a non-empty '
                               'array of token arrays (is_tokenized is true)')
        for i, tokens in enumerate(texts):
            if not isinstance(tokens, list):
                raise InvalidField(f'texts[{i}] is {json_type(tokens)}, expected an array of token strings '
                                   '(is_tokenized is true)')
            for j, token in enumerate(tokens):
                if not isinstance(token, str):
                    raise InvalidField(f'texts[{i}][{j}] is {json_type(token)}, expected a string')
    return EncodeRequest(obj.get('id'), texts, is_tokenized, _flag(obj, 'show_tokens'))


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
    inputs = _strings(inputs, 'input')
    model = obj.get('model')
    if model is not None and not isinstance(model, str):
        raise InvalidField(f'model is {json_type(model)}, expected a string')
    encoding_format = obj.get('encoding_format') or 'float'
    if encoding_format not in ENCODING_FORMATS:
        raise InvalidField(f'encoding_format is {encoding_format!r}, expected "float" or "base64"')
    return EmbeddingsRequest(inputs, model, encoding_format)


def encode_reply(request: EncodeRequest, array: np.ndarray, tokens: Optional[list]) -> dict:
    """The ``/encode`` reply; ``array`` is float32 [B, D] (or [B, T, D] with pooling NONE)."""
    body = {'id': request.id, 'result': array.tolist()}
    if request.show_tokens:
        body['tokens'] = tokens
    return body


def _base64(vector: np.ndarray) -> str:
    # OpenAI's base64 format: the raw little-endian float32 bytes of one vector.
    return base64.b64encode(np.ascontiguousarray(vector, dtype='<f4').tobytes()).decode('ascii')


def embeddings_reply(request: EmbeddingsRequest, model: str, array: np.ndarray, tokens: List[List[str]]) -> dict:
    """The OpenAI embeddings reply.

    Args:
        request: The parsed request.
        model: The model name to report.
        array: float32 [B, D], row i for ``request.inputs[i]``.
        tokens: B token lists as the model saw them ([CLS]/[SEP] included, after truncation).

    Raises:
        NotSupported: the server pools nothing (NONE), so there is no single vector per input.
    """
    if array.ndim != 2:
        raise NotSupported('the server runs with -pooling_strategy NONE and returns one vector per token; '
                           '/v1/embeddings needs one vector per input: use POST /encode instead')
    encode = _base64 if request.encoding_format == 'base64' else (lambda v: v.tolist())
    num_tokens = sum(len(t) for t in tokens)
    return {
        'object': 'list',
        'data': [{'object': 'embedding', 'index': i, 'embedding': encode(row)} for i, row in enumerate(array)],
        'model': model,
        'usage': {'prompt_tokens': num_tokens, 'total_tokens': num_tokens},
    }
