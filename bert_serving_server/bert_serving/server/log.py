"""Coloured, per-role loggers: VENTILATOR, SINK, WORKER-n, PROXY, ..."""
from __future__ import annotations

import logging
import re
import sys
from typing import List, Mapping, Sequence

from termcolor import colored

__all__ = ['get_logger', 'sanitize_for_log', 'LOGGED_CHARS', 'redact_args', 'redact_argv', 'SECRET_FLAGS']

# Flags whose value must not reach a log, the start-up table or a SHOW_CONFIG reply.
SECRET_FLAGS = ('http_token',)

# The most characters of one peer-supplied value that reach a log line: enough for a host name, a
# device or the first lines of an error, too few for one peer to flood the log.
LOGGED_CHARS = 200
# Terminal escape sequences (CSI such as colours and cursor moves, OSC such as window titles, and
# the two-character ones), then single control characters: C0, DEL, C1, and the Unicode controls
# that reorder or hide text (bidirectional overrides and isolates, zero-width marks).
_ESCAPES = re.compile(r'\x1b\[[0-?]*[ -/]*[@-~]?|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]?|\x9b[0-?]*[ -/]*[@-~]?')
_CONTROLS = re.compile(r'[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2028\u2029\u2066-\u2069\ufeff]')

_COLORS = {'VENTILATOR': 'magenta', 'SINK': 'green', 'WORKER': 'blue', 'PROXY': 'cyan',
           'GRAPH': 'yellow', 'SERVER': 'magenta', 'BENCHMARK': 'cyan', 'TERMINATE': 'red'}


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted, not to the one that existed
    when the logger was made (which a later redirect, or a test's capture, may have closed)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def get_logger(role: str, verbose: bool = False) -> logging.Logger:
    """A logger that prefixes every line with the coloured role name.

    Quiet by default (INFO: start, ready, warnings, errors); ``verbose`` adds DEBUG
    detail such as every request and batch.
    """
    logger = logging.getLogger(f'bert_serving.{role}')
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
    if not logger.handlers:
        color = _COLORS.get(role.split('-')[0], 'white')
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter(
            '%(levelname).1s:' + colored(role, color) + ':[%(asctime)s] %(message)s', datefmt='%H:%M:%S'))
        logger.addHandler(handler)
    return logger


def sanitize_for_log(value, limit: int = LOGGED_CHARS) -> str:
    """A string that a peer (a remote worker, a client) supplied, made safe to log.

    A peer must not be able to forge log lines, recolour or clear the terminal of whoever reads
    the log, or flood it: escape sequences are removed, other control characters (newlines
    included) become spaces, and the result is cut to ``limit`` characters with a note of how
    many were cut.

    Args:
        value: anything; non-strings are logged as their ``str()``.
        limit: the most characters kept.
    """
    text = value if isinstance(value, str) else str(value)
    text = _CONTROLS.sub(' ', _ESCAPES.sub('', text))
    if len(text) > limit:
        text = f'{text[:limit]}... ({len(text) - limit} more characters)'
    return text


def redact_argv(argv: Sequence[str]) -> List[str]:
    """A copy of a command line in which the value of every secret flag reads ``***``
    (``-http_token X`` and ``-http_token=X``)."""
    out: List[str] = []
    hide = False
    for arg in argv:
        flag = arg.split('=', 1)[0].lstrip('-')
        if hide:
            out.append('***')
        elif flag in SECRET_FLAGS and '=' in arg:
            out.append(arg.split('=', 1)[0] + '=***')
        else:
            out.append(arg)
        hide = not hide and flag in SECRET_FLAGS and '=' not in arg
    return out


def redact_args(args: Mapping) -> dict:
    """A copy of parsed flags (e.g. ``vars(args)``) in which every secret flag that is set reads ``***``:
    for the start-up table and SHOW_CONFIG, which every client may ask for."""
    return {k: ('***' if k in SECRET_FLAGS and v else v) for k, v in args.items()}
