"""bert-serving-server: a ZeroMQ service that maps sentences to fixed-length vectors with BERT."""
from bert_serving.client import __version__

from .config import EngineConfig, PoolingStrategy, ServerConfig

__all__ = ['BertServer', 'Encoder', 'EngineConfig', 'ServerConfig', 'PoolingStrategy', '__version__']


def __getattr__(name):
    # Lazy: importing the package (e.g. for the CLI parser) must not pull TensorFlow or zmq threads.
    if name == 'BertServer':
        from .service import BertServer
        return BertServer
    if name == 'Encoder':
        from .engine.encoder import Encoder
        return Encoder
    raise AttributeError(name)
