"""Server-side errors. They all derive from the client's root BertServingError, so one
``except BertServingError`` catches anything this project raises. The whole tree, with where
each is raised and where it is translated::

    BertServingError                     (bert_serving.client.errors: the client's own are listed there)
    ├── ProtocolError
    │   └── BadMessage                   pipeline/messages.py: a malformed message between the server's
    │                                    processes or from a remote worker; logged and dropped
    ├── BadRequest                       client/validation.py, wherever input is checked (client, ventilator,
    │                                    engine, HTTP proxy); the ventilator and the worker answer it with a
    │                                    bad_request error frame, the proxy with 422
    ├── ConfigError                      a flag is invalid (config.py, http/settings.py, service.py, ...)
    ├── ModelError                       a model file is missing, unreadable or mismatched (engine/)
    ├── EncodeError                      engine/features.py: max_seq_len cannot hold an input's layout
    ├── StartError                       service.py: the server stopped while starting
    ├── Refused                          pipeline/request_queue.py: a request the server will not take;
    │                                    the ventilator answers it with an error frame of its code (busy, ...)
    ├── Rejected                         pipeline/link.py: the server refused this worker; exit code 3
    └── HttpError ...                    http/errors.py: each with its HTTP status

At the command line (cli.py) a ConfigError, ModelError, StartError or KeyFileError becomes one
line saying what to change, and exit code 2.
"""
from bert_serving.client.errors import BertServingError, ConfigError

__all__ = ['ModelError', 'ConfigError', 'EncodeError', 'StartError']


class ModelError(BertServingError, OSError):
    """A model file is missing, unreadable or does not match what is expected."""


class EncodeError(BertServingError, ValueError, TypeError):
    """The engine cannot lay out inputs with the length it was given: ``max_seq_len`` is not an
    int or None, is too short for ``[CLS]`` and ``[SEP]``, or a feature is longer than the padded
    length. Not the request's fault (that is ``BadRequest``): a worker fails such a request as
    ``failed``. Also a TypeError, for a ``max_seq_len`` of the wrong type, as before."""


class StartError(BertServingError, RuntimeError):
    """The server stopped while starting: a port already in use, a child process that exited; the
    message says which and where to look."""
