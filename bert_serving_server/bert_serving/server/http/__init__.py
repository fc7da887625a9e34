"""The HTTP proxy: an aiohttp server in its own process, in front of the server's ZeroMQ ports.

Modules, one role each:
    proxy       the process (HttpProxy)
    settings    its frozen configuration
    zmq_client  one async ZeroMQ connection that multiplexes every HTTP request
    app         the routes
    schemas     request parsing and reply shapes, with their JSON Schemas
    openapi     the OpenAPI document of the routes, built from those schemas
    middleware  CORS, gzip, metrics, error mapping, concurrency limit
    metrics     Prometheus metrics
    errors      the proxy's exceptions and their status codes
"""
from .proxy import HttpProxy
from .settings import ProxyConfig

__all__ = ['HttpProxy', 'ProxyConfig']
