"""Shared parts for the kernel tests: test messages, a probe actor, a recorder to wait on, an observed clock."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, assert_never, final

from esper.runtime.actor import Actor
from esper.runtime.clock import ManualClock
from schemas.base import Message

if TYPE_CHECKING:
    from collections.abc import Callable


class Inc(Message, frozen=True):
    by: int = 1


class Get(Message, frozen=True):
    pass


class Crash(Message, frozen=True):
    reason: str = "boom"
    in_task_group: bool = False  # raised as a TaskGroup raises a task's failure: wrapped in an ExceptionGroup


class Hold(Message, frozen=True):
    """Blocks the handler until the recorder's release event is set."""


class StopSelf(Message, frozen=True):
    pass


class Stranger(Message, frozen=True):
    """Not in anybody's inbox."""


ProbeInbox = Inc | Get | Crash | Hold | StopSelf


@final
class Recorder:
    """An append-only log of what happened, and a way to wait (without sleeping) until a condition holds."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.release = asyncio.Event()
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []

    def record(self, entry: str) -> None:
        self.log.append(entry)
        self.notify()

    def notify(self) -> None:
        for waiter in list(self._waiters):
            condition, future = waiter
            if condition():
                self._waiters.remove(waiter)
                if not future.done():
                    future.set_result(None)

    def count(self, entry: str) -> int:
        return self.log.count(entry)

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Return once condition() holds; fails the test after one second."""
        async with asyncio.timeout(1):
            if condition():
                return
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append((condition, future))
            await future


@final
class Probe(Actor[ProbeInbox]):
    """A counter that records its hooks and can crash, block or stop on request."""

    def __init__(self, recorder: Recorder, label: str, *, hang_on_stop: bool = False, capacity: int = 16) -> None:
        super().__init__(inbox=(Inc, Get, Crash, Hold, StopSelf), capacity=capacity)
        self.recorder = recorder
        self.label = label
        self.hang_on_stop = hang_on_stop
        self.count = 0

    async def on_start(self) -> None:
        self.recorder.record(f"start {self.label}")

    async def handle(self, msg: ProbeInbox) -> int | None:
        match msg:
            case Inc(by=by):
                self.count += by
                return None
            case Get():
                return self.count
            case Crash(reason=reason, in_task_group=grouped):
                if grouped:
                    raise ExceptionGroup("unhandled errors in a TaskGroup", [RuntimeError(reason)])
                raise RuntimeError(reason)
            case Hold():
                self.recorder.record(f"holding {self.label}")
                await self.recorder.release.wait()
                return None
            case StopSelf():
                self.request_stop()
                return None
            case _:
                assert_never(msg)

    async def on_stop(self) -> None:
        self.recorder.record(f"stop {self.label}")
        if self.hang_on_stop:
            # Work that must be cancelled: the supervisor's shutdown deadline ends it.
            await asyncio.Event().wait()


@final
class ObservedClock:
    """A ManualClock that also records every sleep requested, so a test can wait for a backoff or deadline to start."""

    def __init__(self, recorder: Recorder) -> None:
        self.manual = ManualClock()
        self.requested: list[float] = []
        self._recorder = recorder

    def now(self) -> float:
        return self.manual.now()

    async def sleep(self, delay_s: float) -> None:
        self.requested.append(delay_s)
        self._recorder.notify()
        await self.manual.sleep(delay_s)

    def advance(self, delta_s: float) -> None:
        self.manual.advance(delta_s)

    @property
    def sleepers(self) -> int:
        return self.manual.sleepers
