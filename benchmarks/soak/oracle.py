"""The expected answers: a fixed pool of sentences, encoded in this process before any traffic.

Every request of the soak is a list of indices into the pool, so any reply can be checked row by row
against ``bert_serving.server.Encoder`` run with the server's engine settings.
"""
from __future__ import annotations

import random
from typing import List, Optional, Sequence

import numpy as np

__all__ = ['Oracle', 'make_pool', 'ATOL']

ATOL = 1e-4
POOL_SIZE = 400

_WORDS = ('the quick brown fox jumps over a lazy dog while seven tired engineers debug '
          'distributed queues under heavy load and nobody waits forever for an answer '
          'vectors tokens batches workers sinks ventilators heartbeats deadlines retry '
          'über café naïve résumé 東京 北京 こんにちは 12345 3.14 e-mail #hash @user').split()


def make_pool(size: int = POOL_SIZE, seed: int = 9) -> List[str]:
    """Sentences of 1 to 50 words (so some are cut at max_seq_len), a few pairs, an empty string."""
    rng = random.Random(seed)
    pool = ['', 'hello', 'how old are you? ||| what is your age?']
    while len(pool) < size:
        words = rng.choices(_WORDS, k=rng.choice([1, 2, 4, 8, 12, 20, 35, 50]))
        text = ' '.join(words)
        if rng.random() < 0.1:
            cut = rng.randrange(len(words) + 1)
            text = ' '.join(words[:cut]) + ' ||| ' + ' '.join(words[cut:])
        pool.append(text)
    return pool


class Oracle:
    """The pool and its vectors under one pooling strategy.

    Attributes:
        texts: the pool, P sentences.
        vectors: float32 [P, D], or [P, T, D] for NONE pooling.
    """

    def __init__(self, texts: Sequence[str], vectors: np.ndarray):
        self.texts = list(texts)
        self.vectors = vectors

    @classmethod
    def compute(cls, texts: Sequence[str], max_seq_len: int, pooling_strategy: Optional[str] = None) -> 'Oracle':
        """Encodes ``texts`` in this process, as the server's workers would."""
        from bert_serving.server import Encoder
        from bert_serving.server.config import EngineConfig, PoolingStrategy
        kwargs = {'max_seq_len': max_seq_len}
        if pooling_strategy:
            kwargs['pooling_strategy'] = PoolingStrategy.from_string(pooling_strategy)
        encoder = Encoder(EngineConfig(**kwargs), intra_op_threads=2, inter_op_threads=1)
        try:
            vectors, _ = encoder.encode(list(texts))
        finally:
            encoder.close()
        return cls(texts, np.asarray(vectors, dtype=np.float32))

    def take(self, indices: Sequence[int]) -> List[str]:
        return [self.texts[i] for i in indices]

    def check(self, indices: Sequence[int], got) -> Optional[str]:
        """None when ``got`` matches the pool rows ``indices`` within ATOL, else what is wrong."""
        want = self.vectors[np.asarray(indices)]
        try:
            got = np.asarray(got, dtype=np.float32)
        except (TypeError, ValueError) as e:
            return f'reply is not an array: {e}'
        if got.shape != want.shape:
            return f'shape {got.shape}, expected {want.shape}'
        err = np.abs(got - want)
        if not np.all(err <= ATOL):
            rows = np.unique(np.argwhere(err > ATOL)[:, 0])
            return f'{len(rows)} of {len(indices)} rows differ (max abs error {float(err.max()):.3g})'
        return None
