"""Runs a pipeline role (sink, worker, HTTP proxy) as its own command.

The parent starts the role's ``main()`` in a new Python (``python -m bert_serving.server.pipeline.<role>``
does the same by hand) and writes the role's spec, a JSON object,
to the child's stdin. Nothing depends on the parent's ``__main__``: a user's script that starts a
BertServer with no ``if __name__ == '__main__':`` guard is never re-imported by a child, as it would
be by multiprocessing's spawn. The same commands can run by hand on another machine.

Parent and child agree on three things only:
    stdin        the spec, read once by :func:`read_spec`;
    SIGTERM      "stop now": :func:`install_stop_handler` turns it into an Event;
    a pipe       the child writes one byte when it is ready (:func:`signal_ready`), so the parent
                 can wait for a bound port without polling it.
A child also stops when its parent dies (its parent pid changes).
"""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

__all__ = ['ChildProcess', 'read_spec', 'install_stop_handler', 'die_with_parent', 'signal_ready', 'parent_alive',
           'package_roots']


def package_roots() -> list:
    """The directories that hold ``bert_serving/server`` and ``bert_serving/client``.

    A child gets them first on its PYTHONPATH, so it imports the same code as its parent even when
    the parent found the package through a ``sys.path`` edit of its own.
    """
    import bert_serving.client as client
    roots = []
    # This file is bert_serving/server/launcher.py: its root is three levels up.
    for path in (__file__, client.__file__):
        root = str(Path(path).resolve().parents[2])
        if root not in roots:
            roots.append(root)
    return roots


class ChildProcess:
    """One role running in its own Python, with a Process-like interface.

    Args:
        name: the role's name in logs and status, e.g. ``WORKER-0``.
        module: the module whose ``main()`` runs, e.g. ``bert_serving.server.pipeline.worker``.
        spec: JSON-serialisable settings of the role, sent on stdin.
    """

    def __init__(self, name: str, module: str, spec: dict):
        self.name = name
        self.module = module
        self.spec = dict(spec)
        self._popen: Optional[subprocess.Popen] = None
        self._ready_fd: Optional[int] = None
        self._ready = False

    def start(self) -> None:
        read_fd, write_fd = os.pipe()
        env = dict(os.environ)
        env['PYTHONPATH'] = os.pathsep.join(package_roots() + [p for p in [env.get('PYTHONPATH')] if p])
        spec = dict(self.spec, ready_fd=write_fd, parent_pid=os.getpid())
        try:
            # -c rather than -m: a package whose __init__ imports the module would make runpy warn.
            code = f'from {self.module} import main; main()'
            self._popen = subprocess.Popen([sys.executable, '-c', code], stdin=subprocess.PIPE,
                                           pass_fds=(write_fd,), env=env, close_fds=True)
        finally:
            os.close(write_fd)
        self._ready_fd = read_fd
        try:
            self._popen.stdin.write(json.dumps(spec).encode())
            self._popen.stdin.close()
        except BrokenPipeError:  # the child died at once; exitcode tells
            pass

    @property
    def pid(self) -> Optional[int]:
        return None if self._popen is None else self._popen.pid

    @property
    def exitcode(self) -> Optional[int]:
        return None if self._popen is None else self._popen.poll()

    def is_alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def wait_ready(self, timeout: float) -> bool:
        """Waits until the child signals ready; False if it exited first or time ran out."""
        deadline = time.monotonic() + timeout
        while not self._ready:
            left = deadline - time.monotonic()
            if left <= 0 or self._ready_fd is None:
                return False
            readable, _, _ = select.select([self._ready_fd], [], [], min(left, 0.1))
            if readable:
                if os.read(self._ready_fd, 1):
                    self._ready = True
                else:  # the pipe closed: the child exited without being ready
                    return False
        return True

    def terminate(self) -> None:
        if self.is_alive():
            self._popen.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self.is_alive():
            self._popen.kill()

    def join(self, timeout: Optional[float] = None) -> None:
        if self._popen is None:
            return
        try:
            self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return
        if self._ready_fd is not None:
            os.close(self._ready_fd)
            self._ready_fd = None

    def __repr__(self) -> str:
        return f'<ChildProcess {self.name} pid={self.pid} exitcode={self.exitcode}>'


def read_spec() -> dict:
    """The spec the parent wrote on stdin (a child calls this first)."""
    return json.loads(sys.stdin.buffer.read() or b'{}')


def install_stop_handler() -> threading.Event:
    """SIGTERM sets the returned Event; SIGINT is ignored (Ctrl-C reaches the whole process
    group, and the parent decides when its children stop). On Linux the kernel also sends SIGTERM
    when the parent dies, even by SIGKILL, so no child outlives its server."""
    stop = threading.Event()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    die_with_parent()
    return stop


def die_with_parent() -> None:
    """On Linux, has the kernel send this process SIGTERM when its parent dies."""
    if not sys.platform.startswith('linux'):
        return  # elsewhere the children poll their parent's pid (parent_alive)
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def signal_ready(spec: dict) -> None:
    """Tells the parent this child is ready (once; later calls do nothing)."""
    fd = spec.pop('ready_fd', None)
    if fd is None:
        return
    try:
        os.write(fd, b'1')
        os.close(fd)
    except OSError:  # the parent is gone; the parent-pid check stops us
        pass


def parent_alive(parent_pid: int) -> bool:
    """True while the process that started us runs (a dead parent re-parents us)."""
    return not parent_pid or os.getppid() == parent_pid
