"""bert-serving client: map sentences to fixed-length vectors with a bert-serving server.

Needs only pyzmq and numpy. Quick start::

    from bert_serving.client import BertClient
    with BertClient(ip='localhost') as bc:
        vectors = bc.encode(['First do it', 'then do it right'])   # float32 [2, D] (float16 with -fp16)

``BertClient`` is not thread-safe; threads share a ``ConcurrentBertClient`` instead.
"""
from ._version import PROTOCOL_VERSION, __version__
from .client import BertClient, Response
from .concurrent import ConcurrentBertClient
from .errors import (BadRequest, BertServerBusyError, BertServerError, BertServerGoneError, BertServerShuttingDownError,
                     BertServingError, BertTimeoutError, ConfigError, KeyFileError, ProtocolError)

__all__ = [
    'BertClient',
    'ConcurrentBertClient',
    'Response',
    'BertServingError',
    'BertServerError',
    'BertServerBusyError',
    'BertServerShuttingDownError',
    'BertServerGoneError',
    'BertTimeoutError',
    'ProtocolError',
    'BadRequest',
    'ConfigError',
    'KeyFileError',
    '__version__',
    'PROTOCOL_VERSION',
]
