"""What the attack tests share besides fixtures; test modules import it by name (pytest puts this
folder on ``sys.path``)."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Dict, List

import zmq

__all__ = ['key_files', 'curve_socket', 'rss_mib', 'server_pids', 'percentile', 'wait_port', 'WORKER_CMD', 'SERVER_CMD']

# bert-serving-worker and bert-serving-start as a user runs them, from this interpreter.
WORKER_CMD = [sys.executable, '-c', 'import sys; from bert_serving.server.cli import worker; sys.exit(worker())']
SERVER_CMD = [sys.executable, '-c', 'import sys; from bert_serving.server.cli import main; sys.exit(main())']


def key_files(keys: Path, name: str) -> Dict[str, str]:
    """server_key / client_key arguments of a peer called ``name`` (see the ``keys`` fixture)."""
    return {'server_key': str(keys / 'dir' / 'server.key'), 'client_key': str(keys / name / f'{name}.key_secret')}


def curve_socket(ctx: zmq.Context, kind: int, keys: Path, name: str) -> zmq.Socket:
    """A raw socket that speaks CurveZMQ as ``name`` to the server of ``keys``."""
    from bert_serving.client.security import CurveKeys, secure_client_socket

    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    secure_client_socket(sock, CurveKeys.from_files(**key_files(keys, name)))
    return sock


def rss_mib(pid: int) -> float:
    """Resident memory of a process, MiB."""
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f'no VmRSS for pid {pid}')


def server_pids(root: int) -> List[int]:
    """``root`` and its live descendants (a CLI server: the front, its sink and workers)."""
    from service_support import children_of

    return [root] + sorted(children_of(root))


def percentile(values: List[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float('nan')


def wait_port(port: int, seconds: float = 60) -> bool:
    import socket
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(('127.0.0.1', port)) == 0:
                return True
        time.sleep(0.2)
    return False


