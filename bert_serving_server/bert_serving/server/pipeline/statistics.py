"""Server statistics, with the keys of bert-as-service 1.10.0's ``statistic`` block."""
from __future__ import annotations

import time
from collections import Counter, OrderedDict, deque
from typing import Dict, Iterable

__all__ = ['ServerStatistic']

ACTIVE_SECONDS = 180  # a client is active if it sent data within this window
MAX_CLIENTS = 500  # clients tracked individually (older ones are forgotten for the activity count)
INTERVALS = 200  # request intervals kept for the interval / per-second figures


def _summary(name: str, values: Iterable[float]) -> Dict[str, float]:
    values = list(values)
    if not values:
        return {}
    lo, hi = min(values), max(values)
    return {f'avg_{name}': sum(values) / len(values), f'min_{name}': lo, f'max_{name}': hi,
            f'num_min_{name}': sum(v == lo for v in values), f'num_max_{name}': sum(v == hi for v in values)}


class ServerStatistic:
    """Counts requests as the ventilator sees them. Owned by the ventilator only."""

    def __init__(self):
        self.num_data_request = 0
        self.num_sys_request = 0
        self.num_total_seq = 0
        self.requests_per_client: Counter = Counter()
        self.sizes: Counter = Counter()  # request size -> how many requests had it
        self.last_active: 'OrderedDict[bytes, float]' = OrderedDict()
        self.intervals: deque = deque(maxlen=INTERVALS)
        self._last_data_time = None

    def update(self, client: bytes, size: int, is_command: bool) -> None:
        self.requests_per_client[client] += 1
        if is_command:
            self.num_sys_request += 1
            return
        now = time.perf_counter()
        self.num_data_request += 1
        self.num_total_seq += size
        self.sizes[size] += 1
        self.last_active[client] = now
        self.last_active.move_to_end(client)
        if len(self.last_active) > MAX_CLIENTS:
            self.last_active.popitem(last=False)
        if self._last_data_time is not None:
            self.intervals.append(now - self._last_data_time)
        self._last_data_time = now

    @property
    def value(self) -> dict:
        now = time.perf_counter()
        out = {
            'num_data_request': self.num_data_request,
            'num_total_seq': self.num_total_seq,
            'num_sys_request': self.num_sys_request,
            'num_total_request': self.num_data_request + self.num_sys_request,
            'num_total_client': len(self.requests_per_client),
            'num_active_client': sum(1 for t in self.last_active.values() if now - t < ACTIVE_SECONDS),
        }
        out.update(_summary('request_per_client', self.requests_per_client.values()))
        sizes = list(self.sizes.elements())
        out.update(_summary('size_per_request', sizes))
        out.update(_summary('last_two_interval', self.intervals))
        out.update(_summary('request_per_second', [1.0 / v for v in self.intervals if v > 0]))
        return out
