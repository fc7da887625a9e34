"""The soak's bookkeeping: every request and every chaos action, and the summary built from them.

Each request ends in exactly one outcome:

    correct   answered, and every row matches the oracle
    wrong     answered, but a row or the shape differs from the oracle
    failed    an error that names its cause: a server error reply, "busy", an HTTP error status
    lost      no answer and no error within its bound (the client's own timeout fired, or the call
              did not even return by then: the harness's watchdog calls that "hung")
"""
from __future__ import annotations

import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

__all__ = ['Ledger', 'Record', 'normalise', 'format_summary']

OUTCOMES = ('correct', 'wrong', 'failed', 'lost')
# A chaos action counts as a suspect of a loss if it happened within this many seconds before the
# request started, or while it was in flight.
SUSPECT_LEAD_S = 2.0
MAX_LISTED = 25


def normalise(reason: str) -> str:
    """Groups reasons that differ only in numbers, ids or ports."""
    reason = re.sub(r'\b[0-9a-f]{8}-[0-9a-f-]{27}\b', '<id>', str(reason))
    reason = re.sub(r'\d+(\.\d+)?', 'N', reason)
    return ' '.join(reason.split())[:140]


@dataclass
class Record:
    """One request, from the moment it is sent to its outcome. Times are seconds since the soak began."""
    kind: str
    rows: int
    bound: float
    started: float
    ended: Optional[float] = None
    outcome: Optional[str] = None
    reason: str = ''
    late: bool = False  # the call returned after the watchdog had called it lost


@dataclass
class Event:
    at: float
    action: str
    detail: str


@dataclass
class Ledger:
    """Thread-safe record of requests and chaos actions."""
    t0: float = field(default_factory=time.monotonic)
    records: List[Record] = field(default_factory=list)
    events: List[Event] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def begin(self, kind: str, rows: int, bound: float) -> Record:
        record = Record(kind, rows, bound, self.now())
        with self._lock:
            self.records.append(record)
        return record

    def correct(self, record: Record) -> None:
        self._end(record, 'correct', '')

    def wrong(self, record: Record, why: str) -> None:
        self._end(record, 'wrong', why)

    def failed(self, record: Record, reason: str) -> None:
        self._end(record, 'failed', reason)

    def lost(self, record: Record, reason: str) -> None:
        self._end(record, 'lost', reason)

    def _end(self, record: Record, outcome: str, reason: str) -> None:
        with self._lock:
            if record.outcome is not None:  # the watchdog was first
                record.late = True
                return
            record.ended, record.outcome, record.reason = self.now(), outcome, reason

    def event(self, action: str, detail: str = '') -> None:
        with self._lock:
            self.events.append(Event(self.now(), action, detail))

    def sweep(self, slack: float) -> int:
        """Calls lost every open request older than its bound plus ``slack``; returns how many."""
        now, count = self.now(), 0
        with self._lock:
            for r in self.records:
                if r.outcome is None and now - r.started > r.bound + slack:
                    r.ended, r.outcome, count = now, 'lost', count + 1
                    r.reason = f'hung: the call did not return within {r.bound + slack:.0f}s'
        return count

    def open_count(self) -> int:
        with self._lock:
            return sum(r.outcome is None for r in self.records)

    def summary(self) -> dict:
        with self._lock:
            records, events = list(self.records), list(self.events)
        done = [r for r in records if r.outcome is not None]
        out = {'sent': len(records), 'open': len(records) - len(done)}
        out.update({o: sum(r.outcome == o for r in done) for o in OUTCOMES})
        out['answered'] = out['correct'] + out['wrong']
        out['rows_answered'] = sum(r.rows for r in done if r.outcome in ('correct', 'wrong'))
        out['late_returns'] = sum(r.late for r in records)
        out['latency_ms'] = _percentiles([r for r in done if r.outcome == 'correct'])
        out['failed_by_reason'] = dict(Counter(normalise(r.reason) for r in done if r.outcome == 'failed')
                                       .most_common())
        out['lost_by_reason'] = dict(Counter(normalise(r.reason) for r in done if r.outcome == 'lost')
                                     .most_common())
        out['by_kind'] = {}
        for kind in sorted({r.kind for r in records}):
            mine = [r for r in records if r.kind == kind]
            row = {'sent': len(mine), 'rows': sum(r.rows for r in mine)}
            row.update({o: sum(r.outcome == o for r in mine) for o in OUTCOMES})
            row.update(_percentiles([r for r in mine if r.outcome == 'correct']))
            out['by_kind'][kind] = row
        out['chaos'] = dict(Counter(e.action for e in events))
        bad = [r for r in done if r.outcome in ('lost', 'wrong')]
        suspects = Counter()
        listed = []
        for r in bad:
            near = [e for e in events if r.started - SUSPECT_LEAD_S <= e.at <= (r.ended or r.started + r.bound)]
            suspects.update({e.action for e in near} or {'(no chaos action)'})
            if len(listed) < MAX_LISTED:
                listed.append({'kind': r.kind, 'rows': r.rows, 'outcome': r.outcome, 'started_s': round(r.started, 1),
                               'reason': r.reason, 'chaos_nearby': [f'{e.at:.1f}s {e.action} {e.detail}'.strip()
                                                                    for e in near]})
        out['lost_or_wrong_near_chaos'] = dict(suspects.most_common())
        out['lost_or_wrong_examples'] = listed
        out['chaos_log'] = [f'{e.at:.1f}s {e.action} {e.detail}'.strip() for e in events]
        return out


