"""Budgets and failures -> the emergency ladder: which epoch failed and why, and what the step loop must do about it.

REFERENCE.md section 6. Lane-thread only: the ladder and the breaker are single-threaded, and their events reach the
event loop through the sink the owner hands in (which forwards thread-safely).
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, final

from esper.runtime.breaker import CircuitBreaker
from esper.runtime.emergency import EmergencyLadder
from schemas.enums import BreakerState, EmergencyLevel

_BREAKER_STATES = frozenset(state.value for state in BreakerState)

if TYPE_CHECKING:
    from collections.abc import Callable

    from esper.runtime.clock import Clock
    from esper.runtime.events import EventSink
    from schemas.config import TolariaConfig

ORIGIN = "tolaria"


class Action(enum.Enum):
    """What the step loop does after a verdict."""

    CONTINUE = "continue"
    ROLLBACK = "rollback"
    HALT = "halt"


@final
@dataclass(frozen=True, slots=True)
class EpochVerdict:
    """The judgement of one epoch end: failed or not, the first reason that applies, and the action. ``detail``:
    the failure's figures and the setting they broke, e.g. ``hook_ms 61.5 over tolaria.epoch_hook_budget_ms 50.0``."""

    failed: bool
    reason: str | None
    action: Action
    halt_reason: str | None = None
    detail: str | None = None


