"""The policy's inference job that outlived its decision's deadline: held until it ends, its result discarded."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, final

import structlog

if TYPE_CHECKING:
    from actors.tamiyo.controller import Controller
    from actors.tamiyo.policy import Decision as PolicyDecision

_log = structlog.get_logger("actors.tamiyo")


@final
class LateJob:
    """At most one inference job in flight past its deadline (the lane never abandons started work). The fallback's
    decision replaced its result, so whatever it returns is discarded; the policy's state is the lane's until then."""

    def __init__(self, controller: Controller) -> None:
        self._c = controller
        self.task: asyncio.Task[PolicyDecision | Exception] | None = None
        # The epoch end of the fallback's germination made while the job ran: the policy counts it once it has ended.
        self._germinated_meanwhile: int | None = None

    @property
    def running(self) -> bool:
        """Whether a job is held and has not ended yet."""
        return self.task is not None and not self.task.done()

    async def ended_by(self, deadline_s: float, tg: asyncio.TaskGroup) -> bool:
        """Whether the lane is free for a new inference: a late job gets until ``deadline_s`` (the clock's time) to
        end (its result is discarded; an error a policy must not raise crashes the actor, as it would have in time)."""
        late = self.task
        if late is None:
            return True
        if not late.done():
            timer = tg.create_task(self._c.clock.sleep(deadline_s - self._c.clock.now()))
            await asyncio.wait((late, timer), return_when=asyncio.FIRST_COMPLETED)
            timer.cancel()
            if not late.done():
                return False
        self.collect()
        return True

    def collect(self) -> None:
        """Let go of a job that has ended: its result is discarded; an error a policy must not raise crashes the
        actor, as it would have in time."""
        late, self.task = self.task, None
        if late is not None:
            self._discard(late.result())

    async def wait_out(self) -> None:
        """Wait until the job has ended (its result, or an error, is discarded). A cancel leaves the job held."""
        late = self.task
        if late is None:
            return
        await asyncio.wait((late,))
        self.task = None
        if not late.cancelled() and late.exception() is not None:
            _log.warning("tamiyo_late_inference_failed", error=f"{type(late.exception()).__name__}: {late.exception()}")
            self._discard(None)
        elif not late.cancelled():
            self._discard(late.result())

    def cancel(self) -> None:
        """Nobody takes the job's result now (a stop, an abandon); the lane drops it if it has not started, or waits
        it out."""
        if self.task is not None:
            self.task.cancel()

    def count_germination(self, epoch: int) -> None:
        """The fallback's germination is carried out in the policy's place: the policy counts it as its own, or its
        cooldown would let it germinate again at the next epoch end; once the job has ended (its state is the lane's
        until then)."""
        if self.task is not None:
            self._germinated_meanwhile = epoch
        else:
            self._c.count_germination(epoch)

    def _discard(self, result: PolicyDecision | Exception | None) -> None:
        """The job's result, which the fallback's decision replaced: a germination in it was never made, and one the
        fallback made meanwhile was (at that very epoch end, or a later one decided while the job still ran)."""
        if result is not None and not isinstance(result, Exception):
            self._c.withdraw(self._c.policy, result)
        self._c.fallback_uncounts_unmade()  # the late decision settled the policy's last germination too
        germinated, self._germinated_meanwhile = self._germinated_meanwhile, None
        if germinated is not None:
            self._c.count_germination(germinated)
