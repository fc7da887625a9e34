"""The OpenAPI 3.1 description of the proxy, served at ``GET /openapi.json``.

The bodies of /encode and /v1/embeddings are the JSON Schemas of :mod:`.schemas`, the ones their
parsers are tested against. The paths come from the app's router: ``describe`` raises on a route
that has no entry in ``OPERATIONS``, so the app cannot start with an undocumented endpoint.
"""
from __future__ import annotations

from typing import Dict, Iterable, Tuple

from aiohttp import hdrs

from bert_serving.client import __version__

from . import schemas

__all__ = ['describe', 'OPERATIONS', 'COMPONENTS']


def _ref(name: str) -> dict:
    return {'$ref': f'#/components/schemas/{name}'}


def _json(schema: dict, description: str) -> dict:
    return {'description': description, 'content': {'application/json': {'schema': schema}}}


def _text(media_type: str, description: str) -> dict:
    return {'description': description, 'content': {media_type: {'schema': {'type': 'string'}}}}


_ERROR_WHEN = {
    400: 'The body is not JSON (nor a readable form), or the server pools nothing (NONE) for /v1/embeddings.',
    413: 'The body exceeds the proxy\'s limit (16 MiB by default), or holds more inputs than -http_max_inputs '
         '(2048 by default).',
    422: 'A field is missing or has the wrong type; the message names it.',
    429: '-http_max_connect encoding requests are already in flight; retry after Retry-After seconds.',
    502: 'The server failed the request.',
    503: 'The proxy has no connection to the server.',
    504: 'The server did not answer in time.',
}
_ENCODING_ERRORS = {str(code): _json(_ref('Error'), when) for code, when in _ERROR_WHEN.items()}
_ANY_ERROR = {'default': _json(_ref('Error'), 'Any error: 404, 405, 500, or one listed above.')}

_SERVER_STATUS = {
    'type': 'object',
    'required': ['status', 'ready', 'num_worker', 'num_ready_worker'],
    'description': 'Every server flag, plus the counters below.',
    'properties': {
        'status': {'const': 200},
        'ready': {'type': 'boolean'},
        'num_worker': {'type': 'integer'},
        'num_ready_worker': {'type': 'integer'},
        'num_queued_piece': {'type': 'integer'},
        'output_dim': {'type': ['integer', 'null']},
        'model_dir': {'type': ['string', 'null']},
        'statistic': {'type': 'object'},
        'batches_per_worker': {'type': 'object', 'additionalProperties': {'type': 'integer'}},
        'sequences_per_worker': {'type': 'object', 'additionalProperties': {'type': 'integer'}},
        'workers': {'type': 'array', 'description': 'Every worker the server knows.', 'items': {
            'type': 'object', 'required': ['name', 'state', 'busy_fraction'],
            'properties': {'name': {'type': 'string'}, 'label': {'type': 'string'}, 'device': {'type': 'string'},
                           'state': {'enum': ['loading', 'ready']}, 'batches': {'type': 'integer'},
                           'sequences': {'type': 'integer'}, 'busy_seconds': {'type': 'number', 'minimum': 0},
                           'busy_fraction': {'type': 'number', 'minimum': 0, 'maximum': 1}}}},
        'lost_workers': {'type': 'object', 'additionalProperties': {'type': 'integer'},
                         'description': 'Workers lost, by reason.'},
        'worker_restarts': {'type': 'object', 'additionalProperties': {'type': 'integer'},
                            'description': 'Workers replaced, by the reason the one before was lost.'},
        'num_worker_restart': {'type': 'integer'},
        'metrics': {
            'type': 'object', 'required': ['histograms', 'requests', 'last_minute'],
            'description': 'Where each data request\'s time went, by door (zmq, http) and outcome: see '
                           'docs/monitoring.md.',
            'properties': {
                'histograms': {'type': 'object', 'additionalProperties': {
                    'type': 'object', 'required': ['labels', 'buckets', 'series'],
                    'properties': {
                        'labels': {'type': 'array', 'items': {'type': 'string'}},
                        'buckets': {'type': 'array', 'items': {'type': 'number'},
                                    'description': 'Upper bounds; a last bucket (+Inf) takes the rest.'},
                        'series': {'type': 'array', 'items': {
                            'type': 'object', 'required': ['labels', 'counts', 'sum', 'count'],
                            'properties': {'labels': {'type': 'object', 'additionalProperties': {'type': 'string'}},
                                           'counts': {'type': 'array', 'items': {'type': 'integer', 'minimum': 0},
                                                      'description': 'Per bucket, not cumulative.'},
                                           'sum': {'type': 'number'}, 'count': {'type': 'integer'}}}}}}},
                'requests': {'type': 'array', 'items': {
                    'type': 'object', 'required': ['door', 'outcome', 'count'],
                    'properties': {'door': {'enum': ['zmq', 'http']},
                                   'outcome': {'enum': ['ok', 'busy', 'bad_request', 'timeout', 'worker_lost',
                                                        'shutting_down', 'failed']},
                                   'count': {'type': 'integer'}}}},
                'sentences': {'type': 'object', 'additionalProperties': {'type': 'integer'}},
                'last_minute': {'type': 'object', 'additionalProperties': {'type': ['number', 'null']}},
            },
        },
    },
}
_CLIENT_STATUS = {
    'type': 'object',
    'required': ['status', 'identity', 'num_pending_request'],
    'properties': {
        'status': {'const': 200},
        'identity': {'type': 'string'},
        'connected': {'type': 'boolean'},
        'num_pending_request': {'type': 'integer', 'minimum': 0},
        'pending_request': {'type': 'array', 'maxItems': 50},
    },
}
_HEALTH = {
    'type': 'object',
    'required': ['status', 'ready'],
    'properties': {
        'status': {'enum': ['ready', 'loading', 'unavailable']},
        'ready': {'type': 'boolean'},
        'num_worker': {'type': ['integer', 'null']},
        'num_ready_worker': {'type': ['integer', 'null']},
        'error': {'type': 'string', 'description': 'Why the server did not answer (status "unavailable").'},
    },
}
_MODELS = {
    'type': 'object',
    'required': ['object', 'data'],
    'properties': {
        'object': {'const': 'list'},
        'data': {'type': 'array', 'items': {
            'type': 'object',
            'required': ['id', 'object', 'created', 'owned_by'],
            'properties': {'id': {'type': 'string'}, 'object': {'const': 'model'},
                           'created': {'type': 'integer'}, 'owned_by': {'type': 'string'}}}},
    },
}

