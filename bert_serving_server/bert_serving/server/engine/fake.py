"""FakeEngine: a deterministic numpy stand-in for BERT, for testing the pipeline without TensorFlow.

Select it with ``-engine fake`` (EngineConfig.engine). Tokens are the lower-cased words of the input
(a pair is split at ``|||``) between ``[CLS]`` and ``[SEP]``, cut on the right to ``max_seq_len``.
Each token has a fixed pseudo-random vector of width FAKE_WIDTH; an input's vector is the mean of
its tokens' (REDUCE_MEAN, any other strategy but NONE) or the matrix of them (NONE), so a test can
compute the expected answer in-process with a FakeEngine of its own.

Four words make the fake misbehave, to test the pipeline's fault handling:
    __fail__   run() raises (a model failure);
    __crash__  the process exits at once with code 17 (a worker crash);
    __hang__   run() sleeps for an hour (a hung TensorFlow call; heartbeats go on);
    __slow__   run() sleeps SLOW_SECONDS per input holding it (requests stay in flight a while).

``fake_row_seconds`` (EngineConfig, flag -fake_row_seconds) makes every call sleep that long per
input, so the fake runs at a chosen model's speed (or that speed scaled down, for a test).
"""
from __future__ import annotations

import os
import time
import zlib
from typing import Dict, Optional, Sequence

import numpy as np

from bert_serving.client.validation import validate_texts

from ..config import PoolingStrategy
from .base import Engine
from .features import Feature

__all__ = ['FakeEngine', 'FAKE_WIDTH', 'SLOW_SECONDS']

FAKE_WIDTH = 8
SLOW_SECONDS = 0.05
_PAIR = '|||'


class FakeEngine(Engine):
    """The fake model. Args: config, an EngineConfig (max_seq_len, pooling_strategy, do_lower_case)."""

    def __init__(self, config):
        self.config = config
        self.is_token_level = config.pooling_strategy == PoolingStrategy.NONE
        self.output_dim = FAKE_WIDTH
        self._vectors: Dict[str, np.ndarray] = {}

    def featurize(self, texts: Sequence, is_tokenized: bool = False) -> list:
        texts, _ = validate_texts(texts, bool(is_tokenized), allow_empty=True)
        features = []
        for text in texts:
            if is_tokenized:
                words = list(text)
            else:
                words = (text.lower() if self.config.do_lower_case else text).split()
            tokens = ['[CLS]']
            types = [0]
            segment = 0
            for w in words:
                if w == _PAIR:
                    segment = 1
                    w = '[SEP]'
                tokens.append(w)
                types.append(segment)
            tokens.append('[SEP]')
            types.append(segment)
            limit = self.config.max_seq_len
            if limit is not None and len(tokens) > limit:
                tokens, types = tokens[:limit - 1] + ['[SEP]'], types[:limit]
            features.append(Feature(tuple(tokens), tuple(zlib.crc32(t.encode('utf-8', 'surrogatepass'))
                                                          for t in tokens), tuple(types)))
        return features

    def _vector(self, token: str) -> np.ndarray:
        v = self._vectors.get(token)
        if v is None:
            seed = zlib.crc32(token.encode('utf-8', 'surrogatepass'))
            v = self._vectors[token] = np.random.default_rng(seed).standard_normal(FAKE_WIDTH).astype(np.float32)
        return v

    def run(self, features: Sequence, token_axis: Optional[int] = None) -> np.ndarray:
        words = {t for f in features for t in f.tokens}
        if '__fail__' in words:
            raise RuntimeError('the fake model failed on purpose (__fail__ in the input)')
        if '__crash__' in words:
            os._exit(17)
        if '__hang__' in words:
            time.sleep(3600)
        if '__slow__' in words:
            time.sleep(SLOW_SECONDS * sum(1 for f in features if '__slow__' in f.tokens))
        if self.config.fake_row_seconds:
            time.sleep(self.config.fake_row_seconds * len(features))
        self.last_padded_tokens = len(features) * super().token_axis_length(features)  # as one padded call
        if self.is_token_level:
            t = token_axis or self.token_axis_length(features)
            out = np.zeros((len(features), t, FAKE_WIDTH), dtype=np.float32)
            for i, f in enumerate(features):
                for j, token in enumerate(f.tokens[:t]):
                    out[i, j] = self._vector(token)
            return out
        out = np.empty((len(features), FAKE_WIDTH), dtype=np.float32)
        for i, f in enumerate(features):
            out[i] = np.mean([self._vector(t) for t in f.tokens], axis=0)
        return out

    def token_axis_length(self, features: Sequence) -> int:
        if self.config.max_seq_len is not None:
            return self.config.max_seq_len
        return super().token_axis_length(features)

    def trims_token_axis(self) -> bool:
        return self.is_token_level and self.config.max_seq_len is None
