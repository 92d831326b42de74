"""Histogram: logarithmic buckets, percentiles within 1/64, merging."""

from __future__ import annotations

import random

from conformance.load.histogram import Histogram


def test_Histogram_percentiles_are_within_one_sixty_fourth() -> None:
    rng = random.Random(3)
    values = sorted(int(rng.lognormvariate(6, 1.5)) for _ in range(20_000))
    hist = Histogram()
    for value in values:
        hist.record(value)
    for p in (50, 90, 99, 99.9):
        exact = values[max(0, int(len(values) * p / 100 + 0.5) - 1)]
        got = hist.percentile(p)
        assert got <= exact, (p, got, exact)
        assert exact - got <= max(1, exact / 64), (p, got, exact)
    assert hist.percentile(100) == hist.max == values[-1]
    assert hist.count == len(values)


def test_Histogram_lower_bound_is_the_smallest_value_of_each_bucket() -> None:
    hist = Histogram()
    for value in [0, 1, 127, 128, 129, 255, 256, 1000, 10**6, 10**9]:
        before = list(hist.counts)
        hist.record(value)
        index = next(i for i, (a, b) in enumerate(zip(before, hist.counts, strict=True)) if a != b)
        assert Histogram.lower_bound(index) <= value
        assert value - Histogram.lower_bound(index) <= max(0, value // 64)


def test_Histogram_merges_and_survives_a_round_trip_through_a_dict() -> None:
    a, b = Histogram(), Histogram()
    for value in range(1, 1000):
        (a if value % 2 else b).record(value)
    merged = Histogram().merge([Histogram.from_dict(a.to_dict()), Histogram.from_dict(b.to_dict())])
    whole = Histogram()
    for value in range(1, 1000):
        whole.record(value)
    assert merged.counts == whole.counts
    assert merged.summary() == whole.summary()
    assert Histogram().percentile(50) == 0


def test_Histogram_record_many_counts_as_record_does() -> None:
    rng = random.Random(5)
    values = [-3, 0, 1, 127, 128, 2**60, *(int(rng.lognormvariate(6, 2)) for _ in range(5000))]
    one_by_one, batched = Histogram(), Histogram()
    for value in values:
        one_by_one.record(value)
    batched.record_many(values[:100])
    batched.record_many(iter(values[100:]))
    batched.record_many([])
    assert batched.counts == one_by_one.counts
    assert (batched.count, batched.total, batched.max) == (
        one_by_one.count,
        one_by_one.total,
        one_by_one.max,
    )
    assert batched.counts[-1] == 1  # 2**60 lands in the last bucket, not past the end
