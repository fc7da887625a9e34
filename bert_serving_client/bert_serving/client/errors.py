"""The exception hierarchy shared by the client and the server.

Every error this project raises derives from :class:`BertServingError`.
"""

__all__ = ['BertServingError', 'BertServerError', 'BertTimeoutError', 'ProtocolError']


class BertServingError(Exception):
    """Root of every bert-serving error."""


class BertServerError(BertServingError, RuntimeError):
    """The server could not serve a request; the message is the server's own."""


class BertTimeoutError(BertServingError, TimeoutError):
    """No answer from the server in time; the message says what to check."""


class ProtocolError(BertServingError, ValueError):
    """A message on the wire is malformed."""
