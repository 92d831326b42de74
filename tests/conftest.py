"""Fixtures: every behaviour test runs against each arrangement of the core."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers import ServerProcess

#: The models as command lines after ``python -m reference``.
MODELS: dict[str, list[str]] = {
    "single": ["single"],
    "pool": ["pool", "--workers", "4"],
    "multi-thread": ["multi", "--sub-reactors", "3", "--mode", "thread"],
    "multi-process": ["multi", "--sub-reactors", "2", "--mode", "process"],
}


@pytest.fixture(params=sorted(MODELS))
def model(request: pytest.FixtureRequest) -> list[str]:
    """The command line of one model."""
    return MODELS[request.param]


@pytest.fixture
def server(model: list[str]) -> Iterator[ServerProcess]:
    """An echo server of each model, in a subprocess, killed by PID at teardown."""
    with ServerProcess(model) as proc:
        yield proc
