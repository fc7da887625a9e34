"""HttpProxy: the process that serves HTTP in front of the server's ZeroMQ ports.

Inside the process (everything is created in ``run``)::

    aiohttp server  binds http://host:http_port     HTTP clients
    ZmqBackend      connects to port and port_out    one PUSH + one SUB, one identity

It stops when the server's stop event is set or its parent process changes.
"""
from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal

from aiohttp import web

from ..log import get_logger
from .app import create_app
from .settings import ProxySettings
from .zmq_client import ZmqBackend

__all__ = ['HttpProxy']

_SPAWN = multiprocessing.get_context('spawn')
POLL_SECONDS = 0.1
# In-flight HTTP requests get this long to finish once the proxy is told to stop.
SHUTDOWN_SECONDS = 1.0


class HttpProxy(_SPAWN.Process):
    """The HTTP proxy process, started by BertServer when ``-http_port`` is given.

    Args:
        args: The server's parsed flags; only the proxy's fields are kept (see ProxySettings).
        stop_event: A multiprocessing Event; set means stop.
    """

    def __init__(self, args, stop_event):
        super().__init__(name='PROXY', daemon=True)
        self.settings = ProxySettings.from_namespace(args, parent_pid=os.getpid())
        self.stop_event = stop_event

    def _alive(self) -> bool:
        return not self.stop_event.is_set() and os.getppid() == self.settings.parent_pid

    def run(self) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
        logger = get_logger('PROXY', self.settings.verbose)
        try:
            asyncio.run(self._serve(logger))
        except OSError as e:  # e.g. the port is taken
            logger.error('cannot serve HTTP on port %d: %s', self.settings.http_port, e)
        logger.info('terminated')

    async def _serve(self, logger) -> None:
        s = self.settings
        backend = ZmqBackend(s.server_ip, s.port, s.port_out, request_timeout=s.request_timeout,
                             status_timeout=s.status_timeout, logger=logger)
        await backend.start()
        runner = web.AppRunner(create_app(backend, s, logger), handle_signals=False,
                               access_log=logger if s.verbose else None)
        try:
            await runner.setup()
            site = web.TCPSite(runner, s.host, s.http_port, shutdown_timeout=SHUTDOWN_SECONDS, reuse_address=True)
            await site.start()
            logger.info('HTTP proxy listening on http://%s:%d (server ports %d/%d)',
                        s.host, s.http_port, s.port, s.port_out)
            while self._alive():
                await asyncio.sleep(POLL_SECONDS)
        finally:
            await runner.cleanup()
            await backend.close()
