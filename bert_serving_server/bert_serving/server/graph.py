"""Compatibility shim: 1.x code imports ``PoolingStrategy`` from ``bert_serving.server.graph``.
The graph itself lives in ``bert_serving.server.engine.graph``."""
from .config import PoolingStrategy

__all__ = ['PoolingStrategy']