@final
class EmergencyPolicy:
    """Turns budget breaches, missed decisions and non-finite steps into ladder escalations and loop actions.

    - a non-finite loss or gradient: the step is skipped (L1 notice); ``nonfinite_to_rollback`` of them within
      ``nonfinite_window_steps`` steps escalate to L3 and roll back to the fast snapshot;
    - an epoch fails on the first of: breaker open, epoch budget, a missed decision (decision_timeout), hook budget;
      a failure escalates to L2 (conservative mode), records a breaker failure (an open breaker means L3 and a
      rollback) and grows the streak; ``failed_epochs_to_halt`` in a row mean L4 (checkpoint and halt), except that
      the failure that opens the breaker below L3 rolls back first, so the next failed epoch halts;
    - a clean epoch records a breaker success, resets the streak and counts towards de-escalation.
    """

    def __init__(
        self,
        config: TolariaConfig,
        *,
        run_id: str,
        clock: Clock,
        sink: EventSink,
        position: Callable[[], tuple[int, int]] | None = None,
    ) -> None:
        """``position`` gives (global step, epochs completed) for each emergency signal (see EmergencyLadder)."""
        self._config = config
        self.ladder = EmergencyLadder(
            run_id=run_id,
            clock=clock,
            sink=sink,
            origin=ORIGIN,
            clean_dwell_ticks=config.emergency_clean_dwell_epochs,
            position=position,
        )
        self.breaker = CircuitBreaker.configured("tolaria.epochs", config.breaker, clock=clock, sink=sink)
        self._nonfinite: deque[int] = deque()
        self.failed_epochs = 0
        self.failed_streak = 0
        self.skipped_steps = 0
        # The streak's latest failure other than breaker_open, with its figures: what an epoch failed only because
        # the breaker is open, and the halt that ends the streak, name as the cause.
        self.failed_cause: str | None = None

    @property
    def level(self) -> EmergencyLevel:
        return self.ladder.level

    def nonfinite_step(self, step: int) -> Action:
        """Count a skipped non-finite step at ``step``; ROLLBACK once enough fall within the window."""
        self.skipped_steps += 1
        self.ladder.escalate(EmergencyLevel.L1_NOTICE, f"non-finite loss or gradient at step {step}", ORIGIN)
        window = self._nonfinite
        window.append(step)
        while window and window[0] <= step - self._config.nonfinite_window_steps:
            window.popleft()
        if len(window) >= self._config.nonfinite_to_rollback:
            window.clear()
            self.ladder.escalate(
                EmergencyLevel.L3_CONSERVATIVE,
                f"{self._config.nonfinite_to_rollback} non-finite steps within "
                f"{self._config.nonfinite_window_steps} steps",
                ORIGIN,
            )
            return Action.ROLLBACK
        return Action.CONTINUE

    def end_epoch(self, *, epoch_ms: float, hook_ms: float, missed_decisions: int) -> EpochVerdict:
        """Judge an epoch end and escalate as REFERENCE.md section 6 prescribes.

        ``hook_ms``: the epoch end's time without its state copy (the part ``tolaria.epoch_hook_budget_ms`` bounds)."""
        config = self._config
        reason: str | None = None
        detail: str | None = None
        # allow() turns an OPEN breaker whose open time has passed HALF_OPEN and makes this epoch its probe: without
        # it the breaker never half-opened, and every later epoch failed as breaker_open, within budget or not.
        if self.breaker.state is not BreakerState.CLOSED and not self.breaker.allow():
            reason = "breaker_open"
            detail = None if self.failed_cause is None else f"after {self.failed_cause}"
        elif config.epoch_budget_ms is not None and epoch_ms > config.epoch_budget_ms:
            reason = "epoch_budget"
            detail = f"epoch_ms {epoch_ms:.1f} over tolaria.epoch_budget_ms {config.epoch_budget_ms}"
        elif missed_decisions:
            reason = "decision_timeout"
            # A plan late at its effect step: a slow controller or a message lost on the way (a route_dropped warning
            # names it); tamiyo.decision_budget_ms, which the fallback decision enforces, was not what it missed.
            deadline_ms = config.decision_deadline_ms
            detail = f"{missed_decisions} plan(s) missed tolaria.decision_deadline_ms {deadline_ms:g} (see plan_missed)"
        elif hook_ms > config.epoch_hook_budget_ms:
            reason = "hook_budget"
            detail = f"hook_ms {hook_ms:.1f} over tolaria.epoch_hook_budget_ms {config.epoch_hook_budget_ms}"
        if reason is None:
            self.breaker.record_success()
            self.failed_streak = 0
            self.failed_cause = None
            self.ladder.record_clean(1)
            return EpochVerdict(False, None, Action.CONTINUE)
        if reason != "breaker_open":
            self.failed_cause = f"{reason}, {detail}"
        self.failed_epochs += 1
        self.failed_streak += 1
        was_open = self.breaker.state is BreakerState.OPEN
        self.breaker.record_failure(reason)
        self.ladder.escalate(EmergencyLevel.L2_ELEVATED, f"failed epoch: {reason}", ORIGIN)
        # The ladder climbs L2, L3, L4 in turn (REFERENCE.md section 6): with the defaults the epoch that opens the
        # breaker is also the one that completes the streak, and the halt came first, so no run ever reached L3 on
        # failed epochs. That epoch rolls back instead; once at L3, the next failed epoch of the streak halts (a
        # breaker that keeps reopening never defers the halt again).
        opened = not was_open and self.breaker.state is BreakerState.OPEN
        rollback_first = opened and self.ladder.level < EmergencyLevel.L3_CONSERVATIVE
        if self.failed_streak >= config.failed_epochs_to_halt and not rollback_first:
            self.ladder.escalate(
                EmergencyLevel.L4_HALT, f"failed_epochs_streak: {self.failed_streak} failed epochs in a row", ORIGIN
            )
            # The halt's reason is the streak, not its last epoch's failure (the summary said "emergency halt:
            # epoch_budget" of a run the streak halted), with the figures and setting of the streak's latest budget
            # failure: the line said "(the last: breaker_open)" of a run its hook time halted, naming neither.
            halt = f"{self.failed_streak} failed epochs in a row (the last: {reason}"
            if reason != "breaker_open":
                halt += f", {detail})"
            elif self.failed_cause is not None:
                halt += f"; the latest before it: {self.failed_cause})"
            else:
                halt += ")"
            return EpochVerdict(True, reason, Action.HALT, halt_reason=halt, detail=detail)
        if self.breaker.state is BreakerState.OPEN:
            self.ladder.escalate(EmergencyLevel.L3_CONSERVATIVE, f"breaker_open after {reason}", ORIGIN)
            return EpochVerdict(True, reason, Action.ROLLBACK, detail=detail)
        return EpochVerdict(True, reason, Action.CONTINUE, detail=detail)

    def restore_deadline_missed(self, restore_s: float) -> str:
        """A full restore slower than its deadline means L4 (never train on a half-restored model); returns the
        halt's reason, which the step loop halts with."""
        reason = (
            f"deadline_exceeded: full restore took {restore_s:.3f}s, deadline {self._config.rollback_full_deadline_s}s"
        )
        self.ladder.escalate(EmergencyLevel.L4_HALT, reason, ORIGIN)
        return reason

    def halt_now(self, reason: str) -> None:
        self.ladder.escalate(EmergencyLevel.L4_HALT, reason, ORIGIN)

    def counters(self) -> dict[str, float | int | str | None]:
        """What a checkpoint keeps of the policy."""
        return {
            "emergency_level": int(self.ladder.level),
            "emergency_clean_ticks": self.ladder.statistics().clean_ticks,
            "failed_epochs": self.failed_epochs,
            "failed_streak": self.failed_streak,
            "skipped_steps": self.skipped_steps,
            # The non-finite steps still in the window: a resume between two of them rolls back where the
            # uninterrupted run does (an empty window after a resume let the third pass).
            "nonfinite_window": ",".join(map(str, self._nonfinite)),
            # The epochs' breaker and its failures in a row: a resume in a run of failed epochs opens it (L3, a
            # rollback) at the epoch the uninterrupted run does (a fresh breaker let the streak halt first, at L2).
            "epoch_breaker_state": self.breaker.state.value,
            "epoch_breaker_failures": self.breaker.statistics().consecutive_failures,
            # The streak's cause: a resumed run's halt names it as the uninterrupted run's does.
            "failed_cause": self.failed_cause,
        }

    def restore(self, counters: dict[str, float | int | str | None], *, ended: bool = False) -> bool:
        """Take the counters and level back from a checkpoint (the level is re-announced if above L1).

        The checkpoint an L4 halt wrote is resumed at L2 with its failure streak cleared: resuming it is the
        operator's call to go on, and L4 never steps down (the run trained on at L4, growth paused for good). With
        ``ended`` (the checkpoint ended the run's last epoch: nothing is left to train) it stays at L4: the run ended
        in that halt, and the resume only writes its end.

        Returns:
            True if the checkpoint was an L4 halt's and the level stays L4 (``ended``).
        """
        self.failed_epochs = int(counters.get("failed_epochs") or 0)
        self.failed_streak = int(counters.get("failed_streak") or 0)
        self.skipped_steps = int(counters.get("skipped_steps") or 0)
        cause = counters.get("failed_cause")
        self.failed_cause = cause if isinstance(cause, str) and self.failed_streak else None
        window = counters.get("nonfinite_window")
        self._nonfinite = (
            deque(int(step) for step in window.split(",")) if isinstance(window, str) and window else deque()
        )
        level = EmergencyLevel(int(counters.get("emergency_level") or 1))
        if level >= EmergencyLevel.L4_HALT and not ended:
            self.failed_streak = 0
            self.failed_cause = None
            # A restore, not an escalation: the signal names L4 as the level before (an escalate named this fresh
            # ladder's L1) and is no new emergency event (the summary counted it as one).
            why = "resumed after an L4 halt, conservative until clean epochs"
            self.ladder.restore(EmergencyLevel.L2_ELEVATED, 0, ORIGIN, saved=level, why=why)
            return False
        # The level and its clean dwell as the epoch end's verdict left them: a resumed run steps down when the
        # uninterrupted one does (the dwell started again, and the resumed run diverged).
        self.ladder.restore(level, int(counters.get("emergency_clean_ticks") or 0), ORIGIN)
        state = counters.get("epoch_breaker_state")
        if isinstance(state, str) and state in _BREAKER_STATES:
            # An open breaker is opened afresh: its timing does not carry across processes.
            failures = int(counters.get("epoch_breaker_failures") or 0)
            self.breaker.restore(BreakerState(state), failures, reason="restored from a checkpoint")
        return level >= EmergencyLevel.L4_HALT
