"""The chaos loop: every few seconds, one disruption picked at random, logged in the ledger.

    kill       SIGKILL a worker (a child of the server process)
    stop       SIGSTOP a worker for longer than the heartbeat limit, then SIGCONT
    malformed  raw frames on the request port from a bare zmq PUSH: wrong frame counts, bad ids,
               bad JSON, bad UTF-8, lengths that lie
    drop       a client that goes away with a request pending (ZeroMQ or HTTP)
    flood      many 5,000-sentence requests at once, past the server's queue bound;
               "server busy" is an expected answer
"""
from __future__ import annotations

import json
import math
import random
import signal
import socket
import threading
import time
from typing import Dict, List, Optional, Set

import zmq

from .ledger import Ledger
from .server import ServerProcess, send_signal
from .traffic import BIG_ROWS, Traffic, big_bound_s, one_request

__all__ = ['Chaos', 'ACTIONS']

ACTIONS: Dict[str, float] = {'kill': 2, 'stop': 1, 'malformed': 3, 'drop': 3, 'flood': 1}
# Spacing per action, so that the run is not one long flood and a 1.x-style "too many worker deaths
# within 60 s" guard is not what the soak measures.
MIN_SPACING_S = {'kill': 12.0, 'stop': 20.0, 'flood': 60.0}

MALFORMED = [
    [b'one frame only'],
    [b'soak-bad', b'["a"]', b'7'],
    [b'soak-bad', b'["a"]', b'1', b'1', b'extra', b'frames'],
    [b'', b'', b'', b''],
    [b'soak-bad', b'["a"]', b'not-an-int', b'1'],
    [b'soak-bad', b'["a"]', b'-5', b'1'],
    [b'soak-bad', b'["a"]', b'8', b'not-an-int'],
    [b'soak-bad', b'not json at all', b'9', b'1'],
    [b'soak-bad', b'\xff\xfe\xfd', b'10', b'1'],
    [b'soak-bad', b'[' * 50_000 + b']' * 50_000, b'11', b'1'],
    [b'soak-bad', b'{"texts": 5}', b'12', b'1'],
    [b'soak-bad', b'{"texts": ["a"], "show_tokens": "yes please"}', b'13', b'1'],
    [b'soak-bad', b'[1, 2, ["x"]]', b'14', b'3'],
    [b'soak-bad', b'["a", "b", "c"]', b'15', b'99'],
    [b'soak-bad', b'["a"]', b'16', b'1000000000000'],
    [b'soak-bad', b'[]', b'17', b'0'],
    [b'soak-bad', b'"SHOW_STATUS"', b'18', b'0'],
    [b'\x00' * 300, b'\x01' * 7, b'\x02', b'\x03' * 9],
]


