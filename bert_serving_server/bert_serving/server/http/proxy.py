"""HttpProxy: the process that serves HTTP in front of the server's ZeroMQ ports.

Inside the process (everything is created in ``run``)::

    aiohttp server  binds http://host:http_port     HTTP clients
    ZmqBackend      connects to port and port_out    one PUSH + one SUB, one identity

BertServer runs it as ``python -m bert_serving.server.http.proxy`` with the ProxyConfig fields as
JSON on stdin. It stops on SIGTERM or when its parent process changes.
"""
from __future__ import annotations

import asyncio
import dataclasses

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from ..launcher import install_stop_handler, parent_alive, read_spec
from ..log import get_logger
from .app import create_app
from .settings import ProxyConfig
from .zmq_client import ZmqBackend

__all__ = ['HttpProxy']

POLL_SECONDS = 0.1
# In-flight HTTP requests get this long to finish once the proxy is told to stop.
SHUTDOWN_SECONDS = 1.0


class AccessLog(AbstractAccessLogger):
    """The access log of ``-verbose``: method, path, status and time, never the query string nor the
    headers, where a token or a text could sit."""

    def log(self, request, response, time: float) -> None:
        self.logger.debug('%s %s %s -> %d in %.3fs', request.remote, request.method, request.path,
                          response.status, time)


class HttpProxy:
    """The HTTP proxy, run in its own process when BertServer gets ``-http_port``.

    Args:
        config: the proxy's fields of the server's flags.
        stop_event: set means stop.
    """

    def __init__(self, config: ProxyConfig, stop_event):
        self.config = config
        self.stop_event = stop_event

    def _alive(self) -> bool:
        return not self.stop_event.is_set() and parent_alive(self.config.parent_pid)

    def run(self) -> None:
        logger = get_logger('PROXY', self.config.verbose)
        try:
            asyncio.run(self._serve(logger))
        except OSError as e:  # e.g. the port is taken
            logger.error('cannot serve HTTP on port %d: %s', self.config.http_port, e)
        logger.info('terminated')

    async def _serve(self, logger) -> None:
        s = self.config
        backend = ZmqBackend(s.server_ip, s.port, s.port_out, request_timeout=s.request_timeout,
                             status_timeout=s.status_timeout, logger=logger, curve_keys=s.curve_keys)
        await backend.start()
        runner = web.AppRunner(create_app(backend, s, logger), handle_signals=False,
                               access_log=logger if s.verbose else None, access_log_class=AccessLog)
        try:
            await runner.setup()
            site = web.TCPSite(runner, s.host, s.http_port, shutdown_timeout=SHUTDOWN_SECONDS, reuse_address=True)
            await site.start()
            logger.info('HTTP proxy listening on http://%s:%d (server ports %d/%d on %s)',
                        f'[{s.host}]' if ':' in s.host else s.host, s.http_port, s.port, s.port_out, s.server_ip)
            while self._alive():
                await asyncio.sleep(POLL_SECONDS)
        finally:
            await runner.cleanup()
            await backend.close()


def main() -> None:
    """``python -m bert_serving.server.http.proxy``: the ProxyConfig fields come as JSON on stdin."""
    spec = read_spec()
    stop = install_stop_handler()
    names = {f.name for f in dataclasses.fields(ProxyConfig)}
    HttpProxy(ProxyConfig(**{k: v for k, v in spec.items() if k in names}), stop).run()


if __name__ == '__main__':
    main()
