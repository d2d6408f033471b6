"""The emergency ladder as the report reads it from events.jsonl: each level change, rollback and halt of the run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, final

from esper.runtime.emergency import re_announced
from esper.runtime.emergency_tally import entry_transition

TRAINER: Final = "tolaria"
"""The trainer's path in the actor tree: its ``child_restarted`` line starts a new ladder (as a resume does)."""


@final
@dataclass(frozen=True, slots=True)
class LevelChange:
    """The ladder moved to ``level`` at ``step`` (an ``emergency_signal`` line); ``counted`` is False for a resume or
    restart taking its saved level back, and for the level a restore trains at from its step (no event, but the
    level the run trains at from there; ``reason`` "" for a restore's)."""

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
    """The run's emergency ladder as its trained history has it, in step order: the level line (``changes``), the
    rollbacks and the halts; ``halted``: whether the last session that finished training ended in a halt. Not
    thread-safe.

    A restore (``lifecycle_restored``, or a RESTORED signal) to step S takes back what came after S: the changes
    drawn after it go, and the level from S is the one the run trained at: a rollback keeps the level it had, while
    a resume or a trainer restart (a new ladder) starts at L1 unless a RESTORED signal re-announces its saved level.
    A resume or restart also takes back the moves (``events``) and the rollbacks it went back over, as the trainer's
    rollback counter does (the run's summary counts that). Every move still counts once, as EmergencyTally counts it
    (``moves``)."""

    changes: list[LevelChange] = field(default_factory=list)
    rollbacks: list[Rollback] = field(default_factory=list)
    halts: list[Halt] = field(default_factory=list)
    halted: bool = False
    _seen: set[tuple[int, int, int]] = field(default_factory=set)
    _marks: list[LevelChange] = field(default_factory=list)
    # A session (or a restarted trainer) has started and not yet trained: its first restore is the start's, at L1 or
    # the level a RESTORED signal took back (``_start_level``), not a rollback's (which keeps the current level).
    _starting: bool = False
    _start_level: int = 1

    @property
    def events(self) -> list[LevelChange]:
        """The moves the panel marks, in file order: every emergency event (re-announced levels and restores left
        out) of the trained history, each once; a rollback keeps those it went back over (they made the level the
        run trains at again), a resume or restart does not (its steps' moves are made again, or not at all)."""
        return list(self._marks)

    @property
    def moves(self) -> int:
        """The run's emergency events, each move once (a move a restore took back included, as the summary counts)."""
        return len(self._seen)

    @property
    def level(self) -> int:
        """The level the line ends at (L1 before any change)."""
        return self.changes[-1].level if self.changes else 1

    @property
    def last_halt(self) -> Halt | None:
        """The halt that ended the run's last trained session, or None when it did not end in one."""
        return self.halts[-1] if self.halted and self.halts else None

    def add_entry(self, entry: dict[str, object]) -> None:
        """Take an events.jsonl entry: an ``emergency_signal``, ``tolaria_rolled_back``, ``training_finished``,
        ``lifecycle_restored``, ``run_started``, ``child_restarted`` (the trainer's) or ``epoch_end`` line; any other
        (or a malformed one) is ignored."""
        match entry.get("event"):
            case "emergency_signal":
                self._add_signal(entry)
            case "tolaria_rolled_back":
                self._starting = False
                step, reason = _int(entry.get("step")), entry.get("reason")
                if step is not None:
                    self.rollbacks.append(Rollback(step, reason if isinstance(reason, str) else ""))
            case "training_finished":
                self.halted = entry.get("status") == "halted"
                step, reason = _int(entry.get("global_step")), entry.get("halt_reason")
                if self.halted and step is not None:
                    self.halts.append(Halt(step, reason if isinstance(reason, str) else ""))
            case "lifecycle_restored":
                if (step := _int(entry.get("step"))) is not None:
                    self._restore(step)
            case "run_started":
                # A resumed run that is killed again did not end in the halt an earlier session did.
                self.halted = False
                self._starting, self._start_level = True, 1
            case "child_restarted" if entry.get("child") == TRAINER:
                self._starting, self._start_level = True, 1
            case "epoch_end":
                self._starting = False

    def _add_signal(self, entry: dict[str, object]) -> None:
        move = entry_transition(entry)
        if move is None:  # an older run's line without its step: counted by the tally, not placeable on the axis
            return
        reason = entry.get("reason")
        text = reason if isinstance(reason, str) else ""
        counted = not re_announced(text)
        if counted:
            # Counted once (a session that trains a step again makes its moves again) but drawn each time: the
            # restore before it took the earlier one off the line.
            self._seen.add(move)
            self._starting = False
            if all((mark.step, mark.previous, mark.level) != move for mark in self._marks):
                self._marks.append(LevelChange(*move, text))
        else:  # a resume's or restart's: its level holds from the restored step
            self._start_level = move[2]
            self._take_back(move[0], start=True)
        self.changes.append(LevelChange(*move, text, counted=counted))

    def _restore(self, step: int) -> None:
        """The run went back to ``step``: a start's restore (``_starting``) or a rollback."""
        level = self._start_level if self._starting else self.level
        self._take_back(step, start=self._starting)
        self._starting = False
        last = self.changes[-1] if self.changes else None
        if last is not None and last.step == step and not last.counted and not last.reason:
            self.changes.pop()  # an earlier restore's level at this step (a rollback's, then a resume's): this one's
        if level != self.level:
            self.changes.append(LevelChange(step, self.level, level, "", counted=False))

    def _take_back(self, step: int, *, start: bool) -> None:
        """Drop the changes after ``step``; with ``start`` (a start's restore), the moves after it and the
        rollbacks that went back to it or later too (the checkpoint of ``step`` was written before them)."""
        self.changes = [change for change in self.changes if change.step <= step]
        if start:
            self.rollbacks = [rollback for rollback in self.rollbacks if rollback.step < step]
            self._marks = [mark for mark in self._marks if mark.step <= step]


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
