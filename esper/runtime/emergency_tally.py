"""A run's emergency events as the summary, the report and Nissa count them: each move of the ladder once."""

from __future__ import annotations

from typing import TYPE_CHECKING, final

from esper.runtime.emergency import re_announced

if TYPE_CHECKING:
    from schemas.runtime import EmergencySignal

Transition = tuple[int, int, int]
"""(step, previous level, level): one move of the ladder where the run was when it made it."""


def entry_transition(entry: dict[str, object]) -> Transition | None:
    """The move an events.jsonl ``emergency_signal`` line reports, or None when it names no step (or a field is
    malformed). The signal's ``level`` is logged as ``msg_level`` (``level`` is the log line's own)."""
    step, previous, level = (_int(entry.get(key)) for key in ("step", "previous", "msg_level"))
    if step is None or previous is None or level is None:
        return None
    return step, previous, level


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@final
class EmergencyTally:
    """Counts emergency events across every session of a run, each move of the ladder once.

    A re-announced level (RESTORED, a resume or a restart taking its saved level back, or an L4 halt's resumed at
    L2) is no event. A run that trains
    a step again (a ``--resume`` from a checkpoint older than a ``kill -9``, a trainer restart from its last epoch-end
    snapshot) makes the moves it made at that step again: the same (step, previous, level) is counted once. A signal
    that names no step (an older run's line) counts every time. Not thread-safe (one owner).
    """

    __slots__ = ("_seen", "_unplaced")

    def __init__(self) -> None:
        self._seen: set[Transition] = set()
        self._unplaced = 0

    @property
    def count(self) -> int:
        return len(self._seen) + self._unplaced

    def add(self, transition: Transition | None) -> bool:
        """Count one move (None: one that names no step). Returns whether it was new."""
        if transition is None:
            self._unplaced += 1
            return True
        if transition in self._seen:
            return False
        self._seen.add(transition)
        return True

    def add_signal(self, signal: EmergencySignal) -> bool:
        """Count a signal unless it re-announces a saved level. Returns whether it counted."""
        return not re_announced(signal.reason) and self.add(signal.transition())

    def add_entry(self, entry: dict[str, object]) -> bool:
        """Count an events.jsonl entry if it is an ``emergency_signal`` line that re-announces nothing. Returns
        whether the entry was an emergency signal (counted, or the same move again)."""
        if entry.get("event") != "emergency_signal":
            return False
        reason = entry.get("reason")
        if not (isinstance(reason, str) and re_announced(reason)):
            self.add(entry_transition(entry))
        return True
