"""Injectable clocks: every timeout, breaker, backoff and budget reads time from one of these."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol, final


class Clock(Protocol):
    """A source of monotonic time in seconds, and a way to wait for it to pass."""

    def now(self) -> float:
        """Monotonic seconds; never goes backwards. Any thread may call it."""
        ...

    async def sleep(self, delay_s: float) -> None:
        """Wait until now() has advanced by delay_s. Cancellation leaves nothing behind."""
        ...


@final
class MonotonicClock:
    """The real clock: time.monotonic() and asyncio.sleep()."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, delay_s: float) -> None:
        await asyncio.sleep(max(0.0, delay_s))


@final
class WallClock:
    """Wall time (Unix seconds, time.time()): for timestamps compared across processes, such as a command's
    issued_at checked by a verifier in another process. May jump; never use it for durations."""

    def now(self) -> float:
        return time.time()

    async def sleep(self, delay_s: float) -> None:
        await asyncio.sleep(max(0.0, delay_s))


@final
class ManualClock:
    """A clock that moves only when a test calls advance(); sleepers wake in deadline order.

    Event-loop only: advance() resolves futures, so call it from the loop that the sleepers run on.
    """

    def __init__(self, start_s: float = 0.0) -> None:
        self._now = start_s
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._counter = itertools.count()

    def now(self) -> float:
        return self._now

    async def sleep(self, delay_s: float) -> None:
        if delay_s <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + delay_s, next(self._counter), future))
        await future

    @property
    def sleepers(self) -> int:
        """How many sleeps are waiting (cancelled ones included until the next advance)."""
        return sum(1 for _, _, f in self._sleepers if not f.done())

    def advance(self, delta_s: float) -> None:
        """Move time forward by delta_s and wake every sleeper whose deadline has passed."""
        if delta_s < 0:
            raise ValueError(f"delta_s must be >= 0, got {delta_s}")
        self._now += delta_s
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)
