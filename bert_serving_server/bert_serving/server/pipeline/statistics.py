"""Server statistics, with the keys of bert-as-service 1.10.0's ``statistic`` block, and the workers
the ventilator lost and replaced, by reason (``lost_workers``, ``worker_restarts``: keys of their own
beside that block).

Memory and the cost of ``value`` are bounded whatever the history: request sizes are summed as
they come (O(1)), and clients are kept in one LRU table of at most ``max_clients`` entries
(O(max_clients) to summarise). A client forgotten from the table and coming back counts as new.
"""
from __future__ import annotations

import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Dict, Iterable, Optional

__all__ = ['ServerStatistic', 'MAX_CLIENTS', 'ACTIVE_SECONDS', 'INTERVALS', 'LOSS_REASONS', 'loss_reason']

ACTIVE_SECONDS = 180  # a client is active if it sent data within this window
MAX_CLIENTS = 10000  # clients tracked individually; the least recently seen is forgotten beyond this
INTERVALS = 200  # request intervals kept for the interval / per-second figures
# How the reasons a worker is lost start (the supervisor's, the scheduler's and the ventilator's
# wording), and their label in the metrics: a few fixed values, never the free text.
_LOSS_STARTS = (('died', 'died'), ('was silent', 'silent'), ('held a batch', 'hung'),
                ('said its results', 'results_lost'), ('registered again', 'registered_again'),
                ('could not start', 'could_not_start'))
LOSS_REASONS = tuple(reason for _, reason in _LOSS_STARTS) + ('other',)


def loss_reason(why: str) -> str:
    """The metrics' label of why a worker was lost (one of LOSS_REASONS)."""
    return next((reason for start, reason in _LOSS_STARTS if why.startswith(start)), 'other')


def _summary(name: str, values: Iterable[float]) -> Dict[str, float]:
    values = list(values)
    if not values:
        return {}
    lo, hi = min(values), max(values)
    return {f'avg_{name}': sum(values) / len(values), f'min_{name}': lo, f'max_{name}': hi,
            f'num_min_{name}': sum(v == lo for v in values), f'num_max_{name}': sum(v == hi for v in values)}


class _RunningSummary:
    """avg / min / max / num_min / num_max of a stream of numbers, in O(1) memory and time."""

    def __init__(self):
        self.count = 0
        self.total = 0
        self.lo = self.hi = None
        self.num_lo = self.num_hi = 0

    def add(self, value) -> None:
        self.count += 1
        self.total += value
        if self.lo is None or value < self.lo:
            self.lo, self.num_lo = value, 0
        if self.hi is None or value > self.hi:
            self.hi, self.num_hi = value, 0
        self.num_lo += value == self.lo
        self.num_hi += value == self.hi

    def as_dict(self, name: str) -> Dict[str, float]:
        if not self.count:
            return {}
        return {f'avg_{name}': self.total / self.count, f'min_{name}': self.lo, f'max_{name}': self.hi,
                f'num_min_{name}': self.num_lo, f'num_max_{name}': self.num_hi}


@dataclass
class _Client:
    requests: int = 0
    last_data: Optional[float] = None  # time.perf_counter() of its last data request


class ServerStatistic:
    """Counts requests as the ventilator sees them. Owned by the ventilator only.

    Args:
        max_clients: Clients kept in the per-client table; the least recently seen goes first.
    """

    def __init__(self, max_clients: int = MAX_CLIENTS):
        self.max_clients = max_clients
        self.num_data_request = 0
        self.num_sys_request = 0
        self.num_total_seq = 0
        self.num_total_client = 0  # clients seen; one forgotten and back counts again
        self.clients: 'OrderedDict[bytes, _Client]' = OrderedDict()  # least recently seen first
        self.sizes = _RunningSummary()
        self.intervals: deque = deque(maxlen=INTERVALS)
        self._last_data_time = None
        self.lost_workers: Dict[str, int] = {}  # loss_reason -> workers lost so far
        self.worker_restarts: Dict[str, int] = {}  # loss_reason -> workers replaced so far

    def lost_worker(self, why: str) -> None:
        """A worker was lost (``why``: the reason as logged)."""
        reason = loss_reason(why)
        self.lost_workers[reason] = self.lost_workers.get(reason, 0) + 1

    def worker_restarted(self, why: str) -> None:
        """A lost local worker is being replaced (``why``: the reason it was lost)."""
        reason = loss_reason(why)
        self.worker_restarts[reason] = self.worker_restarts.get(reason, 0) + 1

    def update(self, client: bytes, size: int, is_command: bool) -> None:
        entry = self.clients.get(client)
        if entry is None:
            entry = self.clients[client] = _Client()
            self.num_total_client += 1
            if len(self.clients) > self.max_clients:
                self.clients.popitem(last=False)
        else:
            self.clients.move_to_end(client)
        entry.requests += 1
        if is_command:
            self.num_sys_request += 1
            return
        now = time.perf_counter()
        self.num_data_request += 1
        self.num_total_seq += size
        self.sizes.add(size)
        entry.last_data = now
        if self._last_data_time is not None:
            self.intervals.append(now - self._last_data_time)
        self._last_data_time = now

    @property
    def value(self) -> dict:
        """The 1.10 ``statistic`` block; ``*_request_per_client`` and ``num_active_client`` cover
        the clients still in the table. O(max_clients + INTERVALS), whatever was served before."""
        now = time.perf_counter()
        out = {
            'num_data_request': self.num_data_request,
            'num_total_seq': self.num_total_seq,
            'num_sys_request': self.num_sys_request,
            'num_total_request': self.num_data_request + self.num_sys_request,
            'num_total_client': self.num_total_client,
            'num_active_client': sum(1 for c in self.clients.values()
                                     if c.last_data is not None and now - c.last_data < ACTIVE_SECONDS),
        }
        out.update(_summary('request_per_client', (c.requests for c in self.clients.values())))
        out.update(self.sizes.as_dict('size_per_request'))
        out.update(_summary('last_two_interval', self.intervals))
        out.update(_summary('request_per_second', [1.0 / v for v in self.intervals if v > 0]))
        return out
