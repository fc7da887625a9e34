"""Timing shared by the benchmark's peers."""
from __future__ import annotations

import time
from typing import Callable, List, Tuple, TypeVar

__all__ = ['one_sentence_seconds', 'timed']

T = TypeVar('T')


def timed(call: Callable[[], T]) -> Tuple[float, T]:
    """(seconds, result) of one ``call()``, on the wall clock."""
    t0 = time.perf_counter()
    result = call()
    return time.perf_counter() - t0, result


def one_sentence_seconds(encode: Callable[[List[str]], object], lines: List[str], requests: int,
                         warm_up: int) -> List[float]:
    """(d) for any peer: ``warm_up`` untimed calls, then ``requests`` timed one-sentence calls."""
    for s in lines[:warm_up]:
        encode([s])
    seconds = []
    for i in range(requests):
        t0 = time.perf_counter()
        encode([lines[i % len(lines)]])
        seconds.append(time.perf_counter() - t0)
    return seconds
