"""EventLoop: callbacks from other threads, timers, the loop-thread rule."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from reference.loop import EventLoop


@pytest.fixture
def running_loop() -> Iterator[EventLoop]:
    """A loop run by a background thread, stopped and joined at teardown."""
    loop = EventLoop("test")
    started = threading.Event()
    loop.call_soon_threadsafe(started.set)
    thread = threading.Thread(target=loop.run)
    thread.start()
    assert started.wait(10), "the loop never ran its first callback"
    yield loop
    loop.stop()
    thread.join(10)
    assert not thread.is_alive(), "the loop did not stop"
    loop.close()


def test_EventLoop_call_soon_threadsafe_wakes_a_blocked_loop(running_loop: EventLoop) -> None:
    ran_on: list[int] = []
    done = threading.Event()

    def record() -> None:
        ran_on.append(threading.get_ident())
        done.set()

    running_loop.call_soon_threadsafe(record)  # The loop is blocked in select.
    assert done.wait(10)
    assert ran_on != [threading.get_ident()]


def test_EventLoop_runs_callbacks_in_call_order(running_loop: EventLoop) -> None:
    seen: list[int] = []
    done = threading.Event()
    for i in range(1000):
        running_loop.call_soon_threadsafe(seen.append, i)
    running_loop.call_soon_threadsafe(done.set)
    assert done.wait(10)
    assert seen == list(range(1000))


def test_EventLoop_call_later_runs_timers_by_deadline_and_skips_cancelled() -> None:
    loop = EventLoop("timers")
    order: list[str] = []
    loop.call_later(0.02, lambda: order.append("late"))
    cancelled = loop.call_later(0.01, lambda: order.append("cancelled"))
    loop.call_later(0.0, lambda: order.append("early"))
    cancelled.cancel()
    loop.call_later(0.03, loop.stop)
    loop.run()
    loop.close()
    assert order == ["early", "late"]


def test_EventLoop_assert_in_loop_thread_rejects_other_threads(running_loop: EventLoop) -> None:
    with pytest.raises(RuntimeError, match="this loop runs on thread"):
        running_loop.assert_in_loop_thread()
    errors: list[BaseException] = []
    done = threading.Event()

    def check() -> None:
        try:
            running_loop.assert_in_loop_thread()
        except BaseException as exc:
            errors.append(exc)
        done.set()

    running_loop.call_soon_threadsafe(check)
    assert done.wait(10)
    assert errors == []


def test_EventLoop_stop_from_another_thread_ends_run() -> None:
    loop = EventLoop("stopper")
    thread = threading.Thread(target=loop.run)
    thread.start()
    loop.stop()
    thread.join(10)
    assert not thread.is_alive()
    loop.close()
    with pytest.raises(RuntimeError, match="closed loop"):
        loop.run()


def test_EventLoop_survives_a_callback_that_raises(
    running_loop: EventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    def fail() -> None:
        raise ValueError("boom")

    done = threading.Event()
    running_loop.call_soon_threadsafe(fail)
    running_loop.call_soon_threadsafe(done.set)
    assert done.wait(10), "the loop died with the failing callback"
    assert any("failed" in r.getMessage() and r.exc_info for r in caplog.records)
