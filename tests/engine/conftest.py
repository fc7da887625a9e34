"""Fixtures of the engine tests: encoders that share the session's graph cache."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest

from bert_serving.server.config import EngineConfig
from bert_serving.server.engine.encoder import Encoder

# Sessions hold the whole frozen graph (about 90 MB for the bundled model), so only a few stay open.
_POOL_SIZE = 3


class EncoderPool:
    """Encoders by config, built on first use and closed when evicted or at the end of the session.

    Graphs go to the session's graph cache, so each distinct config is frozen once per session
    however many test modules ask for it.
    """

    def __init__(self, cache_dir: Path):
        self._cache_dir = str(cache_dir)
        self._open: OrderedDict[EngineConfig, Encoder] = OrderedDict()

    def get(self, **fields) -> Encoder:
        """Returns an open Encoder for ``EngineConfig(**fields)``; keep it only within one test."""
        fields.setdefault('graph_tmp_dir', self._cache_dir)
        config = EngineConfig(**fields)
        if config in self._open:
            self._open.move_to_end(config)
            return self._open[config]
        while len(self._open) >= _POOL_SIZE:
            _, oldest = self._open.popitem(last=False)
            oldest.close()
        encoder = Encoder(config)
        self._open[config] = encoder
        return encoder

    def close(self) -> None:
        while self._open:
            self._open.popitem()[1].close()


@pytest.fixture(scope='session')
def encoders(graph_cache_dir: Path):
    """The session's EncoderPool; ``encoders.get(pooling_strategy='NONE', ...)``."""
    pool = EncoderPool(graph_cache_dir)
    yield pool
    pool.close()


@pytest.fixture(scope='session')
def tiny_texts() -> list[str]:
    """Inputs for the tiny model: lengths from 2 to 15 tokens, a pair and an empty string."""
    return [
        'hello world',
        'the quick brown fox jumps over the lazy dog near the river bank',
        'a',
        'how old are you? ||| what is your age?',
        '',
        'Café naïve résumé',
    ]
