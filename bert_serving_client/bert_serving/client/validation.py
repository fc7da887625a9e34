"""The one check of what can be encoded, shared by the client, the server's ventilator, its engines
(``engine/features.py``, ``engine/fake.py``) and the HTTP proxy.

What a request may hold, wherever it comes from:

    texts   a non-empty list of str (a str holding ``' ||| '`` is a sentence pair), or
            with ``is_tokenized`` a non-empty list of token lists (list of str; may be empty).
            No str may hold a lone UTF-16 surrogate (``'\\ud800'``, which JSON's ``"\\ud800"``
            decodes to): it is no Unicode text, so it can neither be tokenized nor sent as UTF-8.

Every failure raises :class:`~bert_serving.client.errors.BadRequest` naming the first bad element,
in the words of the caller's audience: Python's (``texts[3] is int (5), expected str``) for the
client, the ventilator and the engines, JSON's (``texts[3] is a number, expected a string``) for
the HTTP proxy.
"""
from __future__ import annotations

import json
import re
import reprlib
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Tuple

from .errors import BadRequest

__all__ = ['Wording', 'PYTHON', 'JSON', 'validate_texts', 'parse_payload', 'json_type', 'python_type']

_SURROGATE = re.compile('[\ud800-\udfff]')


def python_type(value: Any) -> str:
    """A value as a Python programmer knows it: ``int (5)``."""
    return f'{type(value).__name__} ({reprlib.repr(value)})'


def json_type(value: Any) -> str:
    """The JSON name of a decoded value's type: ``a number``."""
    if value is None:
        return 'null'
    if isinstance(value, bool):
        return 'a boolean'
    if isinstance(value, (int, float)):
        return 'a number'
    if isinstance(value, str):
        return 'a string'
    if isinstance(value, (list, tuple)):
        return 'an array'
    return 'an object'


@dataclass(frozen=True)
class Wording:
    """How error messages name types and flags, for one audience.

    Attributes:
        describe: value -> its name in messages.
        string, strings, token_list, token_lists: What is expected, in this audience's words.
        tokenized_flag: How the caller says "these are token lists".
        tokens_hint: Appended when a token list came without that flag.
        missing_is_special: None means "field absent" (JSON bodies), not merely a wrong value.
        wrap_hint: Suggest ``[text]`` when a single str came instead of a list.
    """
    describe: Callable[[Any], str]
    string: str
    strings: str
    token_list: str
    token_lists: str
    tokenized_flag: str
    tokens_hint: str
    missing_is_special: bool
    wrap_hint: bool


PYTHON = Wording(python_type, 'str', 'a list of str', 'a list of str', 'a list of token lists (list of str)',
                 'is_tokenized=True', '; pass is_tokenized=True for lists of tokens',
                 missing_is_special=False, wrap_hint=True)
JSON = Wording(json_type, 'a string', 'an array of strings', 'an array of token strings',
               'an array of token arrays', 'is_tokenized is true', '',
               missing_is_special=True, wrap_hint=False)


def validate_texts(texts: Any, is_tokenized: Optional[bool] = None, *, name: str = 'texts',
                   wording: Wording = PYTHON, allow_empty: bool = False) -> Tuple[List[Any], bool]:
    """Checks a request's inputs.

    Args:
        texts: What the caller wants encoded.
        is_tokenized: Whether ``texts`` holds token lists; None decides by ``texts[0]`` (the wire
            protocol does not say, so the ventilator infers it as 1.10's server did).
        name: The field's name in messages (``'input'`` for OpenAI's embeddings).
        wording: ``PYTHON`` or ``JSON``, after who reads the message.
        allow_empty: Take an empty list (an engine encodes it to no features; a request must
            hold at least one input).

    Returns:
        ``(list(texts), is_tokenized)``.

    Raises:
        BadRequest: ``texts`` is not a list (or tuple), is empty, holds an element of the wrong
            type or a str with a lone surrogate; the message names the first such element.
    """
    w = wording
    if not isinstance(texts, (list, tuple)) or not (texts or allow_empty):
        raise BadRequest(_not_a_list(texts, bool(is_tokenized), name, w))
    if not texts:
        return [], bool(is_tokenized)
    # Inferred from texts[0]: point at it; given by the caller: remind of the flag.
    like = f'like {name}[0]' if is_tokenized is None else f'({w.tokenized_flag})'
    if is_tokenized is None:
        is_tokenized = isinstance(texts[0], (list, tuple))
    for i, item in enumerate(texts):
        where = f'{name}[{i}]'
        if is_tokenized:
            if not isinstance(item, (list, tuple)):
                raise BadRequest(f'{where} is {w.describe(item)}, expected {w.token_list} {like}')
            for j, token in enumerate(item):
                if not isinstance(token, str):
                    raise BadRequest(f'{where}[{j}] is {w.describe(token)}, expected {w.string}')
                _check_unicode(token, f'{where}[{j}]')
        elif isinstance(item, str):
            _check_unicode(item, where)
        else:
            hint = ''
            if isinstance(item, (list, tuple)):
                hint = f' {like}' if like.startswith('like') else w.tokens_hint
            raise BadRequest(f'{where} is {w.describe(item)}, expected {w.string}{hint}')
    return list(texts), is_tokenized


