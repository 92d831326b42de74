"""Hypothesis strategies for raw payloads: arbitrary bytes, NUL-heavy, every byte value, large.

Below the scenario strategies (:mod:`conformance.properties.strategies`) and the protocol
models (:mod:`conformance.protocols`), which both draw payloads from here:
this module imports nothing else of the suite.
"""

from __future__ import annotations

import random

from hypothesis import strategies as st

__all__ = ["payloads", "seeded"]

_FRAGMENTS = [b"\0", b"\0\0\0\0", b"a", b"\r\n", b"\xff", b"\0\xff", b"\n"]


def seeded(size_and_seed: tuple[int, int]) -> bytes:
    """``size`` bytes drawn from ``random.Random(seed)``: a large payload that shrinks by size."""
    size, seed = size_and_seed
    return random.Random(seed).randbytes(size)


def payloads(*, min_size: int = 1, max_size: int = 4096) -> st.SearchStrategy[bytes]:
    """Payloads: small arbitrary bytes, NUL-heavy ones, all 256 byte values, large ones."""
    small_max = min(max_size, 512)
    shapes = [
        st.binary(min_size=min_size, max_size=small_max),
        st.lists(st.sampled_from(_FRAGMENTS), min_size=max(1, min_size), max_size=small_max // 4)
        .map(b"".join)
        .filter(lambda b: min_size <= len(b) <= max_size),
    ]
    if max_size >= 256:
        shapes.append(st.permutations(list(range(256))).map(bytes))
    if max_size > small_max:
        shapes.append(st.tuples(st.integers(min_size, max_size), st.integers(0, 2**16)).map(seeded))
    return st.one_of(shapes)
