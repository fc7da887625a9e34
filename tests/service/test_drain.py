"""Graceful drain (issue 9): TERMINATE, SIGTERM and Ctrl-C stop intake, let what is in flight finish
within -drain_timeout, fail the rest with "server shutting down", answer every client, and leave no
process behind. Also: the unmodified 1.10 client gets the busy and shutting-down replies as errors.

Requests are held "in flight" by freezing the workers (SIGSTOP) of ``-engine fake`` servers.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from bert_serving.client import BertServerBusyError, BertServerShuttingDownError
from bert_serving.server.service import BertServer

from service_support import (FAKE, REPLY_MS, alive, assert_port_free, children_of, fake_expected, kill_tree, paused,
                             sentence, wait_until)

pytestmark = [pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[2]
COMPAT110 = REPO / '.venv' / 'compat110'
EXIT_GRACE_SECONDS = 15  # the server is gone this long after the drain at the latest
EXPECTED = fake_expected()


class Requests:
    """Requests sent from threads, one client each, blocking; each outcome is recorded.

    Attributes:
        outcomes: index -> the array, or the exception raised.
    """

    def __init__(self, running, sizes):
        self.chunks = [[sentence(20_000 + 100 * k + j) for j in range(n)] for k, n in enumerate(sizes)]
        self.outcomes = {}
        self.threads = [threading.Thread(target=self._send, args=(running, k), daemon=True)
                        for k in range(len(sizes))]
        for t in self.threads:
            t.start()

    def _send(self, running, k):
        try:
            with running.client() as bc:
                self.outcomes[k] = bc.encode(self.chunks[k])
        except Exception as e:  # noqa: BLE001 - checked by the test
            self.outcomes[k] = e

    def join(self) -> None:
        for t in self.threads:
            t.join(timeout=REPLY_MS / 1000 + 30)
        assert not any(t.is_alive() for t in self.threads), 'a client got no answer'


def _shutdown_in_background(port: int) -> tuple:
    """BertServer.shutdown(port=...) in a thread (it returns once the port is free)."""
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault(
        'freed', BertServer.shutdown(ip='127.0.0.1', port=port, timeout=60_000)), daemon=True)
    thread.start()
    return thread, result


def _stopped_cleanly(running, drain_timeout: float) -> None:
    """Waits (bounded) for the server thread to end; checks that no process is left."""
    running.server.join(timeout=drain_timeout + EXIT_GRACE_SECONDS)
    assert not running.server.is_alive(), 'the server did not stop'
    assert not any(p.is_alive() for p in running.server.processes), 'a server process outlived the server'


@pytest.mark.parametrize('resume', [True, False], ids=['workers resume within the drain', 'drain expires'])
def test_terminate_with_requests_in_flight(server_factory, resume):
    """TERMINATE while three requests wait for frozen workers. If they resume within the drain,
    every request is answered; if not, every request fails as shutting down, and the workers,
    still frozen, are killed: the server is gone within drain_timeout + 15 s either way."""
    drain = 10 if resume else 2
    running = server_factory(FAKE, ['-num_worker', '2', '-drain_timeout', str(drain), '-heartbeat_timeout', '60'])
    scheduler = running.server.scheduler
    workers = [p.pid for p in running.workers()]
    with running.client() as late, paused(*workers):
        requests = Requests(running, [1, 10, 40])
        assert wait_until(lambda: len(scheduler.requests) == 3, 30, 0.02), 'the requests were not accepted'
        started = time.monotonic()
        stopper, result = _shutdown_in_background(running.port)
        assert wait_until(lambda: not scheduler.accepting, 30, 0.02), 'TERMINATE did not start the drain'
        with pytest.raises(BertServerShuttingDownError, match='server shutting down'):
            late.encode(['too late'])
        if resume:
            for pid in workers:
                os.kill(pid, signal.SIGCONT)
        requests.join()
        _stopped_cleanly(running, drain)
        seconds = time.monotonic() - started
    for k, chunk in enumerate(requests.chunks):
        got = requests.outcomes[k]
        if resume:
            assert isinstance(got, np.ndarray), f'request {k}: {got!r}'
            np.testing.assert_allclose(got, EXPECTED.many(chunk), atol=1e-6)
        else:
            assert isinstance(got, BertServerShuttingDownError), f'request {k}: {got!r}'
            assert 'did not finish within -drain_timeout 2s' in str(got)
    stopper.join(timeout=30)
    assert result.get('freed') is True, 'BertServer.shutdown did not see the port freed'
    assert running.server.failure is None
    print(f'\ndrain ({"resumed" if resume else "expired"}, -drain_timeout {drain}s): the server was gone '
          f'{seconds:.1f}s after TERMINATE')


# -- the same through bert-serving-start ---------------------------------------------------------

class CliServer:
    """``python -m bert_serving.server -engine fake ...`` in a subprocess, its output in files."""

    def __init__(self, folder: Path, port: int, port_out: int, drain: float):
        self.port, self.port_out = port, port_out
        self.stderr_path = folder / 'stderr.txt'
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(REPO / 'bert_serving_server'), str(REPO / 'bert_serving_client')]))
        with open(folder / 'stdout.txt', 'w') as out, open(self.stderr_path, 'w') as err:
            self.proc = subprocess.Popen(
                [sys.executable, '-m', 'bert_serving.server', '-engine', 'fake', '-port', str(port),
                 '-port_out', str(port_out), '-num_worker', '1', '-cpu', '-drain_timeout', str(drain),
                 '-heartbeat_timeout', '60'], stdout=out, stderr=err, env=env, cwd=str(folder))

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors='replace')

    def worker_pids(self) -> list:
        found = []
        for pid in children_of(self.proc.pid):
            try:
                if b'pipeline.worker' in Path(f'/proc/{pid}/cmdline').read_bytes():
                    found.append(pid)
            except OSError:
                pass
        return found



@pytest.mark.parametrize('signum, resume', [(signal.SIGTERM, True), (signal.SIGINT, False)],
                         ids=['SIGTERM, workers resume within the drain', 'Ctrl-C, drain expires'])
def test_cli_signal_with_a_request_in_flight(tmp_path, free_port, signum, resume):
    drain = 10 if resume else 2
    server = CliServer(tmp_path, free_port(), free_port(), drain)
    try:
        assert wait_until(lambda: 'ready to serve requests' in server.stderr or server.proc.poll() is not None, 60), \
            server.stderr[-3000:]
        assert server.proc.poll() is None, server.stderr[-3000:]
        children = children_of(server.proc.pid)
        workers = server.worker_pids()
        assert len(workers) == 1, children
        from bert_serving.client import BertClient

        texts = [sentence(i) for i in range(30_000, 30_012)]
        with BertClient(ip='127.0.0.1', port=server.port, port_out=server.port_out, timeout=REPLY_MS) as bc, \
                BertClient(ip='127.0.0.1', port=server.port, port_out=server.port_out, timeout=REPLY_MS) as watcher, \
                paused(*workers):
            bc.encode(texts, blocking=False)
            assert wait_until(lambda: watcher.server_status['num_open_request'] == 1, 30), 'the request is not open'
            server.proc.send_signal(signum)
            assert wait_until(lambda: server.proc.poll() is not None or 'shutting down' in server.stderr, 30)
            if resume:
                os.kill(workers[0], signal.SIGCONT)
                np.testing.assert_allclose(bc.fetch_all()[0], EXPECTED.many(texts), atol=1e-6)
            else:
                with pytest.raises(BertServerShuttingDownError, match='did not finish within -drain_timeout 2s'):
                    bc.fetch_all()
        try:
            code = server.proc.wait(timeout=drain + EXIT_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            pytest.fail(f'the server did not exit:\n{server.stderr[-3000:]}')
        assert code == 0, server.stderr[-3000:]
        assert f'received {signal.Signals(signum).name}' in server.stderr
        assert wait_until(lambda: not [pid for pid in children if alive(pid)], 5), 'orphan processes'
        assert_port_free(server.port)
        assert_port_free(server.port_out)
    finally:
        kill_tree(server.proc)


# -- the unmodified 1.10 client --------------------------------------------------------------------

# Waits for a file before each request, so the test decides when it sends; records what it gets.
OLD_CLIENT = textwrap.dedent('''
    import json, os, sys, time
    from bert_serving.client import BertClient

    port, port_out, folder = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    bc = BertClient(port=port, port_out=port_out)  # as users construct it: no timeout
    report = {}
    for step in ('busy', 'shutting_down'):
        go = os.path.join(folder, 'go-' + step)
        deadline = time.time() + 120
        while not os.path.exists(go) and time.time() < deadline:
            time.sleep(0.05)
        try:
            report[step] = 'answered: %r' % (bc.encode(['from the old client']).shape,)
        except Exception as e:
            report[step] = '%s: %s' % (type(e).__name__, e)
        with open(os.path.join(folder, 'report.json'), 'w') as f:
            json.dump(report, f)
''')


def test_old_and_new_clients_get_busy_and_shutting_down_as_errors(server_factory, tmp_path):
    """1.10.0 knows no error codes; the 4-frame error reply still makes it raise instead of hang.
    Our client raises the dedicated errors."""
    if not (COMPAT110 / 'bert_serving' / 'client' / '__init__.py').is_file():
        pytest.fail(f'bert-serving-client 1.10.0 is not installed in {COMPAT110}: run `make install`', pytrace=False)
    running = server_factory(FAKE, ['-num_worker', '1', '-max_queue_rows', '10', '-drain_timeout', '10',
                                    '-heartbeat_timeout', '60'])
    scheduler = running.server.scheduler
    (tmp_path / 'old.py').write_text(OLD_CLIENT)
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    env['PYTHONPATH'] = str(COMPAT110)
    old = subprocess.Popen([sys.executable, str(tmp_path / 'old.py'), str(running.port), str(running.port_out),
                            str(tmp_path)], env=env, cwd=str(tmp_path), stderr=subprocess.PIPE, text=True)
    report = tmp_path / 'report.json'
    try:
        with running.client() as filler, running.client() as ours, paused(*[p.pid for p in running.workers()]):
            chunk = [sentence(i) for i in range(40_000, 40_010)]
            filler.encode(chunk, blocking=False)
            assert wait_until(lambda: scheduler.open_rows == 10, 30, 0.02)
            with pytest.raises(BertServerBusyError, match='server busy') as busy:
                ours.encode(['one more'])
            assert busy.value.retry_after > 0
            (tmp_path / 'go-busy').touch()
            assert wait_until(lambda: report.exists() and 'busy' in json.loads(report.read_text() or '{}'), 60), \
                'the 1.10 client got no answer to a request refused as busy'

            stopper, result = _shutdown_in_background(running.port)
            assert wait_until(lambda: not scheduler.accepting, 30, 0.02)
            with pytest.raises(BertServerShuttingDownError, match='server shutting down'):
                ours.encode(['too late'])
            (tmp_path / 'go-shutting_down').touch()
            assert old.wait(timeout=60) == 0, old.stderr.read()[-3000:]
            with pytest.raises(BertServerShuttingDownError, match='did not finish within -drain_timeout 10s'):
                filler.fetch_all()
    finally:
        if old.poll() is None:
            old.kill()
            old.wait(timeout=30)
    got = json.loads(report.read_text())
    # 1.10 turns the error header into a dtype: TypeError: data type 'server error: ...' not understood
    assert 'server error: server busy' in got['busy'] and '-max_queue_rows is 10' in got['busy'], got
    assert 'server error: server shutting down' in got['shutting_down'], got
    _stopped_cleanly(running, 10)
    stopper.join(timeout=30)
    assert result.get('freed') is True
