"""The emergency ladder as the report reads it from events.jsonl: each level change, rollback and halt of the run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import final

from esper.runtime.emergency import re_announced
from esper.runtime.emergency_tally import entry_transition


@final
@dataclass(frozen=True, slots=True)
class LevelChange:
    """The ladder moved to ``level`` at ``step`` (an ``emergency_signal`` line); ``counted`` is False for a resume or
    restart taking its saved level back (no event, but the level the run trains at from there)."""

    step: int
    previous: int
    level: int
    reason: str
    counted: bool = True


@final
@dataclass(frozen=True, slots=True)
class Rollback:
    """The trainer went back to the checkpoint of ``step`` (a ``tolaria_rolled_back`` line)."""

    step: int
    reason: str


@final
@dataclass(frozen=True, slots=True)
class Halt:
    """An L4 halt ended a session at ``step`` (its ``training_finished`` line with status ``halted``)."""

    step: int
    reason: str


@final
@dataclass(slots=True)
class Ladder:
    """Every session's level changes (each move once, as EmergencyTally counts them), rollbacks and halts, in file
    order; ``halted``: whether the last session that finished training ended in a halt. Not thread-safe."""

    changes: list[LevelChange] = field(default_factory=list)
    rollbacks: list[Rollback] = field(default_factory=list)
    halts: list[Halt] = field(default_factory=list)
    halted: bool = False
    _seen: set[tuple[int, int, int]] = field(default_factory=set)

    @property
    def events(self) -> list[LevelChange]:
        """The changes that are emergency events (re-announced levels left out)."""
        return [change for change in self.changes if change.counted]

    @property
    def last_halt(self) -> Halt | None:
        """The halt that ended the run's last trained session, or None when it did not end in one."""
        return self.halts[-1] if self.halted and self.halts else None

    def add_entry(self, entry: dict[str, object]) -> bool:
        """Take an ``emergency_signal``, ``tolaria_rolled_back`` or ``training_finished`` line; returns whether the
        entry was one of them (a malformed one included)."""
        match entry.get("event"):
            case "emergency_signal":
                self._add_signal(entry)
            case "tolaria_rolled_back":
                step, reason = _int(entry.get("step")), entry.get("reason")
                if step is not None:
                    self.rollbacks.append(Rollback(step, reason if isinstance(reason, str) else ""))
            case "training_finished":
                self.halted = entry.get("status") == "halted"
                step, reason = _int(entry.get("global_step")), entry.get("halt_reason")
                if self.halted and step is not None:
                    self.halts.append(Halt(step, reason if isinstance(reason, str) else ""))
            case _:
                return False
        return True

    def _add_signal(self, entry: dict[str, object]) -> None:
        move = entry_transition(entry)
        if move is None:  # an older run's line without its step: counted by the tally, not placeable on the axis
            return
        reason = entry.get("reason")
        text = reason if isinstance(reason, str) else ""
        counted = not re_announced(text)
        if counted and move in self._seen:  # the same move made again by a session that trained its step again
            return
        if counted:
            self._seen.add(move)
        self.changes.append(LevelChange(*move, text, counted=counted))


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