COMPONENTS = {
    'EncodeRequest': schemas.ENCODE_SCHEMA,
    'EncodeForm': schemas.ENCODE_FORM_SCHEMA,
    'EncodeReply': schemas.ENCODE_REPLY_SCHEMA,
    'EmbeddingsRequest': schemas.EMBEDDINGS_SCHEMA,
    'EmbeddingsReply': schemas.EMBEDDINGS_REPLY_SCHEMA,
    'Error': schemas.ERROR_SCHEMA,
    'ServerStatus': _SERVER_STATUS,
    'ClientStatus': _CLIENT_STATUS,
    'Health': _HEALTH,
    'Models': _MODELS,
}

# Each route of app.py, by (method, path pattern).
OPERATIONS: Dict[Tuple[str, str], dict] = {
    ('GET', '/'): {
        'summary': 'The dashboard: a self-contained page that polls /status/server.',
        'responses': {'200': _text('text/html', 'The page.')},
    },
    ('POST', '/encode'): {
        'summary': 'Encode texts, as bert-as-service 1.10\'s HTTP proxy did.',
        'description': 'JSON is the main form. A form (urlencoded or multipart) works too: repeat '
                       '`texts` once per text, or send it once holding a JSON array; flags are strings.',
        'requestBody': {'required': True, 'content': {
            'application/json': {'schema': _ref('EncodeRequest')},
            'application/x-www-form-urlencoded': {'schema': _ref('EncodeForm'),
                                                  'encoding': {'texts': {'style': 'form', 'explode': True}}},
            'multipart/form-data': {'schema': _ref('EncodeForm')},
        }},
        'responses': {'200': _json(_ref('EncodeReply'), 'One vector per text, in order.'),
                      **_ENCODING_ERRORS, **_ANY_ERROR},
    },
    ('POST', '/v1/embeddings'): {
        'summary': 'Encode texts, as the OpenAI embeddings API does.',
        'requestBody': {'required': True, 'content': {'application/json': {'schema': _ref('EmbeddingsRequest')}}},
        'responses': {'200': _json(_ref('EmbeddingsReply'), 'One embedding per input, with token usage.'),
                      **_ENCODING_ERRORS, **_ANY_ERROR},
    },
    ('GET', '/v1/models'): {
        'summary': 'The one model, OpenAI-style.',
        'responses': {'200': _json(_ref('Models'), 'The model list.'), **_ANY_ERROR},
    },
    ('GET', '/status/server'): {
        'summary': 'The server\'s status (SHOW_STATUS), what BertClient().server_status gives.',
        'responses': {'200': _json(_ref('ServerStatus'), 'The status.'), **_ANY_ERROR},
    },
    ('GET', '/status/client'): {
        'summary': 'The proxy\'s own connection to the server.',
        'responses': {'200': _json(_ref('ClientStatus'), 'The connection.'), **_ANY_ERROR},
    },
    ('GET', '/health'): {
        'summary': 'Readiness: 200 once every worker has loaded the model.',
        'responses': {'200': _json(_ref('Health'), 'Every worker is ready.'),
                      '503': _json(_ref('Health'), 'Workers are loading or restarting, or the server is gone.')},
    },
    ('GET', '/metrics'): {
        'summary': 'Prometheus metrics of the proxy and the server.',
        'responses': {'200': _text('text/plain', 'The Prometheus text format.')},
    },
    ('GET', '/openapi.json'): {
        'summary': 'This document.',
        'responses': {'200': _json({'type': 'object'}, 'The OpenAPI 3.1 description of the proxy.')},
    },
}


def describe(routes: Iterable) -> dict:
    """The OpenAPI document of the given routes (``app.router.routes()``).

    Raises:
        LookupError: a route has no entry in ``OPERATIONS``.
    """
    paths: Dict[str, dict] = {}
    for route in routes:
        if route.method == hdrs.METH_HEAD:  # aiohttp's automatic twin of each GET
            continue
        key = (route.method, route.resource.canonical)
        if key not in OPERATIONS:
            raise LookupError(f'{key[0]} {key[1]} has no entry in openapi.OPERATIONS: describe it there')
        paths.setdefault(key[1], {})[key[0].lower()] = OPERATIONS[key]
    return {
        'openapi': '3.1.0',
        'info': {'title': 'bert-as-service HTTP proxy', 'version': __version__,
                 'description': 'Sentence encoding over HTTP, in front of a bert-serving-server. '
                                'JSON and text replies of 500 bytes or more are gzipped for clients '
                                'that send Accept-Encoding: gzip.'},
        'paths': paths,
        'components': {'schemas': COMPONENTS},
    }
