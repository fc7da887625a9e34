"""What a remote worker says about itself (host, device, pid in HELLO; its FATAL message) reaches the
server's log cleaned: no terminal escapes, no forged log lines, no flood.

A raw DEALER stands where ``bert-serving-worker`` stands, on a real ``-engine fake`` server's
``-port_worker``; the ventilator runs in this process, so its log is read from captured stderr.
"""
from __future__ import annotations

import json
import time

import pytest
import zmq

from bert_serving.server.log import LOGGED_CHARS, sanitize_for_log
from bert_serving.server.pipeline import messages as msg

pytestmark = [pytest.mark.e2e]

WAIT_SECONDS = 15.0
CLEAR_SCREEN = '\x1b[2J\x1b[H'
SET_TITLE = '\x1b]0;pwned\x07'
FORGED = '\nE:VENTILATOR:[00:00:00] forged line'
EVIL_HOST = f'{CLEAR_SCREEN}evil-host{SET_TITLE}{FORGED}'
EVIL_DEVICE = '\x1b[31mcpu\u202e' + 'x' * 10_000
EVIL_FATAL = f'it broke{FORGED}\r{CLEAR_SCREEN}'


@pytest.mark.parametrize('raw, clean', [
    ('plain host-1.example', 'plain host-1.example'),
    ('\x1b[31mred\x1b[0m', 'red'),
    (f'a{SET_TITLE}b', 'ab'),
    ('line\nI:FAKE:[00:00:00] forged', 'line I:FAKE:[00:00:00] forged'),
    ('tab\tbell\x07del\x7fc1\x9b31m', 'tab bell del c1'),
    ('right-to-left \u202eevil', 'right-to-left  evil'),
    (12345, '12345'),
    (None, 'None'),
])
def test_sanitize_for_log_removes_escapes_and_controls(raw, clean):
    assert sanitize_for_log(raw) == clean


def test_sanitize_for_log_caps_the_length():
    assert sanitize_for_log('y' * (LOGGED_CHARS + 50)) == 'y' * LOGGED_CHARS + '... (50 more characters)'
    assert sanitize_for_log('abcdef', limit=3) == 'abc... (3 more characters)'


def _hello(fingerprint: str) -> list:
    return [msg.HELLO, json.dumps({'fingerprint': fingerprint, 'host': EVIL_HOST, 'pid': FORGED * 3,
                                   'device': EVIL_DEVICE, 'local': False, 'protocol': msg.PROTOCOL_VERSION}).encode()]


def _worker(ctx: zmq.Context, port_worker: int, identity: bytes) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IDENTITY, identity)
    sock.connect(f'tcp://127.0.0.1:{port_worker}')
    return sock


def _answer(sock: zmq.Socket) -> bytes:
    assert sock.poll(WAIT_SECONDS * 1000), 'the server did not answer the HELLO'
    return sock.recv_multipart()[0]


def test_a_remote_workers_strings_are_cleaned_before_they_are_logged(fake_server, pick_port, capsys):
    port_worker = pick_port()
    with fake_server(['-num_worker', '1', '-port_worker', str(port_worker),
                      '-port_worker_sink', str(pick_port())]) as running, zmq.Context() as ctx:
        capsys.readouterr()
        joined = _worker(ctx, port_worker, b'evil-joins')
        refused = _worker(ctx, port_worker, b'evil-refused')
        try:
            joined.send_multipart(_hello(running.server.fingerprint))
            assert _answer(joined) == msg.WELCOME
            joined.send_multipart(msg.pack_fatal(EVIL_FATAL))
            refused.send_multipart(_hello('not the server model'))
            assert _answer(refused) == msg.REJECT
            log = ''
            deadline = time.monotonic() + WAIT_SECONDS
            while 'cannot start' not in log and time.monotonic() < deadline:
                time.sleep(0.05)
                log += capsys.readouterr().err
        finally:
            joined.close()
            refused.close()
    lines = [line for line in log.splitlines() if 'evil-host' in line or 'it broke' in line]
    assert len(lines) == 3, log  # joined, cannot start, refused: one line each
    assert any('joined from' in line for line in lines)
    assert any('cannot start' in line and 'it broke' in line for line in lines)
    assert any('refused a worker from' in line for line in lines)
    for line in lines:
        assert CLEAR_SCREEN not in line and SET_TITLE not in line and '\x1b[31m' not in line and '\u202e' not in line
        assert len(line) < 6 * LOGGED_CHARS, 'a worker-supplied string flooded the log'
    forged = [line for line in log.splitlines() if line.lstrip().startswith('E:VENTILATOR:[00:00:00]')]
    assert forged == [], 'a worker forged a log line'
