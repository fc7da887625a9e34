"""The engine interface: what a worker needs of a model. Text in, arrays out.

Two implementations:
    Encoder     (encoder.py) the frozen TensorFlow BERT graph;
    FakeEngine  (fake.py) a few lines of numpy, so the pipeline, its processes and its sockets can
                be tested in milliseconds without TensorFlow.

Shapes: B inputs, T tokens (NONE pooling only), W output width.
"""
from __future__ import annotations

import abc
from typing import List, Optional, Sequence, Tuple

import numpy as np

__all__ = ['Engine']


class Engine(abc.ABC):
    """Encodes requests: ``featurize`` (tokenize, cheap, in any thread) then ``run`` (the model).

    Attributes:
        output_dim: W.
        is_token_level: True for NONE pooling, where each input gives a [T, W] matrix.
        last_padded_tokens: word-piece rows the last ``run``'s dense layers computed, padding included
            (B x T, or the real tokens rounded up where padding is packed away (engine.runner),
            summed over the calls it made); the server's metrics compare it with the real lengths.
    """
    output_dim: int
    is_token_level: bool = False
    last_padded_tokens: int = 0

    @abc.abstractmethod
    def featurize(self, texts: Sequence, is_tokenized: bool = False) -> list:
        """Tokenizes a request; one feature per input, each with ``tokens`` and ``input_ids``.

        Raises:
            BadRequest: an input cannot be encoded (``bert_serving.client.validation``); the
                message names it.
            EncodeError: the engine's length settings cannot hold an input.
        """

    @abc.abstractmethod
    def run(self, features: Sequence, token_axis: Optional[int] = None) -> np.ndarray:
        """Encodes features: [B, W], or [B, T, W] for NONE pooling, rows in input order.

        Args:
            token_axis: T of a NONE-pooled output (default: ``token_axis_length(features)``).
        """

    def token_axis_length(self, features: Sequence) -> int:
        """T of a NONE-pooled request (the longest input by default)."""
        return max((len(f.input_ids) for f in features), default=1)

    def trims_token_axis(self) -> bool:
        """True if a NONE-pooled piece may be cut to its own longest input (the sink pads the
        pieces of a request to the longest of them)."""
        return self.is_token_level

    def encode(self, texts: Sequence, is_tokenized: bool = False) -> Tuple[np.ndarray, List[List[str]]]:
        """(vectors, tokens) of a request: ``run(featurize(texts))`` and the word pieces."""
        features = self.featurize(texts, is_tokenized)
        return self.run(features), [list(f.tokens) for f in features]

    def warm_up(self) -> None:
        """Runs the model once before serving, so that the first request does not pay for
        building it."""
        self.encode(['warm up'])

    def close(self) -> None:
        """Frees what the engine holds."""

