"""CircuitBreaker: closed -> open -> half-open -> closed / open, one probe at a time, probe deadline, every event."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import msgspec
import pytest

from esper.runtime.breaker import (
    DEADLINE_EXCEEDED,
    PROBE_DEADLINE_EXCEEDED,
    CircuitBreaker,
)
from esper.runtime.breaker_statistics import BreakerStatistics
from esper.runtime.errors import BreakerOpen, ProbeDeadlineExceeded
from schemas.enums import BreakerState
from schemas.runtime import BreakerTransition

if TYPE_CHECKING:
    from esper.runtime.clock import ManualClock
    from esper.runtime.events import RecordingSink

CLOSED = BreakerState.CLOSED
OPEN = BreakerState.OPEN
HALF_OPEN = BreakerState.HALF_OPEN


def make(
    clock: ManualClock,
    sink: RecordingSink,
    *,
    failure_threshold: int = 3,
    open_s: float = 30.0,
    probe_deadline_s: float = 5.0,
) -> CircuitBreaker:
    return CircuitBreaker(
        "tamiyo.urza",
        clock=clock,
        sink=sink,
        failure_threshold=failure_threshold,
        open_s=open_s,
        probe_deadline_s=probe_deadline_s,
    )


def transitions(sink: RecordingSink) -> list[tuple[BreakerState, BreakerState]]:
    return [(event.from_state, event.to_state) for event in sink.of_type(BreakerTransition)]


def trip(breaker: CircuitBreaker) -> None:
    for _ in range(3):
        assert breaker.allow()
        breaker.record_failure("boom")


class Held:
    """An async callable that waits until released, recording that it started."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.calls = 0

    async def __call__(self, value: int) -> int:
        self.calls += 1
        self.started.set()
        await self.release.wait()
        return value


async def wait_for_sleeper(clock: ManualClock) -> None:
    async with asyncio.timeout(1):
        # The manual clock has no event for "someone is sleeping", so yield until the watchdog's sleep shows up.
        while clock.sleepers == 0:  # noqa: ASYNC110 - polls a counter with no event to wait on; bounded by timeout
            await asyncio.sleep(0)


def test_defaults_follow_the_reference(clock: ManualClock, sink: RecordingSink) -> None:
    """3 consecutive failures open it, it stays open 30 s, then 2 probe successes close it."""
    breaker = CircuitBreaker("b", clock=clock, sink=sink)
    breaker.record_failure("a")
    breaker.record_failure("b")
    assert breaker.state is CLOSED
    breaker.record_failure("c")
    assert breaker.state is OPEN
    assert breaker.time_until_half_open_s() == 30.0
    clock.advance(29.999)
    assert not breaker.allow()
    clock.advance(0.001)
    assert breaker.allow()
    breaker.record_success()
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is CLOSED


def test_success_in_closed_clears_the_failure_streak(clock: ManualClock, sink: RecordingSink) -> None:
    breaker = make(clock, sink)
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state is CLOSED
    assert breaker.statistics().consecutive_failures == 2
    assert sink.events == []


def test_full_cycle_closed_open_half_open_closed_then_open_again(clock: ManualClock, sink: RecordingSink) -> None:
    """Every transition, the half-open probe successes included, is emitted in order with the clock's time."""
    breaker = make(clock, sink, open_s=10.0)
    trip(breaker)
    assert breaker.state is OPEN
    with pytest.raises(BreakerOpen, match=r"'tamiyo\.urza' is open; half-open in 10\.000s"):
        breaker.acquire()
    clock.advance(4.0)
    assert breaker.time_until_half_open_s() == 6.0
    clock.advance(6.0)
    assert breaker.time_until_half_open_s() == 0.0
    assert breaker.state is OPEN  # lazily: the move happens at the next allow()
    assert breaker.allow()
    assert breaker.state is HALF_OPEN
    breaker.record_success()
    assert breaker.state is HALF_OPEN
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is CLOSED

    trip(breaker)
    clock.advance(10.0)
    assert breaker.allow()
    breaker.record_failure("still down")
    assert breaker.state is OPEN
    assert transitions(sink) == [
        (CLOSED, OPEN),
        (OPEN, HALF_OPEN),
        (HALF_OPEN, HALF_OPEN),
        (HALF_OPEN, CLOSED),
        (CLOSED, OPEN),
        (OPEN, HALF_OPEN),
        (HALF_OPEN, OPEN),
    ]
    events = sink.of_type(BreakerTransition)
    assert all(event.breaker == "tamiyo.urza" for event in events)
    assert [event.at_s for event in events] == [0.0, 10.0, 10.0, 10.0, 10.0, 20.0, 20.0]
    assert events[0].reason == "3 consecutive failures, last: boom"
    assert events[2].reason == "probe_succeeded 1/2"
    assert events[6].reason == "half-open failure: still down"
    assert breaker.statistics().times_opened == 3