def _not_a_list(texts: Any, is_tokenized: bool, name: str, w: Wording) -> str:
    expected = w.token_lists if is_tokenized else w.strings
    if texts is None and w.missing_is_special:
        return f'{name} is missing: send {expected}'
    if isinstance(texts, (list, tuple)):
        return f'{name} is empty: send {expected} with at least one element'
    hint = ''
    if isinstance(texts, str) and w.wrap_hint:
        hint = f'; wrap a single sentence in a list: [{reprlib.repr(texts)}]'
    return f'{name} is {w.describe(texts)}, expected {expected}{hint}'


def _check_unicode(text: str, where: str) -> None:
    if text.isascii():  # O(1) in CPython; the search takes 6 ms a MiB
        return
    found = _SURROGATE.search(text)
    if found is not None:
        raise BadRequest(f'{where} holds a lone surrogate {found.group()!r} at character {found.start()}, '
                         'which is no Unicode text (in JSON, a "\\ud800"-style escape without its pair); '
                         'send valid UTF-8 text')


def parse_payload(payload: bytes, msg_len: int, max_bytes: int) -> Tuple[List[Any], bool, bool]:
    """Reads and checks the payload of a data request as the ventilator receives it.

    The payload is a JSON list of inputs, as 1.10 clients send it, or (new) an object
    ``{"texts": [...], "show_tokens": true}`` asking for the tokens of this request even when the
    server runs without ``-show_tokens_to_client`` (the HTTP proxy needs them for usage).

    Args:
        payload: The request's payload frame.
        msg_len: The request's msg_len frame: the number of inputs the client says it sent.
        max_bytes: The largest payload the server takes.

    Returns:
        ``(texts, is_tokenized, show_tokens)``; ``is_tokenized`` is decided by ``texts[0]``.

    Raises:
        BadRequest: too large, no JSON, not a list, an invalid input (named), or a msg_len that
            does not match.
    """
    if len(payload) > max_bytes:
        raise BadRequest(f'request of {len(payload)} bytes exceeds the server limit of {max_bytes} '
                         'bytes; send fewer sentences per request')
    try:
        obj = json.loads(payload)
    except RecursionError:
        raise BadRequest('payload is nested too deeply to read; send a JSON list of strings '
                         '(or of token lists)') from None
    except ValueError as e:  # also UnicodeDecodeError
        raise BadRequest(f'payload is not valid JSON ({e}); send a JSON list of strings') from None
    show_tokens = False
    texts = obj
    if isinstance(obj, dict):
        show_tokens = obj.get('show_tokens', False)
        if not isinstance(show_tokens, bool):
            raise BadRequest(f'show_tokens is {json_type(show_tokens)}, expected true or false')
        texts = obj.get('texts')
    if not isinstance(texts, list):
        raise BadRequest(f'payload must be a JSON list of strings (or of token lists), got {json_type(texts)}')
    texts, is_tokenized = validate_texts(texts)
    if msg_len != len(texts):
        raise BadRequest(f'msg_len frame says {msg_len} but the payload holds {len(texts)} inputs')
    return texts, is_tokenized, show_tokens
