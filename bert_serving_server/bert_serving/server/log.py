"""Coloured, per-role loggers: VENTILATOR, SINK, WORKER-n, PROXY, ..."""
from __future__ import annotations

import logging
import sys

from termcolor import colored

__all__ = ['get_logger']

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
