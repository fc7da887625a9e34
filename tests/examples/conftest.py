"""Fixtures of the example tests: one real server on the bundled model, and a runner that starts
an example script as a user would, against that server.

The server, shared by the whole module (each worker imports TensorFlow, so starting one costs
seconds)::

    test process ─ BertServer thread (ventilator)   PULL  binds tcp://*:port
                 ├ SINK process                     XPUB  binds tcp://*:port_out
                 ├ WORKER-0 process (spawned)
                 └ PROXY process (spawned)          HTTP  binds http_port

Each example then runs as ``python examples/<name>.py --port P --port_out Q ...`` in a subprocess
with the working tree on PYTHONPATH, and must exit 0 within ``RUN_SECONDS``.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import pytest

from bert_serving.server.service import BertServer

from service.service_support import RunningServer, assert_port_free, server_args

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / 'examples'
# Upper bounds, never waited out when things work. Under load (a make test beside another suite and
# a CPU burner) a cold build of visualize_layers.py's graph took 77 s and its worker had not loaded
# 120 s after the start, so the bounds leave room past the example's own READY_SECONDS (180).
READY_SECONDS = 240
RUN_SECONDS = 300  # per example; the slowest starts a server of its own and builds its graph


@dataclass
class ExampleServer(RunningServer):
    """A ready server on the bundled model, with its HTTP proxy on ``http_port``."""
    http_port: int = 0

    def run(self, name: str, *args: str, stdin: Optional[str] = None, cwd: Optional[Path] = None,
            server_ports: bool = True) -> subprocess.CompletedProcess:
        """Runs ``examples/<name>`` with ``args`` (plus this server's address unless ``server_ports``
        is False) and returns the finished process; fails the test unless it exits 0 in time."""
        command = [sys.executable, str(EXAMPLES / name), *args]
        if server_ports:
            command += ['--ip', '127.0.0.1', '--port', str(self.port), '--port_out', str(self.port_out),
                        '--timeout', '30000']
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONPATH=os.pathsep.join(
            [str(REPO / 'bert_serving_server'), str(REPO / 'bert_serving_client')]))
        try:
            done = subprocess.run(command, input=stdin, capture_output=True, text=True, env=env,
                                  cwd=cwd or REPO, timeout=RUN_SECONDS)
        except subprocess.TimeoutExpired as e:
            pytest.fail(f'{name} did not finish within {RUN_SECONDS}s:\n{e.stdout}\n{e.stderr}', pytrace=False)
        if done.returncode != 0:
            pytest.fail(f'{name} exited with {done.returncode}:\n{done.stdout}\n{done.stderr}', pytrace=False)
        return done


def _wait_ready(server: BertServer, http_url: str) -> None:
    """Waits until every worker is ready and the proxy's /health says 200."""
    deadline = time.monotonic() + READY_SECONDS
    while not server.is_ready.wait(0.2):
        if not server.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f'the server did not become ready (failure: {server.failure})')
    while True:
        try:
            with urllib.request.urlopen(http_url + '/health', timeout=5):
                return
        except (urllib.error.HTTPError, OSError):  # 503 while loading, or not listening yet
            if server.failure is not None or time.monotonic() > deadline:
                raise RuntimeError(f'the HTTP proxy did not report ready (failure: {server.failure})')
            time.sleep(0.1)


@pytest.fixture(scope='module')
def example_server(pick_port, bundled_model_dir) -> Iterator[ExampleServer]:
    """The bundled model with the default pooling (REDUCE_MEAN of layer -2), one worker and an HTTP
    proxy; closed after the module, with its processes gone and its ports free."""
    port, port_out, http_port = pick_port(), pick_port(), pick_port()
    server = BertServer(server_args(bundled_model_dir, port, port_out, ['-http_port', str(http_port)]))
    server.start()
    try:
        _wait_ready(server, f'http://127.0.0.1:{http_port}')
        yield ExampleServer(server, port, port_out, http_port)
    finally:
        server.close()
    assert all(not p.is_alive() for p in server.processes), 'a server process survived close()'
    for p in (port, port_out, http_port):
        assert_port_free(p)
