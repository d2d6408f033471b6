"""Records and events of the actor kernel: mailbox statistics, actor state snapshots, supervision and breaker events."""

from __future__ import annotations

from typing import Literal

from schemas.base import Message, Record
from schemas.constraints import NonNegInt
from schemas.enums import ActorStatus, BreakerState, EmergencyLevel


class MailboxStatistics(Record, frozen=True):
    """A mailbox at one instant. Returned by Mailbox.statistics(), which never blocks."""

    capacity: int
    depth: int
    sent: int
    received: int
    dropped: int
    waiting_senders: int
    closed: bool


class ActorState(Record, frozen=True):
    """One actor's state as the snapshot and the ``actor_state`` log event show it."""

    actor: str
    status: ActorStatus
    mailbox_depth: int
    mailbox_capacity: int
    handled: int
    failed: int
    restarts: int
    breaker: BreakerState | None = None
    last_latency_ms: float | None = None


class ChildFailed(Message, frozen=True):
    """A supervised child stopped with an exception; its supervisor decides what happens next.

    ``traceback``: the last frames of the failure that started it (through exception groups and ``raise ... from``),
    as Python prints them, at most about 4 KB; ``user_frame``: its innermost frame in the user's own code (not Esper's,
    the standard library's or an installed package's), ``file:line in function``. None when not known.
    """

    supervisor: str
    child: str
    error_type: str
    error: str
    run_id: str | None = None  # set by the run's event sink: runs publishing on one Redis prefix are told apart
    user_frame: str | None = None
    traceback: str | None = None


class ChildRestarted(Message, frozen=True):
    """A supervisor restarted a child after a failure (the restart count includes this one)."""

    supervisor: str
    child: str
    restarts: int
    backoff_s: float
    run_id: str | None = None  # set by the run's event sink


EscalationReason = Literal["restart_intensity", "unrecoverable", "no_progress"]


class SupervisorEscalated(Message, frozen=True):
    """A supervisor stopped its children and handed the failure to its parent: restarts came faster than its
    intensity allows (``restart_intensity``), a child failed in a way no restart fixes, such as a full disk
    (``unrecoverable``: escalated at the first failure), or a child failed again where it failed before too many
    times in a row, such as a trainer at the same step (``no_progress``: restarting it replays the same failure)."""

    supervisor: str
    child: str
    restarts: int
    window_s: float
    reason: EscalationReason = "restart_intensity"
    run_id: str | None = None  # set by the run's event sink


class BreakerTransition(Message, frozen=True):
    """A circuit breaker changed state (forced transitions included)."""

    breaker: str
    from_state: BreakerState
    to_state: BreakerState
    reason: str
    at_s: float
    run_id: str | None = None  # set by the run's event sink


class EmergencySignal(Message, frozen=True):
    """The emergency level changed; broadcast on the emergency lane.

    ``step`` and ``epoch`` say where the run was: the optimizer steps and the epochs it had completed (an epoch end's
    verdict comes after its epoch, so the end of the first epoch says epoch 1); None from a ladder nobody told where
    the run is. A run that trains a step again (a ``--resume`` from an older checkpoint, a trainer restart) makes its
    moves at that step again: see ``transition``.
    """

    level: EmergencyLevel
    previous: EmergencyLevel
    reason: str
    origin: str
    monotonic_time_ms: float
    run_id: str
    step: NonNegInt | None = None
    epoch: NonNegInt | None = None

    def transition(self) -> tuple[int, int, int] | None:
        """(step, previous level, level): the move this signal reports, the same event whichever session of the run
        made it; None when the signal names no step."""
        return None if self.step is None else (self.step, int(self.previous), int(self.level))
