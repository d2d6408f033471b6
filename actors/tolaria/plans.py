"""The thread hand-off of boundary plans: the event loop puts them in, the train lane thread waits for them.

Two threads touch a PlanInbox and nothing else crosses between them:

- the event loop (Tolaria's control actor) calls ``put(plan)`` and ``request_stop()``; neither blocks for longer
  than a lock hand-off;
- the train lane thread calls ``expect`` after sending a packet, ``take_due`` at each step boundary (which waits,
  up to a deadline, for a plan that is due but late: a counted stall), and reads ``stop_requested``.

All state sits behind one ``threading.Condition``; the lane thread never touches an asyncio object through it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, final

import msgspec

from schemas.base import Record

if TYPE_CHECKING:
    from collections.abc import Callable

    from torch import nn

    from esper.runtime.handoff import Handoff
    from schemas.boundary import BoundaryPlan


_RECENT_PLANS = 64
# How often a wait for a late plan looks whether the event loop that sends plans has stopped (see take_due's hold).
_HOLD_POLL_S = 0.1


class PlanInboxStatistics(Record, frozen=True):
    """The inbox at one instant; ``waiting_for`` is the effect step the lane thread is stalled on, if any."""

    expected: int
    received: int
    applied: int
    late: int
    unexpected: int
    missed: int
    stalls: int
    stall_ms_total: float
    waiting_for: int | None
    stop_requested: bool
    duplicates: int = 0


@final
@dataclass(frozen=True, slots=True)
class DuePlans:
    """What ``take_due`` found: the plans to apply now (in decision order), the decisions that never came, and how
    long the lane thread waited for them (0.0 when nothing was late)."""

    plans: tuple[BoundaryPlan, ...]
    missed: tuple[int, ...]
    stall_s: float
    stopped: bool = False


@final
@dataclass(slots=True)
class _State:
    expected: dict[int, int] = field(default_factory=dict)
    # Expected again after a restore: the planner sends these once it has rebuilt its past (a journal replay that
    # grows with the run), so their wait gets the restore's grace rather than the decision deadline.
    resent: set[int] = field(default_factory=set)
    received: dict[int, BoundaryPlan] = field(default_factory=dict)
    # The last applied plans by decision step: the same plan delivered again is recognised as a duplicate, not an
    # unexpected plan (delivery is idempotent).
    applied_recently: dict[int, BoundaryPlan] = field(default_factory=dict)
    abandoned: set[int] = field(default_factory=set)
    received_total: int = 0
    applied: int = 0
    late: int = 0
    unexpected: int = 0
    duplicates: int = 0
    missed: int = 0
    stalls: int = 0
    stall_s_total: float = 0.0
    waiting_for: int | None = None
    stop_requested: bool = False
    stop_reason: str = ""


@final
class PlanInbox:
    """Boundary plans on their way from the event loop to the train lane thread; see the module docstring.

    Every packet the loop sends to a planner is registered with ``expect(decided_on_step, effect_step)``; exactly
    one plan must answer it. A plan for a decision that was never expected, or that arrives after its deadline was
    given up, is counted (``unexpected`` / ``late``) and dropped: applying it at some later step would make the run
    depend on thread timing.
    """

    def __init__(self, *, on_wait: Callable[[int, tuple[int, ...]], None] | None = None) -> None:
        """Args:
        on_wait: called on the lane thread (outside the lock) when it starts waiting for late plans, with the
            effect step and the decisions it waits for; must not block (e.g. hands a note to the event loop).
        """
        self._cond = threading.Condition()
        self._state = _State()
        self._on_wait = on_wait

    # ------------------------------------------------------------------ event-loop side

    def put(self, plan: BoundaryPlan) -> bool:
        """Hand a plan to the lane thread; any thread. Returns False (and counts it) if the plan was dropped.

        The same plan delivered again (received and not yet applied, or among the last applied) is a counted
        duplicate and returns True: delivery is idempotent.
        """
        return self.offer(plan) == "accepted"

    def offer(self, plan: BoundaryPlan) -> Literal["accepted", "late", "unexpected"]:
        """``put``, saying why a plan was dropped: ``late`` (its deadline was given up: it will never be applied) or
        ``unexpected`` (no packet asked for it, e.g. decided before a rewind)."""
        with self._cond:
            state = self._state
            step = plan.decided_on_step
            if plan == state.received.get(step):
                state.duplicates += 1
                return "accepted"
            if step in state.abandoned:
                state.abandoned.discard(step)
                state.late += 1
                return "late"
            effect = state.expected.get(step)
            if effect is not None and effect == plan.effect_step and step not in state.received:
                # Expected, even if the same plan was applied before: after a rewind (a rollback, a restart) the
                # loop applies again what it applies after the restored step.
                state.received[step] = plan
                state.received_total += 1
                self._cond.notify_all()
                return "accepted"
            if plan == state.applied_recently.get(step):
                state.duplicates += 1
                return "accepted"
            state.unexpected += 1
            return "unexpected"

    def request_stop(self, reason: str = "stop requested") -> None:
        """Ask the step loop to finish its current step, checkpoint and return; any thread, idempotent."""
        with self._cond:
            if not self._state.stop_requested:
                self._state.stop_requested = True
                self._state.stop_reason = reason
            self._cond.notify_all()

    def clear_stop(self) -> None:
        """Forget a stop request (a restarted trainer must not inherit the stop that ended its predecessor)."""
        with self._cond:
            self._state.stop_requested = False
            self._state.stop_reason = ""

    def statistics(self) -> PlanInboxStatistics:
        """Counters and the current wait; never blocks for longer than a lock hand-off."""
        with self._cond:
            s = self._state
            return PlanInboxStatistics(
                expected=len(s.expected),
                received=s.received_total,
                applied=s.applied,
                late=s.late,
                unexpected=s.unexpected,
                missed=s.missed,
                stalls=s.stalls,
                stall_ms_total=s.stall_s_total * 1e3,
                waiting_for=s.waiting_for,
                stop_requested=s.stop_requested,
                duplicates=s.duplicates,
            )

    # ------------------------------------------------------------------ lane-thread side

    @property
    def stop_requested(self) -> bool:
        return self._state.stop_requested

    @property
    def stop_reason(self) -> str:
        return self._state.stop_reason

    def expect(self, decided_on_step: int, effect_step: int, *, resent: bool = False) -> None:
        """Register that a plan deciding on ``decided_on_step`` will take effect at ``effect_step``; ``resent``: it is
        expected again after a restore (``take_due`` waits for it up to its ``grace_s``).

        Raises:
            ValueError: that decision is already expected, or effect_step < decided_on_step.
        """
        if effect_step < decided_on_step:
            raise ValueError(f"effect_step {effect_step} precedes decided_on_step {decided_on_step}")
        with self._cond:
            if decided_on_step in self._state.expected:
                raise ValueError(f"a plan deciding on step {decided_on_step} is already expected")
            self._state.expected[decided_on_step] = effect_step
            if resent:
                self._state.resent.add(decided_on_step)

    def has_due(self, step: int) -> bool:
        """Whether any expected plan takes effect at or before ``step`` (a lock-free fast path when none is)."""
        expected = self._state.expected
        if not expected:
            return False
        with self._cond:
            return any(effect <= step for effect in self._state.expected.values())

    def take_due(
        self,
        step: int,
        deadline_s: float,
        grace_s: float = 0.0,
        *,
        stoppable: bool = True,
        hold: Callable[[], bool] | None = None,
    ) -> DuePlans:
        """Remove and return every plan due at ``step``, waiting up to ``deadline_s`` for late ones (up to ``grace_s``
        when one of them is expected again after a restore).

        Runs on the lane thread and may block (that is the stall). A decision still missing at the deadline is given
        up (``missed``); its plan, if it comes later, is dropped as late. A stop request ends the wait at once
        (unless ``stoppable`` is False: the boundary before an epoch end, which must run with its plans applied); the
        missing decisions then stay expected (a checkpoint keeps them).

        ``hold``: called (outside the lock) as the wait starts and every ``_HOLD_POLL_S`` of it; it blocks while the
        event loop that plans come from is stopped and returns True if it had to (the planner had no time: the wait
        starts again), False if the loop was running. What it raises (the loop closed) propagates.
        """
        with self._cond:
            s = self._state
            due = sorted(d for d, effect in s.expected.items() if effect <= step)
            if not due:
                return DuePlans((), (), 0.0)
            missing = tuple(d for d in due if d not in s.received)
            stall_s = 0.0
            stopped = False
            if missing:
                started = time.perf_counter()
                s.waiting_for = step
                s.stalls += 1
                callback = self._on_wait
                if callback is not None:
                    self._cond.release()
                    try:
                        callback(step, missing)
                    finally:
                        self._cond.acquire()
                patience = max(deadline_s, grace_s) if any(d in s.resent for d in missing) else deadline_s
                end = started + patience
                while not (stoppable and s.stop_requested):
                    if all(d in s.received for d in due):
                        break
                    if hold is not None and self._held(hold):
                        end = time.perf_counter() + patience  # the planner could not run: its time starts now
                        continue
                    if hold is not None and all(d in s.received for d in due):
                        break  # arrived while the lock was let go for hold(): its notify found nobody waiting
                    remaining = end - time.perf_counter()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining if hold is None else min(remaining, _HOLD_POLL_S))
                stall_s = time.perf_counter() - started
                s.stall_s_total += stall_s
                s.waiting_for = None
                stopped = stoppable and s.stop_requested
            plans: list[BoundaryPlan] = []
            missed: list[int] = []
            for d in due:
                plan = s.received.pop(d, None)
                s.resent.discard(d)
                if plan is not None:
                    plans.append(plan)
                    del s.expected[d]
                    s.applied_recently[d] = plan
                    if len(s.applied_recently) > _RECENT_PLANS:
                        del s.applied_recently[next(iter(s.applied_recently))]
                elif not stopped:
                    missed.append(d)
                    del s.expected[d]
                    s.abandoned.add(d)
            s.applied += len(plans)
            s.missed += len(missed)
            return DuePlans(tuple(plans), tuple(missed), stall_s, stopped=stopped and len(plans) < len(due))

    def _held(self, hold: Callable[[], bool]) -> bool:
        self._cond.release()
        try:
            return hold()
        finally:
            self._cond.acquire()

    def pending(self) -> tuple[tuple[int, int], ...]:
        """Expected decisions not yet applied, as (decided_on_step, effect_step), for a checkpoint."""
        with self._cond:
            return tuple(sorted(self._state.expected.items()))

    def reset(self) -> tuple[BoundaryPlan, ...]:
        """Forget every expectation and received plan (a new incarnation starts from a checkpoint); keeps counters
        and a pending stop request. Returns the plans dropped unapplied, whose prepared modules nobody will take
        (the planner prepares and resends the ones still in flight after the restored step)."""
        with self._cond:
            dropped = tuple(plan for _, plan in sorted(self._state.received.items()))
            self._state.expected.clear()
            self._state.resent.clear()
            self._state.received.clear()
            self._state.abandoned.clear()
            return dropped


def plans_covered(expected: object, step: int, journaled: int | None) -> bool:
    """Whether every plan a saved state of ``step`` waits for (its counters' ``expected_plans``: decided by then,
    taking effect at or after it) was decided at a boundary the planner's journal holds (``journaled``: its last
    boundary step). A state that is not covered would wait for plans nobody can send again."""
    if not isinstance(expected, str):
        return True
    try:
        pairs = msgspec.json.decode(expected, type=list[tuple[int, int]])
    except msgspec.DecodeError:
        return True
    waited = [decided for decided, effect in pairs if effect >= step]
    return not waited or (journaled is not None and max(waited) <= journaled)


def release_modules(plans: tuple[BoundaryPlan, ...], handoff: Handoff[nn.Module] | None) -> int:
    """Discard from ``handoff`` the modules that ``plans``' attach ops would have taken; returns how many were there.

    Without it every rewind past a received attach plan would leave its module in the handoff store for good, until
    the store's capacity refused the next germination.
    """
    if handoff is None:
        return 0
    return sum(handoff.discard(op.handle) for plan in plans for op in plan.ops if op.handle is not None)
