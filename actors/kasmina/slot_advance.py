"""One slot's bookkeeping beside its SlotRecord, and how a step boundary advances it (at most one stage)."""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING

import msgspec

from actors.kasmina.evidence import SeedEvidence
from actors.kasmina.gates import (
    GateOutcome,
    GateVerdict,
    evaluate_g1,
    evaluate_g2,
    evaluate_g3,
    evaluate_g4,
    evaluate_g5,
)
from actors.kasmina.lifecycle_table import SEED_STAGES, CullRecord, GateEvaluation, transition
from schemas.enums import SeedLifecycleStage as Stage

if TYPE_CHECKING:
    from collections.abc import Mapping

    from actors.kasmina.evidence import GerminationRequest, ResetEvidence
    from actors.kasmina.lifecycle_settings import LifecycleSettings
    from actors.kasmina.lifecycle_table import SlotRecord


class SlotState:
    """The mutable bookkeeping SeedLifecycle keeps beside each frozen SlotRecord."""

    def __init__(self, record: SlotRecord, evidence: SeedEvidence) -> None:
        self.record = record
        self.evidence = evidence
        self.pending_germination: GerminationRequest | None = None
        self.pending_cull: str | None = None
        self.pending_withdrawal: str | None = None
        self.fossilize_requested = False
        self.retire_reason: str | None = None
        self.reset: ResetEvidence | None = None
        self.memory_bytes = 0
        self.ramp_steps = 0


_EXIT_STAGE: Mapping[Stage, Stage] = MappingProxyType(
    {
        Stage.GERMINATED: Stage.TRAINING,
        Stage.TRAINING: Stage.BLENDING,
        Stage.BLENDING: Stage.SHADOWING,
        Stage.SHADOWING: Stage.PROBATIONARY,
    }
)


def advance(
    state: SlotState, settings: LifecycleSettings, held: frozenset[str], step: int, epoch: int
) -> tuple[CullRecord | None, GateEvaluation | None]:
    """One slot's part of SeedLifecycle.step_boundary: the transition due after ``step``, if any."""
    rec = state.record
    stage = rec.stage
    if state.pending_withdrawal is not None and stage is Stage.GERMINATED:
        # Before a queued cull: the seed never reached the model, so it has nothing to be culled from.
        _withdraw_now(state, settings, step, epoch, state.pending_withdrawal)
        return None, None
    if state.pending_cull is not None and stage in SEED_STAGES:
        return _cull_now(state, settings, step, epoch, state.pending_cull), None
    if rec.slot in held and stage in SEED_STAGES:
        return None, None
    dwell = settings.dwell.steps(stage)
    in_stage = step - rec.entered_stage_step
    if in_stage < dwell:
        return None, None
    if state.retire_reason is not None and stage in (Stage.DORMANT, Stage.FOSSILIZED):
        _move(state, Stage.TERMINATED, step, epoch, state.retire_reason)
        state.retire_reason = None
    elif stage is Stage.DORMANT and state.pending_germination is not None:
        request = state.pending_germination
        state.pending_germination = None
        state.record = msgspec.structs.replace(
            rec, seed_id=request.seed_id, blueprint_id=request.blueprint.blueprint_id
        )
        state.evidence = new_evidence(settings)
        state.ramp_steps = request.blend_ramp_steps
        _move(state, Stage.GERMINATED, step, epoch, "germinate")
    elif stage in _EXIT_STAGE or (stage is Stage.PROBATIONARY and state.fossilize_requested):
        outcome = _judge(state, settings)
        wait = settings.evidence_wait_steps(stage, ramp_steps=state.ramp_steps)
        patience = settings.gate_patience_steps + wait
        if outcome.verdict is GateVerdict.PENDING and stage in _EXIT_STAGE and in_stage >= dwell + patience:
            attrs = {**outcome.attributes, "steps_in_stage": float(in_stage)}
            outcome = GateOutcome(
                gate=outcome.gate, verdict=GateVerdict.FAILED, reason=f"timeout:{outcome.reason}", attributes=attrs
            )
        evaluation = GateEvaluation(slot=rec.slot, seed_id=rec.seed_id, step=step, outcome=outcome)
        if outcome.verdict is GateVerdict.FAILED:
            return _cull_now(state, settings, step, epoch, f"{outcome.gate.name}:{outcome.reason}"), evaluation
        if outcome.verdict is GateVerdict.PASSED:
            _move(state, _EXIT_STAGE.get(stage, Stage.FOSSILIZED), step, epoch, outcome.reason)
        return None, evaluation
    elif stage is Stage.CULLED:
        _move(state, Stage.EMBARGOED, step, epoch, "embargo")
    elif stage is Stage.EMBARGOED:
        assert rec.embargo_until_epoch is not None  # set by _cull_now, the only way into CULLED
        if epoch >= rec.embargo_until_epoch:
            state.evidence = new_evidence(settings)
            state.reset = None
            _move(state, Stage.RESETTING, step, epoch, "embargo_expired")
    elif stage is Stage.RESETTING:
        outcome = evaluate_g5(state.reset, state.evidence.snapshot())
        evaluation = GateEvaluation(slot=rec.slot, seed_id=rec.seed_id, step=step, outcome=outcome)
        if outcome.verdict is GateVerdict.FAILED:
            # RESETTING has no edge to CULLED: the slot stays and waits for a fresh report of a clean slot.
            state.reset = None
        elif outcome.verdict is GateVerdict.PASSED:
            _move(state, Stage.DORMANT, step, epoch, "reset")
            state.record = msgspec.structs.replace(state.record, seed_id=None, blueprint_id=None)
            state.memory_bytes = 0
            state.reset = None
        return None, evaluation
    return None, None


