"""Timing shared by the benchmark's peers, and its progress lines."""
from __future__ import annotations

import sys
import time
from typing import Callable, Dict, List, Sequence, Tuple, TypeVar

import numpy as np

__all__ = ['LATENCY_WARM_UP', 'PAUSE_SECONDS', 'one_sentence_latencies', 'one_sentence_seconds', 'percentiles_ms', 'say',
           'timed']

T = TypeVar('T')
# Untimed one-sentence calls before the timed ones, for every peer.
LATENCY_WARM_UP = 10
# The paced single-sentence figures: each call after this long idle, as a search box or a chatbot
# sends them (seconds apart in real use). A call after an idle gap is slower (why was not measured:
# caches, halted vCPUs, sleeping thread pools): one float32 sentence took 4.8-5.0 ms back to back in
# process and 7.1-9.0 ms after 10 ms idle, ONNX Runtime's 3.3-3.5 and 5.5-5.7 (2 vCPUs, Intel Xeon).
# The service's own p50 pays part of it anyway, between a reply and the next request; the in-process
# peers, timed back to back, do not.
PAUSE_SECONDS = 0.010
_T0 = time.monotonic()


def say(message: str) -> None:
    """A progress line on stderr, stamped with the seconds since the benchmark began."""
    sys.stderr.write(f'[compare {time.monotonic() - _T0:6.1f}s] {message}\n')
    sys.stderr.flush()


def percentiles_ms(seconds: Sequence[float]) -> Dict[str, float]:
    """p50 and p99 of durations given in seconds, in milliseconds."""
    p50, p99 = np.percentile(np.asarray(seconds, dtype=np.float64) * 1000.0, [50, 99])
    return {'p50_ms': float(p50), 'p99_ms': float(p99)}


def timed(call: Callable[[], T]) -> Tuple[float, T]:
    """(seconds, result) of one ``call()``, on the wall clock."""
    t0 = time.perf_counter()
    result = call()
    return time.perf_counter() - t0, result


def one_sentence_seconds(encode: Callable[[List[str]], object], lines: List[str], requests: int,
                         warm_up: int, pause: float = 0.0) -> List[float]:
    """(d) for any peer: ``warm_up`` untimed calls, then ``requests`` timed one-sentence calls, each
    ``pause`` seconds after the one before (untimed)."""
    for s in lines[:warm_up]:
        encode([s])
    seconds = []
    for i in range(requests):
        if pause:
            time.sleep(pause)
        t0 = time.perf_counter()
        encode([lines[i % len(lines)]])
        seconds.append(time.perf_counter() - t0)
    return seconds


def one_sentence_latencies(encode: Callable[[List[str]], object], lines: List[str], requests: int, warm_up: int,
                           label: str, report: Callable[[str], None] = say) -> Tuple[List[float], List[float]]:
    """(d) for any peer: ``requests`` one-sentence calls back to back (after ``warm_up`` untimed ones),
    then as many each after PAUSE_SECONDS idle; ``label`` names the peer in the progress lines."""
    report(f'{label}: {requests} one-sentence calls')
    seconds = one_sentence_seconds(encode, lines, requests, warm_up)
    report(f'{label}: {requests} one-sentence calls, {PAUSE_SECONDS * 1e3:.0f} ms apart')
    return seconds, one_sentence_seconds(encode, lines, requests, 0, PAUSE_SECONDS)
