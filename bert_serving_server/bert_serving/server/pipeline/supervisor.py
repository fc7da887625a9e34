"""Supervisor: starts the server's processes (sink, workers, HTTP proxy), watches them, and owns the
restart policy. It knows processes, not requests: the scheduler decides what a lost worker means for
its pieces.

A dead sink or proxy stops the server (no reply could reach anyone, or -http_port would half work).
A dead, silent or hung worker is killed if needed and replaced under a new identity. Beyond
``max_restarts`` replacements within ``restart_window`` seconds, replacements wait (1, 2, 4 ... 60 s)
instead of stopping the server: inputs that crash workers fail their own requests, and the server
goes on serving the rest.
"""
from __future__ import annotations

import logging
import signal
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Deque, Dict, List, Optional, Tuple

from ..launcher import ChildProcess

__all__ = ['Supervisor', 'WorkerHandle']


@dataclass
class WorkerHandle:
    """A local worker process and who it is."""
    worker_id: int
    generation: int
    identity: bytes
    proc: ChildProcess

    @property
    def label(self) -> str:
        return str(self.worker_id)


class Supervisor:
    """Args:
        spawn_worker: (worker_id, generation) -> (identity, started ChildProcess).
        logger: where restarts and deaths are reported.
        max_restarts / restart_window: the restart budget.
    """

    def __init__(self, spawn_worker: Callable[[int, int], Tuple[bytes, ChildProcess]], logger: logging.Logger,
                 max_restarts: int = 5, restart_window: float = 60.0):
        self.spawn_worker = spawn_worker
        self.logger = logger
        self.max_restarts = max_restarts
        self.restart_window = restart_window
        self.workers: Dict[bytes, WorkerHandle] = {}
        self.services: Dict[str, Tuple[ChildProcess, str]] = {}  # SINK, PROXY -> (process, hint)
        self.processes: List[ChildProcess] = []  # every process ever started, for status and shutdown
        self._restarts: Deque[float] = deque()
        self._delayed: List[Tuple[float, int, int]] = []  # (when, worker_id, generation)
        self._backoff = 1.0

    # -- starting ------------------------------------------------------------------------------
    def add_service(self, proc: ChildProcess, hint: str = '') -> None:
        """Watches a started sink or proxy; ``hint`` says what to check if it dies."""
        self.services[proc.name] = (proc, hint)
        self.processes.append(proc)

    def start_worker(self, worker_id: int, generation: int = 0) -> WorkerHandle:
        identity, proc = self.spawn_worker(worker_id, generation)
        handle = self.workers[identity] = WorkerHandle(worker_id, generation, identity, proc)
        self.processes.append(proc)
        return handle

    def label(self, identity: bytes) -> Optional[str]:
        handle = self.workers.get(identity)
        return None if handle is None else handle.label

    # -- watching ------------------------------------------------------------------------------
    def dead_service(self) -> Optional[str]:
        """The reason to stop the server if the sink or the proxy died, else None."""
        for name, (proc, hint) in self.services.items():
            if proc.exitcode is not None:
                return f'the {name} process died (exit code {proc.exitcode}){": " + hint if hint else ""}'
        return None

    def services_left_cleanly(self) -> bool:
        """True if every sink or proxy that ended left as a stop asks (exit code 0, or SIGTERM/SIGINT)."""
        clean = (0, -signal.SIGTERM, -signal.SIGINT)
        return all(proc.exitcode is None or proc.exitcode in clean for proc, _ in self.services.values())

    def dead_workers(self) -> List[Tuple[bytes, str]]:
        """Workers whose process ended since the last call, with the reason."""
        return [(identity, f'died (exit code {h.proc.exitcode})')
                for identity, h in self.workers.items() if h.proc.exitcode is not None]

    def replace(self, identity: bytes, reason: str) -> None:
        """Kills the worker if it still runs and starts a new one in its place, at once or, past
        the restart budget, after a backoff."""
        handle = self.workers.pop(identity, None)
        if handle is None:
            return None
        if handle.proc.is_alive():
            handle.proc.kill()  # SIGKILL also ends a stopped (SIGSTOP) process
        handle.proc.join(timeout=2)
        if handle.proc in self.processes:
            self.processes.remove(handle.proc)
        self.logger.error('WORKER-%d %s; starting a new one', handle.worker_id, reason)
        now = time.monotonic()
        self._restarts.append(now)
        while self._restarts and now - self._restarts[0] > self.restart_window:
            self._restarts.popleft()
        if len(self._restarts) <= self.max_restarts:
            self._backoff = 1.0
            self.start_worker(handle.worker_id, handle.generation + 1)
            return
        self.logger.warning('workers were replaced %d times within %.0fs; WORKER-%d restarts in %.0fs',
                            len(self._restarts), self.restart_window, handle.worker_id, self._backoff)
        self._delayed.append((now + self._backoff, handle.worker_id, handle.generation + 1))
        self._backoff = min(60.0, self._backoff * 2)

    def restart_due(self) -> None:
        """Starts the replacements whose backoff is over."""
        now = time.monotonic()
        for item in [d for d in self._delayed if d[0] <= now]:
            self._delayed.remove(item)
            self.start_worker(item[1], item[2])

    # -- stopping ------------------------------------------------------------------------------
    def stop_all(self, seconds: float) -> None:
        """SIGTERM to every process, then SIGKILL to those still running after ``seconds``."""
        for p in self.processes:
            p.terminate()
        deadline = time.monotonic() + seconds
        for p in self.processes:
            p.join(timeout=max(0.1, deadline - time.monotonic()))
        for p in self.processes:
            if p.is_alive():
                self.logger.warning('%s did not stop in %.0fs; killing it', p.name, seconds)
                p.kill()
                p.join(timeout=2)