def test_half_open_admits_exactly_one_probe_at_a_time(clock: ManualClock, sink: RecordingSink) -> None:
    breaker = make(clock, sink)
    trip(breaker)
    clock.advance(30.0)
    assert breaker.allow()
    assert not breaker.allow()
    with pytest.raises(BreakerOpen, match="half-open with its probe in flight"):
        breaker.acquire()
    breaker.record_success()
    assert breaker.allow()  # the next probe, only once the first reported
    assert not breaker.allow()
    stats = breaker.statistics()
    assert stats.probe_in_flight
    assert stats.half_open_successes == 1
    assert stats.refused == 3


def test_a_deadline_overrun_counts_as_a_failure(clock: ManualClock, sink: RecordingSink) -> None:
    breaker = make(clock, sink)
    for _ in range(3):
        breaker.record_deadline_overrun()
    assert breaker.state is OPEN
    assert sink.of_type(BreakerTransition)[0].reason == f"3 consecutive failures, last: {DEADLINE_EXCEEDED}"


def test_a_silent_probe_expires_at_its_deadline_and_reopens(clock: ManualClock, sink: RecordingSink) -> None:
    """A probe that never reports cannot wedge the breaker: after probe_deadline_s it counts as failed."""
    breaker = make(clock, sink, probe_deadline_s=2.0)
    trip(breaker)
    clock.advance(30.0)
    assert breaker.allow()
    clock.advance(1.999)
    assert not breaker.allow()
    assert breaker.state is HALF_OPEN
    clock.advance(0.001)
    assert not breaker.allow()
    assert breaker.state is OPEN
    assert sink.of_type(BreakerTransition)[-1].reason == PROBE_DEADLINE_EXCEEDED
    breaker.record_success()  # the hung probe finally answers: too late to count
    assert breaker.state is OPEN
    clock.advance(30.0)
    assert breaker.allow()


def test_forced_transitions_and_reset_are_events(clock: ManualClock, sink: RecordingSink) -> None:
    breaker = make(clock, sink)
    breaker.force_open("operator")
    assert breaker.state is OPEN
    breaker.force_closed("operator")
    assert breaker.state is CLOSED
    breaker.record_failure()
    breaker.record_failure()
    breaker.reset()
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state is CLOSED  # reset cleared the streak
    assert transitions(sink) == [(CLOSED, OPEN), (OPEN, CLOSED), (CLOSED, CLOSED)]
    assert [event.reason for event in sink.of_type(BreakerTransition)] == [
        "forced: operator",
        "forced: operator",
        "reset",
    ]


def test_statistics_is_a_frozen_record(clock: ManualClock, sink: RecordingSink) -> None:
    breaker = make(clock, sink)
    assert breaker.allow()
    breaker.record_success()
    stats = breaker.statistics()
    assert isinstance(stats, BreakerStatistics)
    assert stats.allowed == 1
    assert stats.successes == 1
    with pytest.raises(AttributeError):
        stats.allowed = 5  # type: ignore[misc]  # proving it is frozen
    decoded = msgspec.json.decode(msgspec.json.encode(stats), type=BreakerStatistics)
    assert decoded == stats


def test_invalid_settings_are_refused(clock: ManualClock, sink: RecordingSink) -> None:
    with pytest.raises(ValueError, match="failure_threshold must be >= 1, got 0"):
        make(clock, sink, failure_threshold=0)
    with pytest.raises(ValueError, match="probe_deadline_s must be > 0"):
        make(clock, sink, probe_deadline_s=0.0)


async def test_call_records_outcomes_and_propagates_errors(clock: ManualClock, sink: RecordingSink) -> None:
    breaker = make(clock, sink)

    async def double(x: int) -> int:
        return 2 * x

    async def fail(message: str) -> int:
        raise KeyError(message)

    assert await breaker.call(double, 21) == 42
    for _ in range(3):
        with pytest.raises(KeyError, match="nope"):
            await breaker.call(fail, "nope")
    assert breaker.state is OPEN
    assert sink.of_type(BreakerTransition)[0].reason == "3 consecutive failures, last: KeyError"
    calls = Held()
    with pytest.raises(BreakerOpen):
        await breaker.call(calls, 1)
    assert calls.calls == 0


