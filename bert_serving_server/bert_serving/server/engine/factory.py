"""Picks the engine a worker runs: the TensorFlow :class:`Encoder` or the :class:`FakeEngine`.

Kept out of ``base`` so that the interface module imports neither implementation.
"""
from __future__ import annotations

from .base import Engine

__all__ = ['create_engine']


def create_engine(config, **runtime) -> Engine:
    """The engine ``config.engine`` names: ``'tensorflow'`` (Encoder) or ``'fake'`` (FakeEngine).

    Args:
        config: the EngineConfig.
        **runtime: Encoder arguments (threads, graph, batch budgets); FakeEngine ignores them.

    Returns:
        A ready engine; TensorFlow is imported only for ``'tensorflow'``.
    """
    if config.engine == 'fake':
        from .fake import FakeEngine
        return FakeEngine(config)
    from .encoder import Encoder
    return Encoder(config, **runtime)
