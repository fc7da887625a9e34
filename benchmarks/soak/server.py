"""The servers under test: ``bert-serving-start`` in a subprocess, its process tree and memory.

The soak starts the server as users do, through the ``bert-serving-start`` console script, on free
loopback ports. It finds the roles as processes: the ventilator is the CLI process itself; the sink,
the workers and the HTTP proxy are its children, told apart by their command line
(``python -c 'from bert_serving.server.pipeline.worker import main; main()'``).
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

__all__ = ['SERVER_FLAGS', 'RELIABILITY_FLAGS', 'MAX_SEQ_LEN', 'ServerProcess', 'free_port', 'rss_mb',
           'send_signal', 'supported_flags']

MAX_SEQ_LEN = 32  # small, so that the bundled model stays cheap on a 2-core machine

# Every flag the soak passes, in one place. A flag is passed only when `bert-serving-start --help`
# lists it, so the same harness runs against servers that predate a flag.
SERVER_FLAGS: List[Tuple[str, Optional[str]]] = [
    ('-num_worker', '2'),
    ('-cpu', None),
    ('-max_seq_len', str(MAX_SEQ_LEN)),
]
# The request-lifecycle flags of issue 9; seconds or rows.
RELIABILITY_FLAGS: List[Tuple[str, Optional[str]]] = [
    ('-request_timeout', '30'),
    ('-max_queue_rows', '20000'),
    ('-heartbeat_timeout', '10'),
    ('-batch_timeout', '30'),
    ('-drain_timeout', '10'),
]

READY_TIMEOUT_S = 300.0
# Substrings of a child's command line -> its role.
ROLE_MARKERS = (('pipeline.worker', 'worker'), ('pipeline.sink', 'sink'), ('http', 'proxy'))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def start_command() -> List[str]:
    """The ``bert-serving-start`` script beside this Python, else the one on PATH."""
    beside = Path(sys.executable).parent / 'bert-serving-start'
    found = str(beside) if beside.exists() else shutil.which('bert-serving-start')
    if not found:
        raise SystemExit('bert-serving-start not found: run `make install`')
    return [found]


def supported_flags(flags: Sequence[Tuple[str, Optional[str]]]) -> Tuple[list, list]:
    """Splits ``flags`` into (passed, skipped) by what ``bert-serving-start --help`` lists."""
    done = subprocess.run(start_command() + ['--help'], capture_output=True, text=True, timeout=120)
    listed = set(re.findall(r'(?<![\w-])(-[a-zA-Z][\w]*)', done.stdout))
    passed = [(f, v) for f, v in flags if f in listed]
    skipped = [f for f, _ in flags if f not in listed]
    return passed, skipped


def rss_mb(pid: int) -> Optional[float]:
    """VmRSS of ``pid`` in MiB, or None when it is gone."""
    try:
        with open(f'/proc/{pid}/status', encoding='ascii') as f:
            for line in f:
                if line.startswith('VmRSS:'):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _children(pid: int) -> List[int]:
    found = []
    for task in Path(f'/proc/{pid}/task').glob('*'):
        try:
            found += [int(p) for p in (task / 'children').read_text().split()]
        except OSError:
            continue
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f'/proc/{pid}/cmdline').read_bytes().replace(b'\0', b' ').decode(errors='replace')
    except OSError:
        return ''


class ServerProcess:
    """One ``bert-serving-start`` in a subprocess, on free ports.

    Args:
        name: label in the summary, e.g. ``main`` or ``none``.
        flags: (flag, value) pairs; value None for a switch.
        http: also start the HTTP proxy on a free port.
        log_path: where the server's stdout and stderr go.
        ports: where its ports come from (port, port_out, then the HTTP port); by default free
            ports the kernel picks, which another program may take before the server binds them
            (the graph is built in between), so a test running beside others passes its own.
    """

    def __init__(self, name: str, flags: Sequence[Tuple[str, Optional[str]]], http: bool, log_path: Path,
                 ports: Optional[Iterator[int]] = None):
        self.name = name
        take = (lambda: next(ports)) if ports is not None else free_port
        self.port, self.port_out = take(), take()
        self.http_port = take() if http else None
        self.flags = list(flags)
        self.num_worker = int(dict(flags).get('-num_worker') or 1)
        self.log_path = log_path
        self.popen: Optional[subprocess.Popen] = None
        # every process ever seen in the tree: pid -> (role, start time), so that a pid reused by
        # someone else's process is never signalled
        self.seen: Dict[int, Tuple[str, Optional[int]]] = {}
        self.exit_info: Optional[dict] = None

    def argv(self) -> List[str]:
        argv = start_command()
        for flag, value in self.flags:
            argv += [flag] if value is None else [flag, value]
        argv += ['-port', str(self.port), '-port_out', str(self.port_out)]
        if self.http_port:
            argv += ['-http_port', str(self.http_port)]
        return argv

    def start(self) -> None:
        log = open(self.log_path, 'wb')
        try:
            self.popen = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL)
        finally:
            log.close()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Waits until SHOW_STATUS reports every worker ready (and the proxy's /health, if any)."""
        from bert_serving.client import BertClient
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f'server {self.name} exited with {self.popen.returncode} while starting; '
                                   f'see {self.log_path}')
            try:
                with BertClient(port=self.port, port_out=self.port_out, timeout=3000, check_length=False) as bc:
                    if bc.server_status.get('num_ready_worker', 0) >= self.num_worker and self._http_ready():
                        self.processes()
                        return
            except Exception:  # noqa: BLE001 - not up yet; retried until the deadline
                pass
            time.sleep(1.0)
        raise RuntimeError(f'server {self.name} not ready after {timeout:.0f}s; see {self.log_path}')

    def _http_ready(self) -> bool:
        if not self.http_port:
            return True
        import urllib.request
        try:
            with urllib.request.urlopen(f'http://127.0.0.1:{self.http_port}/health', timeout=3) as r:
                return r.status == 200
        except Exception:  # noqa: BLE001 - 503 while loading, refused before the proxy listens
            return False

    def processes(self) -> Dict[int, str]:
        """The live tree, pid -> role (``ventilator``, ``sink``, ``worker``, ``proxy``, ``other``)."""
        if not self.alive():
            return {}
        tree = {self.pid: 'ventilator'}
        frontier = [self.pid]
        while frontier:
            for child in _children(frontier.pop()):
                command = _cmdline(child)
                tree[child] = next((role for marker, role in ROLE_MARKERS if marker in command), 'other')
                frontier.append(child)
        for pid, role in tree.items():
            self.seen.setdefault(pid, (role, _start_time(pid)))
        return tree

    def workers(self) -> List[int]:
        return [pid for pid, role in self.processes().items() if role == 'worker']

    def rss(self) -> Dict[str, Optional[float]]:
        """VmRSS in MiB by ``role:pid``."""
        return {f'{role}:{pid}': rss_mb(pid) for pid, role in sorted(self.processes().items())}

    def stop(self, grace: float) -> dict:
        """SIGTERM, then SIGKILL of every pid of the tree still alive after ``grace`` seconds.

        Returns:
            exit code, seconds to exit, and the pids that had to be killed (orphans included).
        """
        if self.popen is None:
            return {}
        self.processes()  # the latest tree, into self.seen
        began = time.monotonic()
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        seconds = time.monotonic() - began
        code = self.popen.poll()
        # A child that outlives the CLI is an orphan; give it a moment to notice its parent is gone.
        time.sleep(0.5 if code is not None else 0.0)
        killed = []
        for pid, (role, start_time) in list(self.seen.items()):
            if pid != self.pid and start_time is not None and _start_time(pid) == start_time:
                send_signal(pid, signal.SIGCONT)
                if send_signal(pid, signal.SIGKILL):
                    killed.append(f'{role}:{pid}')
        if self.alive():
            self.popen.kill()
            killed.append(f'ventilator:{self.pid}')
        self.popen.wait(timeout=30)
        self.exit_info = {'exit_code': code, 'exit_seconds': round(seconds, 2), 'killed_after_grace': killed}
        return self.exit_info


def _start_time(pid: int) -> Optional[int]:
    """The start time of ``pid`` in clock ticks since boot, or None when it is gone."""
    try:
        stat = Path(f'/proc/{pid}/stat').read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(')') + 2:].split()
    return None if fields[0] in ('Z', 'X') else int(fields[19])


def send_signal(pid: int, sig: int) -> bool:
    """Sends ``sig`` to ``pid``; False when the process is gone."""
    try:
        os.kill(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False
