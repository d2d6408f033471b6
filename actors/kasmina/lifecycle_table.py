"""The seed lifecycle's transition table, its errors and records, and ``transition``: one slot record's legal step.

Pure and synchronous: SeedLifecycle (actors/kasmina/lifecycle.py) drives it at step boundaries.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING

import msgspec

from actors.kasmina.gates import GateOutcome
from esper.runtime.errors import EsperError
from schemas.base import Record
from schemas.enums import SeedLifecycleStage as Stage

if TYPE_CHECKING:
    from collections.abc import Mapping

ALLOWED_TRANSITIONS: Mapping[Stage, frozenset[Stage]] = MappingProxyType(
    {
        Stage.UNKNOWN: frozenset({Stage.DORMANT}),
        Stage.DORMANT: frozenset({Stage.GERMINATED, Stage.TERMINATED}),
        # GERMINATED -> DORMANT: a germination withdrawn because the trainer refused its attach for the emergency
        # level; its module never reached the model, so there is nothing to cull, embargo or reset.
        Stage.GERMINATED: frozenset({Stage.TRAINING, Stage.CULLED, Stage.DORMANT}),
        Stage.TRAINING: frozenset({Stage.BLENDING, Stage.CULLED}),
        Stage.BLENDING: frozenset({Stage.SHADOWING, Stage.CULLED}),
        Stage.SHADOWING: frozenset({Stage.PROBATIONARY, Stage.CULLED}),
        Stage.PROBATIONARY: frozenset({Stage.FOSSILIZED, Stage.CULLED}),
        Stage.FOSSILIZED: frozenset({Stage.TERMINATED}),
        Stage.CULLED: frozenset({Stage.EMBARGOED}),
        Stage.EMBARGOED: frozenset({Stage.RESETTING}),
        Stage.RESETTING: frozenset({Stage.DORMANT}),
        Stage.TERMINATED: frozenset(),
    }
)
"""Every legal transition (REFERENCE.md section 2, plus GERMINATED -> DORMANT); anything absent raises
IllegalTransition."""

SEED_STAGES: frozenset[Stage] = frozenset(
    {Stage.GERMINATED, Stage.TRAINING, Stage.BLENDING, Stage.SHADOWING, Stage.PROBATIONARY}
)
"""Stages in which a live, not yet permanent seed occupies the slot: they take evidence and can be culled."""


class LifecycleError(EsperError):
    """Root of the seed-lifecycle errors (to move under EsperError in esper/runtime/errors.py)."""


class IllegalTransition(LifecycleError):
    """Raised when a transition (or a request that implies one: cull, fossilize, retire) is not in the table."""

    def __init__(self, slot: str, from_stage: Stage, to_stage: Stage, reason: str) -> None:
        super().__init__(
            f"illegal lifecycle transition {from_stage.name} -> {to_stage.name} on slot {slot!r} (reason: {reason})"
        )
        self.slot = slot
        self.from_stage = from_stage
        self.to_stage = to_stage
        self.reason = reason


class TransitionOrderError(LifecycleError, ValueError):
    """Raised for a second transition of a slot at the same step, or a step earlier than the last boundary."""


class UnknownSlot(LifecycleError, ValueError):
    """Raised when a call names a slot the lifecycle was not created with."""


class TransitionEntry(Record, frozen=True):
    """One transition taken, at the step boundary after optimizer step ``step``."""

    slot: str
    seed_id: str | None
    step: int
    epoch: int
    from_stage: Stage
    to_stage: Stage
    reason: str


class CullRecord(Record, frozen=True):
    """A cull: which seed, from which stage, why, and until which epoch its slot is embargoed."""

    slot: str
    seed_id: str | None
    stage: Stage
    reason: str
    step: int
    epoch: int
    embargo_until_epoch: int


class SlotRecord(Record, frozen=True):
    """The lifecycle state of one slot. ``last_transition_step`` is None until the bootstrap transition."""

    slot: str
    stage: Stage
    entered_stage_step: int
    last_transition_step: int | None = None
    seed_id: str | None = None
    blueprint_id: str | None = None
    embargo_until_epoch: int | None = None
    last_cull: CullRecord | None = None
    history: tuple[TransitionEntry, ...] = ()


class GateEvaluation(Record, frozen=True):
    """A gate outcome together with the slot, seed and step it was judged at."""

    slot: str
    seed_id: str | None
    step: int
    outcome: GateOutcome


class BoundaryReport(Record, frozen=True):
    """What one step boundary did: at most one transition and one gate evaluation per slot."""

    step: int
    epoch: int
    transitions: tuple[TransitionEntry, ...] = ()
    evaluations: tuple[GateEvaluation, ...] = ()
    culls: tuple[CullRecord, ...] = ()


def is_legal(from_stage: Stage, to_stage: Stage) -> bool:
    return to_stage in ALLOWED_TRANSITIONS[from_stage]


def new_slot_record(slot: str, *, step: int) -> SlotRecord:
    """A slot in the UNKNOWN bootstrap sentinel; its only way out is DORMANT."""
    return SlotRecord(slot=slot, stage=Stage.UNKNOWN, entered_stage_step=step)


def transition(record: SlotRecord, to_stage: Stage, *, step: int, epoch: int, reason: str) -> SlotRecord:
    """Move a slot to ``to_stage`` at the boundary after step ``step``; returns the new record.

    Checks only the table and the one-transition-per-boundary rule. Dwell, gates, the seed's identity and the
    embargo are the caller's business (SeedLifecycle).

    Raises:
        IllegalTransition: ``to_stage`` is not allowed from the record's stage.
        TransitionOrderError: the slot already transitioned at ``step``, or at a later step.
    """
    if not is_legal(record.stage, to_stage):
        raise IllegalTransition(record.slot, record.stage, to_stage, reason)
    last = record.last_transition_step
    if last is not None and step <= last:
        what = "already transitioned at" if step == last else "is before its last transition at"
        raise TransitionOrderError(
            f"slot {record.slot!r}: step {step} {what} step {last}; at most one transition per boundary"
        )
    entry = TransitionEntry(
        slot=record.slot,
        seed_id=record.seed_id,
        step=step,
        epoch=epoch,
        from_stage=record.stage,
        to_stage=to_stage,
        reason=reason,
    )
    return msgspec.structs.replace(
        record, stage=to_stage, entered_stage_step=step, last_transition_step=step, history=(*record.history, entry)
    )


def boot_fossilized(slot: str, seed_id: str, blueprint_id: str, *, step: int, epoch: int) -> SlotRecord:
    """A slot that holds a seed from the start: its bootstrap goes from UNKNOWN straight to FOSSILIZED, outside the
    transition table (no seed lived through the stages before it: it is part of the host from step 0)."""
    entry = TransitionEntry(
        slot=slot,
        seed_id=seed_id,
        step=step,
        epoch=epoch,
        from_stage=Stage.UNKNOWN,
        to_stage=Stage.FOSSILIZED,
        reason="initial_seed",
    )
    return SlotRecord(
        slot=slot,
        stage=Stage.FOSSILIZED,
        entered_stage_step=step,
        last_transition_step=step,
        seed_id=seed_id,
        blueprint_id=blueprint_id,
        history=(entry,),
    )