def _percentiles(records: List[Record]) -> Dict[str, Optional[float]]:
    if not records:
        return {'p50_ms': None, 'p99_ms': None}
    p50, p99 = np.percentile([(r.ended - r.started) * 1000.0 for r in records], [50, 99])
    return {'p50_ms': round(float(p50), 1), 'p99_ms': round(float(p99), 1)}


def _ms(value: Optional[float]) -> str:
    return '-' if value is None else f'{value:.0f}'


def _mb(value: Optional[float]) -> str:
    return '-' if value is None else f'{value:.0f}'


def format_summary(result: dict) -> str:
    """The human-readable table of a soak result (the dict that is also written as JSON)."""
    s = result['requests']
    lines = [f"soak: {result['seconds']:.0f}s of traffic, verdict {result['verdict']}"
             + (f" ({'; '.join(result['problems'])})" if result['problems'] else ''), '',
             f"{'kind':<18}{'sent':>7}{'rows':>9}{'correct':>9}{'wrong':>7}{'failed':>8}{'lost':>6}"
             f"{'p50 ms':>9}{'p99 ms':>9}"]
    for kind, row in s['by_kind'].items():
        lines.append(f"{kind:<18}{row['sent']:>7}{row['rows']:>9}{row['correct']:>9}{row['wrong']:>7}"
                     f"{row['failed']:>8}{row['lost']:>6}{_ms(row['p50_ms']):>9}{_ms(row['p99_ms']):>9}")
    lines.append(f"{'TOTAL':<18}{s['sent']:>7}{'':>9}{s['correct']:>9}{s['wrong']:>7}{s['failed']:>8}"
                 f"{s['lost']:>6}{_ms(s['latency_ms']['p50_ms']):>9}{_ms(s['latency_ms']['p99_ms']):>9}")
    lines.append(f"answered {s['answered']} ({s['rows_answered'] / max(result['seconds'], 1):.0f} rows/s), "
                 f"late returns {s['late_returns']}, still open {s['open']}")
    for title, key in (('failed, by reason', 'failed_by_reason'), ('lost, by reason', 'lost_by_reason'),
                       ('lost or wrong, by chaos action nearby', 'lost_or_wrong_near_chaos')):
        if s[key]:
            lines += ['', title + ':'] + [f'  {n:>6}  {reason}' for reason, n in s[key].items()]
    lines += ['', 'chaos actions: ' + (', '.join(f'{a} {n}' for a, n in sorted(s['chaos'].items())) or 'none')]
    for name, server in result['servers'].items():
        lines += ['', f"server {name}: flags {' '.join(server['flags'])}"]
        if server['skipped_flags']:
            lines.append(f"  not supported by this server, skipped: {' '.join(server['skipped_flags'])}")
        lines.append(f"  {'process':<22}{'RSS start':>10}{'warm':>8}{'end':>8}{'growth':>8}  MiB")
        for proc, m in server['rss'].items():
            lines.append(f"  {proc:<22}{_mb(m['start']):>10}{_mb(m['warm']):>8}{_mb(m['end']):>8}"
                         f"{_mb(m['growth_after_warm']):>8}")
        lines.append(f"  shutdown: {server['shutdown']}")
    return '\n'.join(lines)
