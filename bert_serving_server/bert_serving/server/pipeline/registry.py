"""WorkerRegistry: which workers the ventilator knows, and what each may say. No sockets.

Local workers (started by the server) talk over the ipc ROUTER, remote ones (bert-serving-worker)
over the TCP ROUTER of ``-port_worker``. A worker is known only after a HELLO on its own socket with
the server's fingerprint; a remote peer can never speak for a local identity, and a READY counts
only once, from a worker that said HELLO and is loading its model.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Deque, Dict, Optional, Tuple

from .messages import PROTOCOL_VERSION

__all__ = ['WorkerInfo', 'WorkerRegistry', 'MAX_CREDIT']

MAX_CREDIT = 2  # batches a worker may hold: one computing, one prefetched (whatever it claims)
BUSY_WINDOW_SECONDS = 60.0  # the busy fraction is over this window
BUSY_SAMPLES = 64  # heartbeats kept per worker for it (one a second; a few more against jitter)


@dataclass
class WorkerInfo:
    """A worker the ventilator knows.

    Attributes:
        name: ``WORKER-n`` or ``REMOTE-host-pid``, in logs and status.
        label: the key of the per-worker statistics (``n`` for a local worker, as in 1.10).
        remote: it talks over the TCP socket.
        state: ``loading`` after HELLO, ``ready`` after READY.
        busy: (time.monotonic(), seconds spent on batches) of its last heartbeats, newest last.
    """
    name: str
    label: str
    host: str
    device: str
    remote: bool
    state: str = 'loading'
    since: float = field(default_factory=time.time)
    channel: bytes = b'local'  # where its results come from (messages.LOCAL_CHANNEL / remote_channel(key))
    busy: Deque[Tuple[float, float]] = field(default_factory=lambda: deque(maxlen=BUSY_SAMPLES))

    def busy_fraction(self, now: float) -> float:
        """The share of the last BUSY_WINDOW_SECONDS it spent on batches (0 before two heartbeats)."""
        samples = [s for s in self.busy if now - s[0] <= BUSY_WINDOW_SECONDS]
        if len(samples) < 2 or samples[-1][0] <= samples[0][0]:
            return 0.0
        (t0, b0), (t1, b1) = samples[0], samples[-1]
        return min(1.0, max(0.0, (b1 - b0) / (t1 - t0)))


class WorkerRegistry:
    """Args:
        fingerprint: what every worker's HELLO must carry (model files and output flags).
        local_label: identity -> label of a worker the supervisor started, or None.
        remote_enabled: the server runs with -port_worker.
    """

    def __init__(self, fingerprint: str, local_label, remote_enabled: bool):
        self.fingerprint = fingerprint
        self.local_label = local_label
        self.remote_enabled = remote_enabled
        self.known: Dict[bytes, WorkerInfo] = {}

    def hello(self, identity: bytes, info: dict, remote: bool, channel: bytes = b'local') -> Optional[str]:
        """Registers a worker that said HELLO on the local (ipc) or the remote (TCP) socket; ``channel``
        names the socket (and Curve key) its results must come from.

        Returns:
            None if welcome, else why it is refused (the worker gets the reason and exits).
        """
        label = self.local_label(identity)
        if remote and label is not None:
            return 'that identity belongs to a local worker of the server'
        if not remote and label is None:
            return 'unknown local worker'
        if info.get('protocol') != PROTOCOL_VERSION:
            return (f'it speaks internal protocol {info.get("protocol") or 1} and this server {PROTOCOL_VERSION}; '
                    'install the same bert-serving-server release on the worker\'s machine as on the server\'s')
        if info['fingerprint'] != self.fingerprint:
            return ('its model files or engine flags differ from the server\'s (fingerprint '
                    f'{info["fingerprint"][:12]} != {self.fingerprint[:12]}); start it with the same '
                    '-model_dir and engine flags as bert-serving-start')
        if remote and not self.remote_enabled:
            return 'this server takes no remote workers (start it with -port_worker)'
        if remote:
            label = f'REMOTE-{info["host"]}-{info["pid"]}'
        self.known[identity] = WorkerInfo(label if remote else f'WORKER-{label}', label, info['host'],
                                          info['device'], remote=remote, channel=channel)
        return None

    def get(self, identity: bytes, remote: bool) -> Optional[WorkerInfo]:
        """The worker, if known and talking over the socket it registered on."""
        info = self.known.get(identity)
        return info if info is not None and info.remote == remote else None

    def ready(self, identity: bytes, credit: int) -> Optional[int]:
        """A READY: returns the credit to grant (capped), or None if it does not count (not loading)."""
        info = self.known.get(identity)
        if info is None or info.state != 'loading':
            return None
        info.state = 'ready'
        return max(1, min(MAX_CREDIT, credit))

    def forget(self, identity: bytes) -> Optional[WorkerInfo]:
        return self.known.pop(identity, None)

    def busy(self, identity: bytes, seconds: Optional[float], now: Optional[float] = None) -> None:
        """A heartbeat said the worker has spent ``seconds`` on batches since it started."""
        info = self.known.get(identity)
        if info is not None and seconds is not None:
            info.busy.append((time.monotonic() if now is None else now, seconds))

    def num_local_ready(self) -> int:
        return sum(1 for w in self.known.values() if w.state == 'ready' and not w.remote)

    def status(self, batches_per_worker: Dict[str, int], sequences_per_worker: Optional[Dict[str, int]] = None,
               now: Optional[float] = None) -> list:
        """Every known worker for SHOW_STATUS: name, label, host, device, state, batches and sequences
        handed to it, seconds it spent on batches and its busy fraction over the last minute."""
        now = time.monotonic() if now is None else now
        sequences = sequences_per_worker or {}
        return [{'name': w.name, 'label': w.label, 'host': w.host, 'device': w.device, 'state': w.state,
                 'remote': w.remote, 'batches': batches_per_worker.get(w.label, 0),
                 'sequences': sequences.get(w.label, 0), 'busy_seconds': w.busy[-1][1] if w.busy else 0.0,
                 'busy_fraction': round(w.busy_fraction(now), 4)} for w in self.known.values()]
