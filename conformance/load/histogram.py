"""A latency histogram with logarithmic buckets (HDR style), mergeable across processes.

How this works
--------------
Values are whole microseconds. Values below 128 have a bucket each; above,
each power of two is split into 64 buckets, so any recorded value is known to
within 1/64 (about 1.6%) whatever its size, and recording is two integer
operations and a list increment (:meth:`Histogram.record_many` takes a
batch, for hot loops). Histograms from several processes merge by adding their
bucket counts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

__all__ = ["Histogram"]

_SUB_BITS = 6  # 64 sub-buckets per power of two
_LINEAR = 2 << _SUB_BITS  # 128: values below this have a bucket each
_BUCKETS = 64 * 48  # enough for 2**48 us (about 9 years)


class Histogram:
    """Counts of values (microseconds) in logarithmic buckets."""

    __slots__ = ("counts", "count", "max", "total")

    def __init__(self) -> None:
        self.counts = [0] * _BUCKETS
        self.count = 0
        self.max = 0
        self.total = 0

    def record(self, value: int) -> None:
        """Count one value, in whole microseconds (negative values count as 0)."""
        self.record_many((value,))

    def record_many(self, values: Iterable[int]) -> None:
        """Count each of ``values``, as :meth:`record` does, in one pass.

        For hot loops: collect the values in a list and hand it over now and
        then, instead of a method call per value. Latencies repeat (a few
        hundred distinct microsecond values in thousands), so the values are
        tallied first (in C) and each distinct one is bucketed once.
        """
        values = values if isinstance(values, list) else list(values)
        if not values:
            return
        counts = self.counts
        for value, n in Counter(values).items():
            if value < _LINEAR:
                index = value if value > 0 else 0
            else:
                shift = value.bit_length() - _SUB_BITS - 1
                index = min((shift << _SUB_BITS) + (value >> shift), _BUCKETS - 1)
            counts[index] += n
        self.count += len(values)
        self.total += sum(values)
        self.max = max(self.max, max(values))

    @staticmethod
    def lower_bound(index: int) -> int:
        """The smallest value that lands in bucket ``index``."""
        if index < _LINEAR:
            return index
        shift = (index >> _SUB_BITS) - 1
        return (index - (shift << _SUB_BITS)) << shift

    def percentile(self, p: float) -> int:
        """The value below which ``p`` percent of the recorded values lie (0 if empty)."""
        if not self.count:
            return 0
        if p >= 100:
            return self.max
        rank = max(1, int(self.count * p / 100.0 + 0.5))
        seen = 0
        for index, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                return min(self.max, self.lower_bound(index))
        return self.max

    def merge(self, others: Iterable[Histogram]) -> Histogram:
        """Add the counts of ``others`` into this histogram; return it."""
        for other in others:
            for index, n in enumerate(other.counts):
                if n:
                    self.counts[index] += n
            self.count += other.count
            self.total += other.total
            self.max = max(self.max, other.max)
        return self

    def to_dict(self) -> dict[str, object]:
        """A sparse, JSON-ready form (``from_dict`` reads it back)."""
        return {
            "buckets": {str(i): n for i, n in enumerate(self.counts) if n},
            "count": self.count,
            "max": self.max,
            "total": self.total,
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Histogram:
        hist = cls()
        buckets = data["buckets"]
        assert isinstance(buckets, dict)
        for index, n in buckets.items():
            hist.counts[int(index)] = int(n)
        for name in ("count", "max", "total"):
            value = data[name]
            assert isinstance(value, int)
            setattr(hist, name, value)
        return hist

    def summary(self) -> dict[str, int]:
        """Percentiles in microseconds: p50, p90, p99, p99.9 and max."""
        return {
            "p50": self.percentile(50),
            "p90": self.percentile(90),
            "p99": self.percentile(99),
            "p99.9": self.percentile(99.9),
            "max": self.max,
        }
