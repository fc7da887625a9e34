"""Two hosts on one machine: Linux network namespaces joined by a veth pair.

    namespace A  198.18.0.1/24  <-- veth -->  198.18.0.2/24  namespace B

198.18.0.0/15 is set aside for such tests; no traffic leaves the two namespaces. Creating them needs
root (CI runs as root); elsewhere the tests that need them are skipped with the reason.
Every process a test starts here runs through ``ip netns exec`` and is stopped by its pid.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

REPO = Path(__file__).resolve().parents[2]
ADDR_A, ADDR_B = '198.18.0.1', '198.18.0.2'
PYTHONPATH = os.pathsep.join(str(REPO / d) for d in ('bert_serving_server', 'bert_serving_client'))

__all__ = ['Hosts', 'netns_unavailable', 'ADDR_A', 'ADDR_B', 'wait_for']


def netns_unavailable() -> Optional[str]:
    """Why namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return 'network namespaces need root (CI runs as root)'
    if shutil.which('ip') is None:
        return 'the `ip` command (iproute2) is missing'
    return None


def _ip(*args: str) -> None:
    subprocess.run(['ip', *args], check=True, capture_output=True, text=True, timeout=30)


def wait_for(predicate, seconds: float, every: float = 0.5):
    """Polls ``predicate`` until it returns a truthy value (returned) or time runs out (None)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    return None


@dataclass
class Hosts:
    """Namespaces ``a`` and ``b`` joined by veth; processes started in them; all removed by close()."""
    prefix: str
    procs: List[subprocess.Popen] = field(default_factory=list)

    @property
    def a(self) -> str:
        return f'{self.prefix}a'

    @property
    def b(self) -> str:
        return f'{self.prefix}b'

    @property
    def veth_b(self) -> str:
        return f'{self.prefix}vb'

    def create(self) -> 'Hosts':
        va, vb = f'{self.prefix}va', self.veth_b
        _ip('netns', 'add', self.a)
        _ip('netns', 'add', self.b)
        _ip('link', 'add', va, 'type', 'veth', 'peer', 'name', vb)
        _ip('link', 'set', va, 'netns', self.a)
        _ip('link', 'set', vb, 'netns', self.b)
        for ns, dev, addr in ((self.a, va, ADDR_A), (self.b, vb, ADDR_B)):
            _ip('-n', ns, 'addr', 'add', f'{addr}/24', 'dev', dev)
            _ip('-n', ns, 'link', 'set', dev, 'up')
            _ip('-n', ns, 'link', 'set', 'lo', 'up')
        return self

    def link_b(self, up: bool) -> None:
        """Cuts (or restores) B's end of the cable."""
        _ip('-n', self.b, 'link', 'set', self.veth_b, 'up' if up else 'down')

    def drop_connections(self, ns: str, port: int) -> None:
        """Destroys the TCP connections of namespace ``ns`` to ``port`` (``ss -K``): what their
        kernel buffers held is gone, as when a router or NAT forgets them."""
        subprocess.run(['ip', 'netns', 'exec', ns, 'ss', '-K', 'dport', '=', str(port)], capture_output=True,
                       text=True, timeout=30)

    def _command(self, ns: str, argv: Sequence[str]) -> List[str]:
        return ['ip', 'netns', 'exec', ns, 'env', f'PYTHONPATH={PYTHONPATH}', *argv]

    def start(self, ns: str, argv: Sequence[str], log: Path) -> subprocess.Popen:
        """Starts ``argv`` in namespace ``ns``, output to ``log``."""
        out = open(log, 'w')
        proc = subprocess.Popen(self._command(ns, argv), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        out.close()
        self.procs.append(proc)
        return proc

    def python(self, ns: str, code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """Runs Python code in ``ns`` and waits for it."""
        return subprocess.run(self._command(ns, [sys.executable, '-c', code, *args]), capture_output=True,
                              text=True, timeout=timeout)

    def python_json(self, ns: str, code: str, *args: str, timeout: float = 60):
        done = self.python(ns, code, *args, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f'python in {ns} failed ({done.returncode}):\n{done.stderr[-3000:]}')
        return json.loads(done.stdout.strip().splitlines()[-1])

    @staticmethod
    def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, seconds: float = 20) -> Optional[int]:
        """Signals a process started by start() (its whole session) and waits for it."""
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(seconds)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        return proc.returncode

    def close(self) -> None:
        for proc in self.procs:
            self.stop(proc)
        for ns in (self.a, self.b):
            subprocess.run(['ip', 'netns', 'del', ns], capture_output=True, timeout=30)
