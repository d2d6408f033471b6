"""Conservative mode with hysteresis: immediate entry on any trigger; exit after clean epochs with breakers closed."""

from __future__ import annotations

from typing import TYPE_CHECKING, final

from schemas.base import Record
from schemas.domain_enums import TelemetryLevel
from schemas.enums import BreakerState, EmergencyLevel
from schemas.telemetry import MetricPoint, TelemetryEvent

if TYPE_CHECKING:
    from esper.runtime.events import EventSink, MutableSink

GAUGE_NAME = "tamiyo.conservative_mode"


class ConservativeStatistics(Record, frozen=True):
    """Conservative mode at one instant; never blocks, never changes state."""

    active: bool
    clean_epochs: int
    exit_clean_epochs: int
    entries: int
    exits: int
    last_reason: str


@final
class ConservativeMode:
    """Whether Tamiyo is in conservative mode (no growth: the risk engine's rule 2), with hysteresis.

    Entry is immediate: ``trigger(reason)`` (a risk-engine request, a breaker opening, ...) or ``end_epoch`` with
    Tolaria at L2 or above. Exit happens only in ``end_epoch``, after ``exit_clean_epochs`` consecutive clean epochs
    while both Tamiyo breakers are CLOSED. An epoch is clean when nothing triggered during it, Tolaria is below L2,
    both breakers were CLOSED at its end, and the caller saw nothing else wrong. A trigger resets the clean count, so
    no call ever both enters and exits, and the epoch of an entry never counts towards the exit.

    Emits TelemetryEvent ``conservative_entered`` (WARNING) and ``conservative_exited`` (INFO); ``gauge()`` is the
    ``tamiyo.conservative_mode`` metric (1.0 active). Event-loop thread only (or any single thread).
    """

    __slots__ = ("_active", "_clean_epochs", "_dirty", "_entries", "_exit_clean_epochs", "_exits", "_reason", "_sink")

    def __init__(self, *, sink: EventSink, exit_clean_epochs: int = 2, last_reason: str = "") -> None:
        """Build an inactive mode.

        Args:
            sink: receives the entered / exited events; must not block.
            exit_clean_epochs: consecutive clean epochs needed to leave (TamiyoConfig.conservative_exit_clean_epochs).
            last_reason: the reason of the last trigger, for a mode restored after it exited (statistics).

        Raises:
            ValueError: exit_clean_epochs < 1.
        """
        if exit_clean_epochs < 1:
            raise ValueError(f"exit_clean_epochs must be >= 1, got {exit_clean_epochs}")
        self._sink = sink
        self._exit_clean_epochs = exit_clean_epochs
        self._active = False
        self._clean_epochs = 0
        self._dirty = False
        self._entries = 0
        self._exits = 0
        self._reason = last_reason

    @property
    def active(self) -> bool:
        return self._active

    def trigger(self, reason: str, *, epoch: int | None = None) -> bool:
        """Record a trigger: enter now if inactive, and make the current epoch unclean. Returns True if it entered."""
        self._dirty = True
        self._clean_epochs = 0
        self._reason = reason
        if self._active:
            return False
        self._active = True
        self._entries += 1
        attributes: dict[str, str | int | float | bool] = {"reason": reason}
        if epoch is not None:
            attributes["epoch"] = epoch
        self._sink.emit(
            TelemetryEvent(
                name="conservative_entered",
                level=TelemetryLevel.WARNING,
                description=f"conservative mode entered: {reason}",
                attributes=attributes,
            )
        )
        return True

    def end_epoch(
        self,
        *,
        epoch: int,
        emergency_level: EmergencyLevel,
        inference_breaker: BreakerState,
        metadata_breaker: BreakerState,
        clean: bool = True,
    ) -> bool:
        """Close an epoch: enter at L2 or above, else count it towards the exit. Returns True if it exited.

        Args:
            epoch: the epoch that ended (for the events).
            emergency_level: Tolaria's level at the epoch end.
            inference_breaker / metadata_breaker: the states of Tamiyo's two breakers now.
            clean: False if the caller saw trouble this epoch that it did not report through trigger().
        """
        if emergency_level >= EmergencyLevel.L2_ELEVATED:
            self.trigger(f"emergency_{emergency_level.name.lower()}", epoch=epoch)
        breakers_closed = inference_breaker is BreakerState.CLOSED and metadata_breaker is BreakerState.CLOSED
        epoch_clean = clean and not self._dirty and breakers_closed
        self._dirty = False
        if not self._active:
            return False
        self._clean_epochs = self._clean_epochs + 1 if epoch_clean else 0
        if self._clean_epochs < self._exit_clean_epochs:
            return False
        self._active = False
        self._exits += 1
        self._clean_epochs = 0
        self._sink.emit(
            TelemetryEvent(
                name="conservative_exited",
                level=TelemetryLevel.INFO,
                description=f"conservative mode exited after {self._exit_clean_epochs} clean epochs",
                attributes={"epoch": epoch, "clean_epochs": self._exit_clean_epochs},
            )
        )
        return True

    def gauge(self) -> MetricPoint:
        """The ``tamiyo.conservative_mode`` gauge: 1.0 while active, else 0.0."""
        return MetricPoint(name=GAUGE_NAME, value=1.0 if self._active else 0.0)

    def statistics(self) -> ConservativeStatistics:
        return ConservativeStatistics(
            active=self._active,
            clean_epochs=self._clean_epochs,
            exit_clean_epochs=self._exit_clean_epochs,
            entries=self._entries,
            exits=self._exits,
            last_reason=self._reason,
        )


def restored_mode(
    sink: MutableSink,
    *,
    exit_clean_epochs: int,
    active: bool,
    reason: str | None,
    dirty: bool,
    clean_epochs: int,
) -> ConservativeMode:
    """A mode in the state a saved one was in (active, its reason, and its clean epochs unless the epoch was dirty),
    rebuilt by replaying the calls that lead there with ``sink`` muted, so nothing is announced again. The last
    reason comes back as it was, an exited mode's too: a resumed run's state must read as the uninterrupted run's."""
    mode = ConservativeMode(sink=sink, exit_clean_epochs=exit_clean_epochs, last_reason=reason or "")
    if not active:
        return mode
    sink.muted = True
    try:
        mode.trigger(reason or "")
        if not dirty:
            for _ in range(clean_epochs + 1):
                mode.end_epoch(
                    epoch=0,
                    emergency_level=EmergencyLevel.L1_NOTICE,
                    inference_breaker=BreakerState.CLOSED,
                    metadata_breaker=BreakerState.CLOSED,
                )
    finally:
        sink.muted = False
    return mode