class Chaos:
    """Runs the chaos loop in a thread against ``server``.

    Args:
        traffic: the shared traffic settings (ports, ledger, oracle, bound).
        server: the server whose workers are killed and stopped.
        actions: which actions to draw from, with their weights.
        stop_seconds: how long a SIGSTOP lasts; more than the server's heartbeat limit.
        flood_rows: the queue bound to overflow, in rows.
        interval_s: (low, high) seconds between two actions.
    """

    def __init__(self, traffic: Traffic, server: ServerProcess, actions: Dict[str, float], stop_seconds: float,
                 flood_rows: int, interval_s=(3.0, 8.0), seed: int = 99):
        self.t, self.server, self.actions = traffic, server, dict(actions)
        self.stop_seconds, self.flood_rows, self.interval_s = stop_seconds, flood_rows, interval_s
        self.rng = random.Random(seed)
        self.stopped: Set[int] = set()  # pids under SIGSTOP right now
        self.last: Dict[str, float] = {}
        self.threads: List[threading.Thread] = []
        self.ledger: Ledger = traffic.ledger

    def run(self, warmup_s: float) -> None:
        """The loop; returns when traffic stops."""
        if self.t.stop.wait(warmup_s) or not self.actions:
            return
        # Every action once first, in a random order, so that even a short run sees each of them.
        first_round = self.rng.sample(list(self.actions), k=len(self.actions))
        while self.t.running(0):
            if self.t.stop.wait(self.rng.uniform(*self.interval_s)):
                break
            now = time.monotonic()
            allowed = {a: w for a, w in self.actions.items() if now - self.last.get(a, -1e9) >= MIN_SPACING_S.get(a, 0)}
            if first_round:
                action = first_round.pop(0)
            elif allowed:
                action = self.rng.choices(list(allowed), list(allowed.values()))[0]
            else:
                continue
            self.last[action] = now
            try:
                getattr(self, action)()
            except Exception as e:  # noqa: BLE001 - a chaos action that fails is logged, not fatal
                self.ledger.event(f'{action}-error', f'{type(e).__name__}: {e}')

    def release(self) -> None:
        """SIGCONT whatever is still stopped, and waits for the flood and drop threads."""
        for pid in list(self.stopped):
            send_signal(pid, signal.SIGCONT)
        self.stopped.clear()
        for thread in self.threads:
            thread.join(timeout=big_bound_s(self.t.timeout_s) + 15)

    def _worker(self) -> Optional[int]:
        workers = [p for p in self.server.workers() if p not in self.stopped]
        return self.rng.choice(workers) if workers else None

    def kill(self) -> None:
        pid = self._worker()
        if pid and send_signal(pid, signal.SIGKILL):
            self.ledger.event('kill', f'worker {pid}')

    def stop(self) -> None:
        pid = self._worker()
        if not pid or not send_signal(pid, signal.SIGSTOP):
            return
        self.stopped.add(pid)
        self.ledger.event('stop', f'worker {pid} for {self.stop_seconds:.0f}s')
        try:
            self.t.stop.wait(self.stop_seconds)
        finally:
            send_signal(pid, signal.SIGCONT)
            self.stopped.discard(pid)
            self.ledger.event('cont', f'worker {pid}')

    def malformed(self) -> None:
        picked = self.rng.sample(MALFORMED, k=self.rng.randint(3, len(MALFORMED)))
        with zmq.Context() as ctx, ctx.socket(zmq.PUSH) as push:
            push.setsockopt(zmq.LINGER, 2000)
            push.setsockopt(zmq.SNDTIMEO, 2000)
            push.connect(f'tcp://127.0.0.1:{self.t.port}')
            for frames in picked:
                push.send_multipart(frames)
        self.ledger.event('malformed', f'{len(picked)} messages')

    def drop(self) -> None:
        if self.t.http_port and self.rng.random() < 0.4:
            self._drop_http()
        else:
            self._drop_zmq()

    def _drop_zmq(self) -> None:
        rows = self.rng.choice([1, 50, 300, 2000])
        with self.t.client() as bc:
            bc.encode(self.t.oracle.take([self.rng.randrange(len(self.t.oracle.texts)) for _ in range(rows)]),
                      blocking=False)
            time.sleep(self.rng.uniform(0.0, 1.0))
        self.ledger.event('drop', f'zmq client closed with {rows} rows pending')

    def _drop_http(self) -> None:
        texts = self.t.oracle.take([self.rng.randrange(len(self.t.oracle.texts)) for _ in range(64)])
        body = json.dumps({'texts': texts}).encode()
        head = (f'POST /encode HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n'
                f'Content-Length: {len(body)}\r\n\r\n').encode()
        with socket.create_connection(('127.0.0.1', self.t.http_port), timeout=5) as s:
            s.sendall(head + body)
            time.sleep(self.rng.uniform(0.0, 0.5))
        self.ledger.event('drop', 'HTTP connection closed with /encode pending')

    def flood(self) -> None:
        """Sends enough 5,000-row requests at once to pass ``flood_rows``, each from its own client."""
        count = math.ceil((self.flood_rows + 1) / BIG_ROWS) + 1
        self.ledger.event('flood', f'{count} x {BIG_ROWS} rows at once')
        seeds = [self.rng.randrange(1 << 30) for _ in range(count)]
        for seed in seeds:
            thread = threading.Thread(target=self._flood_one, args=(seed,), name='flood', daemon=True)
            thread.start()
            self.threads.append(thread)
        self.threads = [t for t in self.threads if t.is_alive()]

    def _flood_one(self, seed: int) -> None:
        rng = random.Random(seed)
        try:
            bc = self.t.client(timeout_s=big_bound_s(self.t.timeout_s))
        except Exception as e:  # noqa: BLE001
            self.ledger.event('flood-error', f'{type(e).__name__}: {e}')
            return
        with bc:
            one_request(self.t, 'flood-5000', [rng.randrange(len(self.t.oracle.texts)) for _ in range(BIG_ROWS)],
                        bc.encode, bound_s=big_bound_s(self.t.timeout_s))

