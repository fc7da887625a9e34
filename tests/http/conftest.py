"""Fixtures of the HTTP proxy tests: real BertServers started with ``-http_port`` on free ports.

A server started here::

    test process ─ BertServer thread (ventilator)   PULL  binds tcp://*:port
                 ├ SINK process                     XPUB  binds tcp://*:port_out
                 ├ WORKER-n processes (spawned)
                 └ PROXY process (spawned)          HTTP  binds http_port; PUSH/SUB connect to port/port_out

Starting one costs seconds (each worker imports TensorFlow), so each test module shares one server
through a module-scoped fixture built on ``launch_http``.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator, Optional, Sequence

import pytest

from bert_serving.server.args import get_args_parser
from bert_serving.server.service import BertServer

from http_support import FakeBackend, HttpServer, assert_port_free

READY_SECONDS = 240  # an upper bound: under heavy load a cold build of the bundled model took 77 s
POLL_SECONDS = 0.05
CHROMIUM = shutil.which('chromium') or '/usr/bin/chromium'
CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
                 '--disable-sync', '--no-first-run']


def _wait_ready(running: HttpServer, started: float) -> None:
    """Polls /health from the moment the proxy answers until it says 200; logs every answer."""
    deadline = started + READY_SECONDS
    while time.monotonic() < deadline:
        if running.server.failure is not None:
            raise RuntimeError(f'server failed while starting: {running.server.failure}')
        try:
            with urllib.request.urlopen(running.url + '/health', timeout=5) as response:
                running.health_log.append((time.monotonic() - started, response.status))
                return
        except urllib.error.HTTPError as e:
            running.health_log.append((time.monotonic() - started, e.code))
            e.close()
        except OSError:  # the proxy is not listening yet
            pass
        time.sleep(POLL_SECONDS)
    raise RuntimeError(f'the HTTP proxy did not report ready within {READY_SECONDS}s')


@pytest.fixture(scope='session')
def launch_http(pick_port):
    """``with launch_http(model_dir, ['-num_worker', '2']) as running: ...`` -> HttpServer.

    Starts a CPU BertServer with an HTTP proxy on fresh ports, waits until /health says 200, and
    on exit closes it and checks that every process ended and every port is free. ``model_dir``
    None starts ``-engine fake``; ``fields`` are set on the parsed flags as they are, for
    ServerConfig fields that have no flag (``max_request_bytes``).
    """
    @contextlib.contextmanager
    def start(model_dir: Optional[Path], flags: Sequence[str] = (), **fields) -> Iterator[HttpServer]:
        port, port_out, http_port = pick_port(), pick_port(), pick_port()
        model = ['-engine', 'fake'] if model_dir is None else ['-model_dir', str(model_dir)]
        args = get_args_parser().parse_args(
            [*model, '-port', str(port), '-port_out', str(port_out), '-http_port', str(http_port), '-cpu', *flags])
        for name, value in fields.items():
            setattr(args, name, value)
        server = BertServer(args)
        started = time.monotonic()
        server.start()
        running = HttpServer(server, port, port_out, http_port)
        try:
            _wait_ready(running, started)
            yield running
        finally:
            server.close()
        assert all(not p.is_alive() for p in server.processes), 'a server process survived close()'
        for p in (port, port_out, http_port):
            assert_port_free(p)

    return start


@pytest.fixture
def page():
    """A page of headless Debian Chromium, driven by Playwright (whose own browser download is never
    used; ``make install`` brings the ``chromium`` package)."""
    if not os.path.exists(CHROMIUM):
        pytest.fail('chromium is not installed: apt-get install -y chromium (make install does it)', pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={'width': 1280, 'height': 820})
        finally:
            browser.close()


@pytest.fixture
def fake() -> FakeBackend:
    """A fake backend for ``http_support.serve``; steer it through its attributes."""
    return FakeBackend()