async def test_call_admits_one_probe_while_concurrent_callers_fail_fast(
    clock: ManualClock, sink: RecordingSink
) -> None:
    breaker = make(clock, sink)
    trip(breaker)
    clock.advance(30.0)
    probe = Held()
    other = Held()
    async with asyncio.timeout(1), asyncio.TaskGroup() as group:
        probing = group.create_task(breaker.call(probe, 7))
        await probe.started.wait()
        with pytest.raises(BreakerOpen, match="probe in flight"):
            await breaker.call(other, 8)
        probe.release.set()
    assert probing.result() == 7
    assert other.calls == 0
    assert breaker.state is HALF_OPEN
    assert breaker.statistics().half_open_successes == 1


async def test_call_cancels_a_hung_probe_at_the_probe_deadline(clock: ManualClock, sink: RecordingSink) -> None:
    breaker = make(clock, sink, probe_deadline_s=2.0)
    trip(breaker)
    clock.advance(30.0)
    hung = Held()

    async def probe() -> None:
        with pytest.raises(ProbeDeadlineExceeded, match=r"exceeded its 2\.0s deadline"):
            await breaker.call(hung, 1)

    async with asyncio.timeout(1), asyncio.TaskGroup() as group:
        group.create_task(probe())
        await hung.started.wait()
        await wait_for_sleeper(clock)
        clock.advance(2.0)
    assert breaker.state is OPEN
    assert transitions(sink)[-1] == (HALF_OPEN, OPEN)
    assert sink.of_type(BreakerTransition)[-1].reason == PROBE_DEADLINE_EXCEEDED
    assert breaker.time_until_half_open_s() == 30.0


async def test_a_probe_whose_call_is_cancelled_from_inside_gives_its_slot_back_without_a_verdict(
    clock: ManualClock, sink: RecordingSink
) -> None:
    """fn raising CancelledError itself (it awaited a future another task cancelled) left the probe with no outcome:
    call() failed with IndexError and the probe slot stayed in flight until its deadline."""
    breaker = make(clock, sink)
    trip(breaker)
    clock.advance(30.0)

    async def cancelled_elsewhere() -> int:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        future.cancel()
        return await future

    with pytest.raises(asyncio.CancelledError, match="half-open probe's call was cancelled"):
        await breaker.call(cancelled_elsewhere)
    assert breaker.state is HALF_OPEN
    assert not breaker.statistics().probe_in_flight
    assert await breaker.call(asyncio.sleep, 0, 7) == 7  # the next call is the probe
    assert breaker.statistics().half_open_successes == 1


async def test_cancelled_probe_gives_its_slot_back_without_a_verdict(clock: ManualClock, sink: RecordingSink) -> None:
    breaker = make(clock, sink)
    trip(breaker)
    clock.advance(30.0)
    hung = Held()
    async with asyncio.timeout(1), asyncio.TaskGroup() as group:
        probing = group.create_task(breaker.call(hung, 1))
        await hung.started.wait()
        probing.cancel()
    assert probing.cancelled()
    assert breaker.state is HALF_OPEN
    assert not breaker.statistics().probe_in_flight
    assert breaker.allow()


async def test_guard_records_outcomes_in_both_forms(clock: ManualClock, sink: RecordingSink) -> None:
    breaker = make(clock, sink, failure_threshold=2)
    with breaker.guard():
        pass
    with pytest.raises(ValueError, match="bad"), breaker.guard():
        raise ValueError("bad")
    async with breaker.guard():
        await asyncio.sleep(0)
    assert breaker.statistics().consecutive_failures == 0
    for _ in range(2):
        with pytest.raises(RuntimeError):
            async with breaker.guard():
                raise RuntimeError("down")
    assert breaker.state is OPEN
    with pytest.raises(BreakerOpen):
        async with breaker.guard():
            pytest.fail("a refused guard must not run its body")


def test_guard_ignores_an_outcome_from_before_a_state_change(clock: ManualClock, sink: RecordingSink) -> None:
    breaker = make(clock, sink)
    trip(breaker)
    clock.advance(30.0)
    with breaker.guard():
        breaker.force_open("operator")  # the state moves on while the probe is out
    assert breaker.state is OPEN
    assert transitions(sink)[-1] == (HALF_OPEN, OPEN)
