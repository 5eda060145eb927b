"""c3fs.memo: the single-flight (concurrent callers share one computation) and its errors."""

from __future__ import annotations

import threading

import pytest

from c3fs.memo import SingleFlight


def test_concurrent_callers_share_one_computation() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    started, release = threading.Event(), threading.Event()
    calls: list[int] = []
    results: list[int] = []

    def compute() -> int:
        calls.append(1)
        started.set()
        release.wait(10)
        return 42

    owner = threading.Thread(target=lambda: results.append(flight.run("k", compute)))
    owner.start()
    assert started.wait(10)
    waiters = [threading.Thread(target=lambda: results.append(flight.run("k", compute)))
               for _ in range(3)]
    for waiter in waiters:
        waiter.start()
    while "k" in flight and flight._calls["k"].done is None:  # a waiter has joined
        threading.Event().wait(0.001)
    release.set()
    for thread in (owner, *waiters):
        thread.join(10)
    assert results == [42] * 4 and len(calls) == 1
    assert "k" not in flight
    assert flight.run("k", lambda: 7) == 7  # a later call computes again


def test_waiters_get_the_owners_error() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    started, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def failing() -> int:
        started.set()
        release.wait(10)
        raise ValueError("bad chunk")

    def call() -> None:
        try:
            flight.run("k", failing)
        except ValueError as exc:
            errors.append(exc)

    owner = threading.Thread(target=call)
    owner.start()
    assert started.wait(10)
    waiter = threading.Thread(target=call)
    waiter.start()
    while flight._calls["k"].done is None:
        threading.Event().wait(0.001)
    release.set()
    owner.join(10)
    waiter.join(10)
    assert [str(e) for e in errors] == ["bad chunk", "bad chunk"]
    with pytest.raises(KeyError):
        flight.run("k", lambda: {}["missing"])
    assert "k" not in flight