def _judge(state: SlotState, settings: LifecycleSettings) -> GateOutcome:
    stage = state.record.stage
    gates = settings.gates
    snapshot = state.evidence.snapshot()
    if stage is Stage.GERMINATED:
        return evaluate_g1(snapshot.attachment, gates)
    if stage is Stage.TRAINING:
        return evaluate_g2(snapshot, gates)
    if stage is Stage.BLENDING:
        return evaluate_g3(snapshot, gates)
    return evaluate_g4(snapshot, gates, fossilize=stage is Stage.PROBATIONARY)


def _move(state: SlotState, to_stage: Stage, step: int, epoch: int, reason: str) -> None:
    state.record = transition(state.record, to_stage, step=step, epoch=epoch, reason=reason)
    state.evidence.enter_stage()
    if to_stage is Stage.FOSSILIZED:
        # A fossilized seed is host weight now: it leaves the seed budgets.
        state.memory_bytes = 0
        state.fossilize_requested = False


def _withdraw_now(state: SlotState, settings: LifecycleSettings, step: int, epoch: int, reason: str) -> None:
    _move(state, Stage.DORMANT, step, epoch, reason)
    state.record = msgspec.structs.replace(state.record, seed_id=None, blueprint_id=None)
    state.evidence = new_evidence(settings)
    state.pending_withdrawal = None
    state.pending_cull = None
    state.memory_bytes = 0
    state.ramp_steps = 0


def _cull_now(state: SlotState, settings: LifecycleSettings, step: int, epoch: int, reason: str) -> CullRecord:
    rec = state.record
    until = epoch + settings.embargo_epochs
    cull = CullRecord(
        slot=rec.slot,
        seed_id=rec.seed_id,
        stage=rec.stage,
        reason=reason,
        step=step,
        epoch=epoch,
        embargo_until_epoch=until,
    )
    _move(state, Stage.CULLED, step, epoch, reason)
    state.record = msgspec.structs.replace(state.record, embargo_until_epoch=until, last_cull=cull)
    state.pending_cull = None
    state.fossilize_requested = False
    state.memory_bytes = 0
    return cull


def new_evidence(settings: LifecycleSettings) -> SeedEvidence:
    g = settings.gates
    return SeedEvidence(
        stability_window_steps=g.stability_window_steps,
        clamp_window_steps=g.clamp_window_steps,
        validation_window_batches=g.validation_window_batches,
    )
