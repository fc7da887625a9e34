"""A fixed-bucket histogram: a plain list of counts and a sum, as Prometheus keeps them.

Recording is one ``bisect`` and two additions, with no lock: each histogram has one owner (the sink
records, and reads them for SHOW_STATUS in the same thread). Memory is fixed by the bucket bounds,
whatever was observed. The bucket sets below are the server's; the proxy turns the counts into
Prometheus histograms (``http/metrics.py``), so their ``le`` labels are these bounds.
"""
from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

__all__ = ['LENGTH_BUCKETS', 'ROWS_BUCKETS', 'SECONDS_BUCKETS', 'TOKENS_BUCKETS', 'Histogram']

# Seconds, from a one-sentence request on a GPU (~1 ms) to a big request streaming for minutes.
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   120.0)
# Rows of one model call (at most -max_batch_size).
ROWS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# Word-piece rows the dense layers of one model call computed, padding included (at most rows x padded length).
TOKENS_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)
# Word pieces of one input, [CLS] and [SEP] included (at most -max_seq_len).
LENGTH_BUCKETS = (4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Histogram:
    """Counts of observations per bucket, and their sum.

    Args:
        bounds: the upper bounds of the buckets, increasing; a last bucket (+Inf) takes the rest.

    Attributes:
        counts: observations per bucket (not cumulative), ``len(bounds) + 1`` of them.
        sum: the sum of the observations.
    """
    __slots__ = ('bounds', 'counts', 'sum')

    def __init__(self, bounds: Sequence[float], counts: list[int] | None = None, total: float = 0.0):
        self.bounds = tuple(bounds)
        self.counts = list(counts) if counts is not None else [0] * (len(self.bounds) + 1)
        self.sum = total

    def observe(self, value: float) -> None:
        """Adds one observation; ``value`` equal to a bound falls in that bound's bucket (``le``)."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def copy(self) -> Histogram:
        return Histogram(self.bounds, self.counts, self.sum)

    def since(self, earlier: Histogram | None) -> Histogram:
        """The observations made after ``earlier`` (a copy of this histogram taken then)."""
        if earlier is None:
            return self.copy()
        return Histogram(self.bounds, [a - b for a, b in zip(self.counts, earlier.counts)], self.sum - earlier.sum)

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile (0 < q < 1) by linear interpolation within its bucket, as Prometheus'
        ``histogram_quantile``; the last bound if it falls in the +Inf bucket; None if empty."""
        total = self.count
        if total == 0:
            return None
        rank, seen = q * total, 0
        for i, n in enumerate(self.counts):
            if n and seen + n >= rank:
                if i == len(self.bounds):
                    return self.bounds[-1]
                lower = 0.0 if i == 0 else self.bounds[i - 1]
                return lower + (self.bounds[i] - lower) * (rank - seen) / n
            seen += n
        return self.bounds[-1]

    def to_json(self) -> dict:
        """``{"counts": [...], "sum": s, "count": n}``: the counts per bucket, not cumulative."""
        return {'counts': list(self.counts), 'sum': self.sum, 'count': self.count}
