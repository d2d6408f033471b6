"""The emergency ladder: L1 notice to L4 halt, monotone escalation, de-escalation only after a clean dwell."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, final

from schemas.base import Record
from schemas.enums import EmergencyLevel
from schemas.runtime import EmergencySignal

if TYPE_CHECKING:
    from collections.abc import Callable

    from esper.runtime.clock import Clock
    from esper.runtime.events import EventSink

_L1 = EmergencyLevel.L1_NOTICE
_L2 = EmergencyLevel.L2_ELEVATED
_L3 = EmergencyLevel.L3_CONSERVATIVE
_L4 = EmergencyLevel.L4_HALT


class EmergencyStatistics(Record, frozen=True):
    """The ladder at one instant. Returned by EmergencyLadder.statistics(), which never changes state."""

    level: EmergencyLevel
    clean_ticks: int
    clean_dwell_ticks: int
    clean_for_s: float
    clean_dwell_s: float
    escalations: int
    de_escalations: int
    resets: int


RESTORED: Final = "restored from a checkpoint"
"""The reason of the EmergencySignal that re-announces a saved level at a resume or restart (not a new emergency);
a level the resume sets instead of the saved one adds why after a colon (``restored from a checkpoint: ...``)."""


def re_announced(reason: str) -> bool:
    """Whether a signal's reason is a resume's or restart's (RESTORED, alone or with why after it): no emergency."""
    return reason == RESTORED or reason.startswith(f"{RESTORED}: ")


