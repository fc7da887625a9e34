"""Stopping a server started from the command line, as a subprocess: bert-serving-terminate and
Ctrl-C both end it quickly, free both ports and leave no process behind. The server runs the fake
engine: what is tested is the processes, not the model."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bert_serving.server.cli import terminate

from service_support import alive, assert_port_free, children_of, kill_tree, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
READY_SECONDS = 60
EXIT_SECONDS = 10


class ServerProcess:
    """``python -m bert_serving.server -engine fake ...`` with 2 workers, its output in files."""

    def __init__(self, folder: Path, port: int, port_out: int):
        self.port, self.port_out = port, port_out
        self.stdout_path, self.stderr_path = folder / 'stdout.txt', folder / 'stderr.txt'
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3',
                   PYTHONPATH=os.pathsep.join([str(REPO / 'bert_serving_server'), str(REPO / 'bert_serving_client')]))
        with open(self.stdout_path, 'w') as out, open(self.stderr_path, 'w') as err:
            self.proc = subprocess.Popen(
                [sys.executable, '-m', 'bert_serving.server', '-engine', 'fake', '-port', str(port),
                 '-port_out', str(port_out), '-num_worker', '2', '-cpu'],
                stdout=out, stderr=err, env=env, cwd=str(folder))

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors='replace')

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors='replace')

    def wait_ready(self) -> None:
        ready = wait_until(lambda: 'ready to serve requests' in self.stderr or self.proc.poll() is not None,
                           READY_SECONDS)
        assert ready and self.proc.poll() is None, f'the server did not start:\n{self.stderr[-3000:]}'

    def wait_exit(self) -> int:
        try:
            return self.proc.wait(timeout=EXIT_SECONDS)
        except subprocess.TimeoutExpired:
            pytest.fail(f'the server did not exit within {EXIT_SECONDS}s:\n{self.stderr[-3000:]}')



@pytest.fixture
def cli_server(tmp_path, free_port):
    server = ServerProcess(tmp_path, free_port(), free_port())
    try:
        server.wait_ready()
        yield server
    finally:
        kill_tree(server.proc)


def _stop_and_check(server: ServerProcess, stop) -> None:
    children = children_of(server.proc.pid)
    assert len(children) >= 3, 'expected a sink and 2 workers under the server process'
    started = time.monotonic()
    stop()
    assert server.wait_exit() == 0, server.stderr[-3000:]
    assert time.monotonic() - started < EXIT_SECONDS
    assert_port_free(server.port)
    assert_port_free(server.port_out)
    left = lambda: [pid for pid in children if alive(pid)]  # noqa: E731
    assert wait_until(lambda: not left(), 5), f'processes outlived the server: {left()}'


def test_bert_serving_terminate_stops_it(cli_server):
    out = cli_server.stdout  # the start prints the table of arguments
    for name in ('max_seq_len', 'pooling_strategy', 'num_worker', 'port_out', 'model_dir'):
        assert name in out, name
    assert 'REDUCE_MEAN' in out
    _stop_and_check(cli_server, lambda: terminate(['-ip', '127.0.0.1', '-port', str(cli_server.port)]) == 0
                    or pytest.fail('bert-serving-terminate reported failure'))
    assert 'termination requested' in cli_server.stderr


def test_ctrl_c_stops_it(cli_server):
    _stop_and_check(cli_server, lambda: cli_server.proc.send_signal(signal.SIGINT))
    assert 'received SIGINT' in cli_server.stderr


def test_terminate_with_nothing_listening_reports_failure(free_port):
    """Nothing to stop is not "stopped": the request cannot be delivered in time."""
    assert terminate(['-ip', '127.0.0.1', '-port', str(free_port()), '-timeout', '500']) == 1
