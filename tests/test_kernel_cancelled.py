"""An actor's hooks and CancelledError: one nobody asked for is a failure like any other, a real cancel still stops."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, assert_never, final

import pytest

from esper.runtime.actor import Actor
from esper.runtime.child_spec import ChildSpec
from esper.runtime.errors import StrayCancellation
from esper.runtime.supervisor import Supervisor
from esper.runtime.system import ActorSystem
from schemas.base import Message
from schemas.enums import ActorStatus
from schemas.runtime import ChildFailed, ChildRestarted

if TYPE_CHECKING:
    from esper.runtime.clock import ManualClock
    from esper.runtime.events import RecordingSink


class Inc(Message, frozen=True):
    pass


class Get(Message, frozen=True):
    pass


class Cancelled(Message, frozen=True):
    """The handler awaits a future that another task cancels (a task or request it shared, cancelled elsewhere)."""


class Fail(Message, frozen=True):
    """The handler's work, run through until_stopping, raises ValueError."""


Inbox = Inc | Get | Cancelled | Fail


async def cancelled_elsewhere() -> None:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(future.cancel)
    await future


async def bad_input() -> int:
    raise ValueError("bad input")


@final
class Counter(Actor[Inbox]):
    """Counts its Incs; ``cancelled_starts`` of its incarnations have an on_start that a stray CancelledError ends."""

    def __init__(self, log: list[str], cancelled_starts: int = 0) -> None:
        super().__init__(inbox=(Inc, Get, Cancelled, Fail))
        self._log = log
        self._cancelled_starts = cancelled_starts
        self.count = 0

    async def on_start(self) -> None:
        self._log.append("start")
        if self._log.count("start") <= self._cancelled_starts:
            await cancelled_elsewhere()

    async def handle(self, msg: Inbox) -> object:
        match msg:
            case Inc():
                self.count += 1
                return None
            case Get():
                return self.count
            case Cancelled():
                await cancelled_elsewhere()
                return None
            case Fail():
                return await self.until_stopping(bad_input)
            case _:
                assert_never(msg)

    async def on_stop(self) -> None:
        self._log.append("stop")


async def start(clock: ManualClock, sink: RecordingSink, log: list[str], cancelled_starts: int = 0) -> ActorSystem:
    system = ActorSystem(clock=clock, sink=sink)
    spec = ChildSpec("counter", lambda: Counter(log, cancelled_starts))
    await system.start(Supervisor([spec], backoff_initial_s=0.0, backoff_max_s=0.0))
    return system


async def test_a_tell_handler_raising_cancelled_error_crashes_the_actor_and_it_is_restarted(
    clock: ManualClock, sink: RecordingSink
) -> None:
    """The CancelledError ended the actor's task as if it had been stopped: no ChildFailed, no restart, its mailbox
    left open, so every later ask waited for good."""
    log: list[str] = []
    system = await start(clock, sink, log)
    counter = system.ref("counter", Counter)
    await counter.tell(Inc())
    await counter.tell(Cancelled())
    async with asyncio.timeout(5):  # a safety net: without the fix this ask never gets an answer
        assert await counter.ask(Get(), int) == 0  # the answer of a fresh incarnation
    [failed] = sink.of_type(ChildFailed)
    assert (failed.child, failed.error_type) == ("counter", "StrayCancellation")
    assert "handle(Cancelled) raised CancelledError while the actor was not being cancelled" in failed.error
    assert [event.child for event in sink.of_type(ChildRestarted)] == ["counter"]
    assert log == ["start", "stop", "start"]  # on_stop ran, as after any crash
    await system.stop()


async def test_an_ask_handler_raising_cancelled_error_fails_the_ask_and_the_actor_carries_on(
    clock: ManualClock, sink: RecordingSink
) -> None:
    log: list[str] = []
    system = await start(clock, sink, log)
    counter = system.ref("counter", Counter)
    await counter.tell(Inc())
    async with asyncio.timeout(5):
        with pytest.raises(StrayCancellation, match="handle\\(Cancelled\\)") as caught:
            await counter.ask(Cancelled(), type(None))
        assert isinstance(caught.value.__cause__, asyncio.CancelledError)
        assert await counter.ask(Get(), int) == 1
    assert sink.of_type(ChildFailed) == []
    [state] = system.snapshot()
    assert (state.status, state.failed, state.restarts) == (ActorStatus.RUNNING, 1, 0)
    await system.stop()


async def test_on_start_raising_cancelled_error_is_a_failure_that_is_restarted(
    clock: ManualClock, sink: RecordingSink
) -> None:
    """The child stayed STARTING for good, and its asks waited for good."""
    log: list[str] = []
    system = await start(clock, sink, log, cancelled_starts=1)
    counter = system.ref("counter", Counter)
    async with asyncio.timeout(5):
        await counter.tell(Inc())
        assert await counter.ask(Get(), int) == 1
    [failed] = sink.of_type(ChildFailed)
    assert (failed.error_type, log) == ("StrayCancellation", ["start", "start"])
    [state] = system.snapshot()
    assert (state.status, state.restarts) == (ActorStatus.RUNNING, 1)
    await system.stop()


async def test_a_real_cancellation_still_stops_the_actor_without_a_failure(
    clock: ManualClock, sink: RecordingSink
) -> None:
    """A stop past its deadline cancels the actor's task: that CancelledError must still end it, not restart it."""
    log: list[str] = []
    system = await start(clock, sink, log)
    counter = system.ref("counter", Counter)
    await counter.tell(Inc())
    assert await counter.ask(Get(), int) == 1
    [task] = [t for t in asyncio.all_tasks() if t.get_name() == "counter"]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await system.stop()
    assert sink.of_type(ChildFailed) == []
    assert sink.of_type(ChildRestarted) == []
    assert log == ["start"]  # abandoned: on_stop does not run for a cancelled task


async def test_until_stopping_raises_what_the_work_raised_not_an_exception_group(
    clock: ManualClock, sink: RecordingSink
) -> None:
    """The work ran in a TaskGroup, so its ValueError reached the handler as an ExceptionGroup."""
    system = await start(clock, sink, [])
    counter = system.ref("counter", Counter)
    async with asyncio.timeout(5):
        with pytest.raises(ValueError, match="bad input") as caught:
            await counter.ask(Fail(), int)
    assert type(caught.value) is ValueError
    await system.stop()