@final
class EmergencyLadder:
    """One run's emergency level, with hysteresis on the way down.

    Levels and what they imply (REFERENCE.md section 6):
      - L1 NOTICE, the baseline: telemetry only.
      - L2 ELEVATED: conservative mode, no new grafts (``growth_allowed`` is False).
      - L3 CONSERVATIVE: pause adaptation and roll back to the fast snapshot (``adaptation_paused``,
        ``rollback_required``).
      - L4 HALT: checkpoint if sound, stop cleanly, exit non-zero (``halt``). Only ``reset()`` leaves L4.

    ``escalate()`` only raises the level; any escalate call, even one that changes nothing, also restarts the clean
    dwell, since the trouble is still happening. ``record_clean(ticks)`` counts clean epochs or steps (whichever unit
    the owner counts; lifecycle timers in Esper count steps or epochs, never seconds); after ``clean_dwell_ticks``
    clean ticks, and at least ``clean_dwell_s`` seconds on the clock since the last trouble (0 disables the time
    condition), the level steps down by one and the dwell starts again. So no call ever both raises and lowers the
    level, and each step down needs its own full dwell. ``reset()`` is the operator's return to L1.

    Every change of level emits an EmergencySignal to the sink. Event-loop thread only (or any single thread).
    """

    __slots__ = (
        "_clean_dwell_s",
        "_clean_dwell_ticks",
        "_clean_since_s",
        "_clean_ticks",
        "_clock",
        "_de_escalations",
        "_escalations",
        "_level",
        "_origin",
        "_position",
        "_resets",
        "_run_id",
        "_sink",
    )

    def __init__(
        self,
        *,
        run_id: str,
        clock: Clock,
        sink: EventSink,
        origin: str = "emergency",
        clean_dwell_ticks: int = 3,
        clean_dwell_s: float = 0.0,
        position: Callable[[], tuple[int, int]] | None = None,
    ) -> None:
        """Build a ladder at L1.

        Args:
            run_id: copied into every EmergencySignal.
            clock: source of ``monotonic_time_ms`` and of the time half of the dwell, in seconds.
            sink: receives an EmergencySignal for every change of level; must not block.
            origin: the ``origin`` of signals this ladder raises itself (de-escalations).
            clean_dwell_ticks: clean epochs or steps needed before each step down (>= 1).
            clean_dwell_s: seconds since the last trouble also needed before each step down (>= 0; 0 disables).
            position: (step, epoch) where the run is, read at each change into the signal's ``step`` and ``epoch``
                (a run that trains a step again makes the same move again: the summary counts it once); None leaves
                them None.

        Raises:
            ValueError: a dwell is out of range.
        """
        if clean_dwell_ticks < 1:
            raise ValueError(f"clean_dwell_ticks must be >= 1, got {clean_dwell_ticks}")
        if clean_dwell_s < 0:
            raise ValueError(f"clean_dwell_s must be >= 0, got {clean_dwell_s}")
        self._run_id = run_id
        self._clock = clock
        self._sink = sink
        self._origin = origin
        self._position = position
        self._clean_dwell_ticks = clean_dwell_ticks
        self._clean_dwell_s = clean_dwell_s
        self._level = _L1
        self._clean_ticks = 0
        self._clean_since_s = clock.now()
        self._escalations = 0
        self._de_escalations = 0
        self._resets = 0

    # ------------------------------------------------------------------ what the level implies

    @property
    def level(self) -> EmergencyLevel:
        return self._level

    @property
    def growth_allowed(self) -> bool:
        """False from L2: no new grafts (Tamiyo proposes none, Tolaria refuses an attach)."""
        return self._level < _L2

    @property
    def conservative(self) -> bool:
        """True from L2: conservative mode."""
        return self._level >= _L2

    @property
    def adaptation_paused(self) -> bool:
        """True from L3: no adaptation commands take effect."""
        return self._level >= _L3

    @property
    def rollback_required(self) -> bool:
        """True from L3: training continues only from the fast snapshot."""
        return self._level >= _L3

    @property
    def halt(self) -> bool:
        """True at L4: checkpoint if sound, stop cleanly, exit non-zero."""
        return self._level >= _L4

    def statistics(self) -> EmergencyStatistics:
        """A snapshot of the level, the dwell so far and the counters; never changes state."""
        return EmergencyStatistics(
            level=self._level,
            clean_ticks=self._clean_ticks,
            clean_dwell_ticks=self._clean_dwell_ticks,
            clean_for_s=self._clock.now() - self._clean_since_s,
            clean_dwell_s=self._clean_dwell_s,
            escalations=self._escalations,
            de_escalations=self._de_escalations,
            resets=self._resets,
        )

    # ------------------------------------------------------------------ changes

    def escalate(self, level: EmergencyLevel, reason: str, origin: str) -> bool:
        """Raise the level to ``level`` if it is higher; never lowers it. Restarts the clean dwell either way.

        Returns:
            True if the level changed (and an EmergencySignal was emitted).
        """
        now = self._clock.now()
        self._clean_ticks = 0
        self._clean_since_s = now
        if level <= self._level:
            return False
        self._escalations += 1
        self._change(level, reason, origin, now)
        return True

    def record_clean(self, ticks: int = 1) -> bool:
        """Count ``ticks`` clean epochs or steps; steps down one level when the dwell is complete.

        At most one step per call, and the dwell restarts after it. Never acts at L1 or at L4 (only reset() leaves
        L4: a halt is not undone by quiet).

        Returns:
            True if the level went down (and an EmergencySignal was emitted).

        Raises:
            ValueError: ticks is negative.
        """
        if ticks < 0:
            raise ValueError(f"ticks must be >= 0, got {ticks}")
        self._clean_ticks += ticks
        level = self._level
        if level is _L1 or level is _L4 or self._clean_ticks < self._clean_dwell_ticks:
            return False
        now = self._clock.now()
        clean_for_s = now - self._clean_since_s
        if clean_for_s < self._clean_dwell_s:
            return False
        reason = f"clean dwell: {self._clean_ticks} clean ticks over {clean_for_s:.3f}s"
        self._clean_ticks = 0
        self._clean_since_s = now
        self._de_escalations += 1
        self._change(EmergencyLevel(level - 1), reason, self._origin, now)
        return True

    def restore(
        self,
        level: EmergencyLevel,
        clean_ticks: int,
        origin: str,
        *,
        saved: EmergencyLevel | None = None,
        why: str | None = None,
    ) -> bool:
        """Take back a saved level and clean dwell (a resume or a restart continues the run): the dwell goes on from
        the saved ticks, where an escalate would have started it again and delayed every step down; the signal's
        reason is RESTORED (a re-announcement, which the summary does not count as an emergency).

        Args:
            saved: the checkpoint's level when the run takes another (an L4 halt's checkpoint resumed at L2): the
                signal's ``previous`` (the run was there, not at this fresh ladder's L1), ``why`` after RESTORED.

        Returns:
            True if the level changed (and an EmergencySignal was emitted).
        """
        now = self._clock.now()
        changed = level != self._level
        if changed:
            reason = RESTORED if why is None else f"{RESTORED}: {why}"
            self._change(level, reason, origin, now, previous=saved)
        self._clean_ticks = max(0, clean_ticks)
        self._clean_since_s = now
        return changed

    def reset(self, reason: str, origin: str) -> bool:
        """Operator reset to L1 from any level; the dwell restarts.

        Returns:
            True if the level changed (and an EmergencySignal was emitted).
        """
        now = self._clock.now()
        self._clean_ticks = 0
        self._clean_since_s = now
        self._resets += 1
        if self._level is _L1:
            return False
        self._change(_L1, f"reset: {reason}", origin, now)
        return True

    def _change(
        self, level: EmergencyLevel, reason: str, origin: str, now: float, *, previous: EmergencyLevel | None = None
    ) -> None:
        previous = self._level if previous is None else previous
        self._level = level
        step, epoch = self._position() if self._position is not None else (None, None)
        self._sink.emit(
            EmergencySignal(
                level=level,
                previous=previous,
                reason=reason,
                origin=origin,
                monotonic_time_ms=now * 1000.0,
                run_id=self._run_id,
                step=step,
                epoch=epoch,
            )
        )
