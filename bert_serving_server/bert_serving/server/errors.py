"""Server-side errors. They all derive from the client's root BertServingError,
so one ``except BertServingError`` catches anything this project raises."""
from bert_serving.client.errors import BertServingError

__all__ = ['ModelError', 'ConfigError', 'EncodeError']


class ConfigError(BertServingError, ValueError):
    """A flag value is invalid for this model (e.g. a layer out of range)."""


class ModelError(BertServingError, OSError):
    """A model file is missing, unreadable or does not match what is expected."""


class EncodeError(BertServingError, ValueError):
    """An input could not be encoded (wrong type, empty request, ...)."""
