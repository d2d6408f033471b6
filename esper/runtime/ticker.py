"""A supervised periodic task: an actor that calls a coroutine function every interval of the injected clock."""

from __future__ import annotations

from typing import TYPE_CHECKING, final

from esper.runtime.actor import Actor
from schemas.base import Message

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from esper.runtime.clock import Clock


class Tick(Message, frozen=True):
    """The ticker's own wake-up; seq counts ticks of this incarnation from 0."""

    seq: int


@final
class Ticker(Actor[Tick]):
    """Calls ``fn()`` at start and then every ``interval_s`` seconds of ``clock``, and once more on a graceful stop.

    A timer as an actor means it lives in the supervision tree: a failing ``fn`` crashes the ticker and its supervisor
    restarts it; a stop interrupts the wait at once (Actor.until_stopping). Runs on the event loop; ``fn`` must not
    block (put blocking work on a lane).
    """

    def __init__(
        self,
        fn: Callable[[], Awaitable[None]],
        *,
        interval_s: float,
        clock: Clock,
        call_on_stop: bool = False,
    ) -> None:
        """Args:
        fn: the periodic work.
        interval_s: seconds of ``clock`` between the end of one call and the start of the next (> 0).
        clock: the clock the wait reads.
        call_on_stop: call ``fn`` once more when stopped gracefully (a final report).
        """
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        super().__init__(inbox=(Tick,), capacity=2)
        self._fn = fn
        self._interval_s = interval_s
        self._clock = clock
        self._call_on_stop = call_on_stop

    async def on_start(self) -> None:
        self.ref.tell_nowait(Tick(seq=0))

    async def handle(self, msg: Tick) -> None:
        await self._fn()
        await self.until_stopping(self._clock.sleep, self._interval_s)
        if not self.stopping:
            self.ref.tell_nowait(Tick(seq=msg.seq + 1))

    async def on_stop(self) -> None:
        if self._call_on_stop:
            await self._fn()
