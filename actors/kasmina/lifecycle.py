"""SeedLifecycle: every slot's record and evidence, advanced one stage at a time at step boundaries.

Everything here is pure and synchronous: the Kasmina actor calls it on its own loop, turns the returned records into
telemetry and commands for Tolaria, and turns the exceptions (IllegalTransition, TransitionOrderError) into ERROR
events. Timers count optimizer steps and epochs, never seconds, so the same inputs give the same transitions.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING, final

import msgspec

from actors.kasmina.evidence import (
    AttachmentEvidence,
    EvidenceSnapshot,
    GerminationRequest,
    ResetEvidence,
    SeedEvidence,
    StepEvidence,
    ValidationEvidence,
)
from actors.kasmina.gates import (
    G0Context,
    GateOutcome,
    GateVerdict,
    evaluate_g0,
    evaluate_g1,
    evaluate_g2,
    evaluate_g3,
    evaluate_g4,
    evaluate_g5,
)
from actors.kasmina.lifecycle_settings import LifecycleSettings
from actors.kasmina.lifecycle_table import (
    SEED_STAGES,
    BoundaryReport,
    CullRecord,
    GateEvaluation,
    IllegalTransition,
    SlotRecord,
    TransitionOrderError,
    UnknownSlot,
    boot_fossilized,
    is_legal,
    new_slot_record,
    transition,
)
from schemas.enums import SeedLifecycleStage as Stage

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from actors.kasmina.lifecycle_table import TransitionEntry


class _SlotState:
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


@final
class SeedLifecycle:
    """Owns every slot's record and evidence, and advances seeds one stage at a time at step boundaries.

    Requests (germinate, cull, withdraw, request_fossilize, retire) are queued and take effect at the next
    ``step_boundary``; evidence is recorded in between. At each boundary a slot takes at most one transition and has
    at most one exit gate judged, and only once the stage's dwell has passed, so a seed needs at least one boundary
    per stage.
    Pure and synchronous: runs on the Kasmina actor's loop, never blocks; not thread-safe. Its exceptions go to the
    caller, which reports an IllegalTransition from a request as an ERROR event; nothing is swallowed here.
    """

    def __init__(
        self,
        slots: Sequence[str],
        settings: LifecycleSettings | None = None,
        *,
        step: int = 0,
        epoch: int = 0,
        fossilized: Mapping[str, tuple[str, str]] | None = None,
    ) -> None:
        """Create the slots and move each from UNKNOWN to DORMANT at ``step`` (the bootstrap transition).

        ``fossilized`` maps a slot to the (seed id, blueprint id) of a seed it holds from the start (the trainer's
        ``tolaria.initial_seeds``): that slot boots FOSSILIZED instead, so it is occupied for good, as a seed that
        fossilized is.

        Raises:
            ValueError: a slot name is empty or repeated, or ``fossilized`` names a slot that is not one of ``slots``.
        """
        self._settings = settings if settings is not None else LifecycleSettings()
        self._step = step
        self._epoch = epoch
        self._slots: dict[str, _SlotState] = {}
        initial = dict(fossilized or {})
        unknown = sorted(set(initial) - set(slots))
        if unknown:
            raise ValueError(f"initial seeds name unknown slots {unknown}; slots: {list(slots)!r}")
        for name in slots:
            if not name or name in self._slots:
                raise ValueError(f"slots must be unique non-empty names, got {name!r} in {list(slots)!r}")
            if name in initial:
                record = boot_fossilized(name, *initial[name], step=step, epoch=epoch)
            else:
                boot = new_slot_record(name, step=step)
                record = transition(boot, Stage.DORMANT, step=step, epoch=epoch, reason="boot")
            self._slots[name] = _SlotState(record, self._new_evidence())
        self._held: frozenset[str] = frozenset()

    @property
    def settings(self) -> LifecycleSettings:
        return self._settings

    def record(self, slot: str) -> SlotRecord:
        return self._state(slot).record

    def records(self) -> tuple[SlotRecord, ...]:
        return tuple(s.record for s in self._slots.values())

    def evidence(self, slot: str) -> EvidenceSnapshot:
        return self._state(slot).evidence.snapshot()

    def active_seeds(self) -> int:
        """Seeds in GERMINATED..PROBATIONARY plus germinations queued for the next boundary."""
        return sum(s.record.stage in SEED_STAGES or s.pending_germination is not None for s in self._slots.values())

    # ------------------------------------------------------------ requests

    def germinate(self, slot: str, request: GerminationRequest, *, epoch: int) -> GateOutcome:
        """Judge G0 now; if it passes, DORMANT -> GERMINATED is taken at the next boundary whose dwell allows it.

        Returns:
            The G0 outcome; a refusal (``embargoed``, ``slot_occupied``, ``seed_budget``, ...) changes nothing.
        """
        state = self._state(slot)
        others = [s for s in self._slots.values() if s is not state]
        in_use = {s.record.seed_id for s in others if s.record.seed_id is not None}
        in_use |= {s.pending_germination.seed_id for s in others if s.pending_germination is not None}
        context = G0Context(
            slot_stage=state.record.stage,
            germination_pending=state.pending_germination is not None,
            retire_pending=state.retire_reason is not None,
            embargo_until_epoch=state.record.embargo_until_epoch,
            epoch=epoch,
            active_seeds=self.active_seeds(),
            memory_in_use_bytes=sum(s.memory_bytes for s in others),
            seed_ids_in_use=frozenset(in_use),
        )
        outcome = evaluate_g0(request, context, self._settings.gates)
        if outcome.passed:
            state.pending_germination = request
            state.memory_bytes = request.blueprint.estimated_memory_bytes
        return outcome

    def cull(self, slot: str, reason: str) -> None:
        """Queue a cull for the next boundary (CULL/CANCEL command, isolation breaker); the first reason queued wins.

        Raises:
            IllegalTransition: the slot holds no cullable seed (its stage has no edge to CULLED).
        """
        state = self._state(slot)
        if not is_legal(state.record.stage, Stage.CULLED):
            raise IllegalTransition(slot, state.record.stage, Stage.CULLED, reason)
        if state.pending_cull is None:
            state.pending_cull = reason

    def withdraw(self, slot: str, seed_id: str, reason: str) -> bool:
        """Queue GERMINATED -> DORMANT for the next boundary: the trainer refused the seed's attach for the emergency
        level, so its module never reached the model and the slot is free again (no cull, embargo or reset).

        Returns:
            True if queued; False when the slot no longer holds ``seed_id`` in GERMINATED (culled meanwhile).
        """
        state = self._state(slot)
        if state.record.stage is not Stage.GERMINATED or state.record.seed_id != seed_id:
            return False
        state.pending_withdrawal = reason
        return True

    def request_fossilize(self, slot: str) -> None:
        """Ask for PROBATIONARY -> FOSSILIZED; G4 is re-run over the probation window at each boundary after the dwell.

        Raises:
            IllegalTransition: the slot is not PROBATIONARY.
        """
        state = self._state(slot)
        if state.record.stage is not Stage.PROBATIONARY:
            raise IllegalTransition(slot, state.record.stage, Stage.FOSSILIZED, "fossilize")
        state.fossilize_requested = True

    def retire(self, slot: str, reason: str) -> None:
        """Queue DORMANT/FOSSILIZED -> TERMINATED for the next boundary.

        Raises:
            IllegalTransition: the stage has no edge to TERMINATED, or a germination is queued on the slot.
        """
        state = self._state(slot)
        if not is_legal(state.record.stage, Stage.TERMINATED) or state.pending_germination is not None:
            raise IllegalTransition(slot, state.record.stage, Stage.TERMINATED, reason)
        state.retire_reason = reason

    def cancel_germination(self, slot: str) -> bool:
        """Drop a germination queued by ``germinate`` and not yet taken (a CANCEL before the seed exists).

        Returns:
            True if a queued germination was dropped; False if none was queued (a live seed is culled instead).
        """
        state = self._state(slot)
        if state.pending_germination is None:
            return False
        state.pending_germination = None
        state.memory_bytes = 0
        return True

    # ------------------------------------------------------------ evidence

    def record_step_evidence(self, slot: str, evidence: StepEvidence) -> bool:
        """Add one step's measurements; False (nothing recorded) when the evidence is stale.

        Stale means: the slot holds no live seed, the seed_id is not the slot's, or the step is not after the step the
        current stage began at (it belongs to an earlier stage).
        """
        state = self._state(slot)
        if not self._accepts(state, evidence.seed_id, evidence.step):
            return False
        state.evidence.add_step(evidence)
        return True

    def record_validation(self, slot: str, evidence: ValidationEvidence) -> bool:
        """Add one validation batch's counterfactual; False when stale (see ``record_step_evidence``)."""
        state = self._state(slot)
        if not self._accepts(state, evidence.seed_id, evidence.step):
            return False
        state.evidence.add_validation(evidence)
        return True

    def record_attachment(self, slot: str, evidence: AttachmentEvidence) -> bool:
        """Record the kernel attachment probe for G1; False unless the slot is GERMINATED with this seed."""
        state = self._state(slot)
        if state.record.stage is not Stage.GERMINATED or state.record.seed_id != evidence.seed_id:
            return False
        state.evidence.set_attachment(evidence)
        return True

    def record_reset(self, slot: str, evidence: ResetEvidence) -> bool:
        """Record what clearing the slot left behind, for G5; False unless the slot is RESETTING."""
        state = self._state(slot)
        if state.record.stage is not Stage.RESETTING:
            return False
        state.reset = evidence
        return True

    # ------------------------------------------------------------ the boundary

    def hold(self, slots: frozenset[str]) -> None:
        """From the next boundary on, the live seeds of ``slots`` take no gate or stage change (a cull still goes
        through): their seeds are paused, and the trainer refuses a stage change for a paused seed."""
        self._held = slots

    def step_boundary(self, step: int, epoch: int) -> BoundaryReport:
        """Take the transitions due after optimizer step ``step``, in slot order.

        Per slot: a queued withdrawal wins, then a queued cull; otherwise the stage's exit is considered once its
        dwell has passed (a queued germination or retirement, the embargo's end, or the exit gate). A gate that
        passes advances the seed, one that fails culls it (RESETTING stays and waits for a new reset report), and a
        PENDING gate changes nothing until ``gate_patience_steps`` past the dwell and the wait for its evidence
        (``LifecycleSettings.evidence_wait_steps``), when it fails with ``timeout:<reason>``.

        Raises:
            TransitionOrderError: ``step`` is not after the previous boundary, or ``epoch`` went backwards.
        """
        if step <= self._step or epoch < self._epoch:
            raise TransitionOrderError(
                f"step_boundary(step={step}, epoch={epoch}) must follow step {self._step}, epoch {self._epoch}"
            )
        self._step, self._epoch = step, epoch
        transitions: list[TransitionEntry] = []
        evaluations: list[GateEvaluation] = []
        culls: list[CullRecord] = []
        for state in self._slots.values():
            before = len(state.record.history)
            cull, evaluation = self._advance(state, step, epoch)
            transitions.extend(state.record.history[before:])
            if evaluation is not None:
                evaluations.append(evaluation)
            if cull is not None:
                culls.append(cull)
        return BoundaryReport(
            step=step, epoch=epoch, transitions=tuple(transitions), evaluations=tuple(evaluations), culls=tuple(culls)
        )

    def _advance(self, state: _SlotState, step: int, epoch: int) -> tuple[CullRecord | None, GateEvaluation | None]:
        rec = state.record
        stage = rec.stage
        if state.pending_withdrawal is not None and stage is Stage.GERMINATED:
            # Before a queued cull: the seed never reached the model, so it has nothing to be culled from.
            self._withdraw_now(state, step, epoch, state.pending_withdrawal)
            return None, None
        if state.pending_cull is not None and stage in SEED_STAGES:
            return self._cull_now(state, step, epoch, state.pending_cull), None
        if rec.slot in self._held and stage in SEED_STAGES:
            return None, None
        dwell = self._settings.dwell.steps(stage)
        in_stage = step - rec.entered_stage_step
        if in_stage < dwell:
            return None, None
        if state.retire_reason is not None and stage in (Stage.DORMANT, Stage.FOSSILIZED):
            self._move(state, Stage.TERMINATED, step, epoch, state.retire_reason)
            state.retire_reason = None
        elif stage is Stage.DORMANT and state.pending_germination is not None:
            request = state.pending_germination
            state.pending_germination = None
            state.record = msgspec.structs.replace(
                rec, seed_id=request.seed_id, blueprint_id=request.blueprint.blueprint_id
            )
            state.evidence = self._new_evidence()
            state.ramp_steps = request.blend_ramp_steps
            self._move(state, Stage.GERMINATED, step, epoch, "germinate")
        elif stage in _EXIT_STAGE or (stage is Stage.PROBATIONARY and state.fossilize_requested):
            outcome = self._judge(state)
            settings = self._settings
            wait = settings.evidence_wait_steps(stage, ramp_steps=state.ramp_steps)
            patience = settings.gate_patience_steps + wait
            if outcome.verdict is GateVerdict.PENDING and stage in _EXIT_STAGE and in_stage >= dwell + patience:
                attrs = {**outcome.attributes, "steps_in_stage": float(in_stage)}
                outcome = GateOutcome(
                    gate=outcome.gate, verdict=GateVerdict.FAILED, reason=f"timeout:{outcome.reason}", attributes=attrs
                )
            evaluation = GateEvaluation(slot=rec.slot, seed_id=rec.seed_id, step=step, outcome=outcome)
            if outcome.verdict is GateVerdict.FAILED:
                return self._cull_now(state, step, epoch, f"{outcome.gate.name}:{outcome.reason}"), evaluation
            if outcome.verdict is GateVerdict.PASSED:
                self._move(state, _EXIT_STAGE.get(stage, Stage.FOSSILIZED), step, epoch, outcome.reason)
            return None, evaluation
        elif stage is Stage.CULLED:
            self._move(state, Stage.EMBARGOED, step, epoch, "embargo")
        elif stage is Stage.EMBARGOED:
            assert rec.embargo_until_epoch is not None  # set by _cull_now, the only way into CULLED
            if epoch >= rec.embargo_until_epoch:
                state.evidence = self._new_evidence()
                state.reset = None
                self._move(state, Stage.RESETTING, step, epoch, "embargo_expired")
        elif stage is Stage.RESETTING:
            outcome = evaluate_g5(state.reset, state.evidence.snapshot())
            evaluation = GateEvaluation(slot=rec.slot, seed_id=rec.seed_id, step=step, outcome=outcome)
            if outcome.verdict is GateVerdict.FAILED:
                # RESETTING has no edge to CULLED: the slot stays and waits for a fresh report of a clean slot.
                state.reset = None
            elif outcome.verdict is GateVerdict.PASSED:
                self._move(state, Stage.DORMANT, step, epoch, "reset")
                state.record = msgspec.structs.replace(state.record, seed_id=None, blueprint_id=None)
                state.memory_bytes = 0
                state.reset = None
            return None, evaluation
        return None, None

    def _judge(self, state: _SlotState) -> GateOutcome:
        stage = state.record.stage
        gates = self._settings.gates
        snapshot = state.evidence.snapshot()
        if stage is Stage.GERMINATED:
            return evaluate_g1(snapshot.attachment, gates)
        if stage is Stage.TRAINING:
            return evaluate_g2(snapshot, gates)
        if stage is Stage.BLENDING:
            return evaluate_g3(snapshot, gates)
        return evaluate_g4(snapshot, gates, fossilize=stage is Stage.PROBATIONARY)

    def _move(self, state: _SlotState, to_stage: Stage, step: int, epoch: int, reason: str) -> None:
        state.record = transition(state.record, to_stage, step=step, epoch=epoch, reason=reason)
        state.evidence.enter_stage()
        if to_stage is Stage.FOSSILIZED:
            # A fossilized seed is host weight now: it leaves the seed budgets.
            state.memory_bytes = 0
            state.fossilize_requested = False

    def _withdraw_now(self, state: _SlotState, step: int, epoch: int, reason: str) -> None:
        self._move(state, Stage.DORMANT, step, epoch, reason)
        state.record = msgspec.structs.replace(state.record, seed_id=None, blueprint_id=None)
        state.evidence = self._new_evidence()
        state.pending_withdrawal = None
        state.pending_cull = None
        state.memory_bytes = 0
        state.ramp_steps = 0

    def _cull_now(self, state: _SlotState, step: int, epoch: int, reason: str) -> CullRecord:
        rec = state.record
        until = epoch + self._settings.embargo_epochs
        cull = CullRecord(
            slot=rec.slot,
            seed_id=rec.seed_id,
            stage=rec.stage,
            reason=reason,
            step=step,
            epoch=epoch,
            embargo_until_epoch=until,
        )
        self._move(state, Stage.CULLED, step, epoch, reason)
        state.record = msgspec.structs.replace(state.record, embargo_until_epoch=until, last_cull=cull)
        state.pending_cull = None
        state.fossilize_requested = False
        state.memory_bytes = 0
        return cull

    # ------------------------------------------------------------ helpers

    def _state(self, slot: str) -> _SlotState:
        state = self._slots.get(slot)
        if state is None:
            raise UnknownSlot(f"unknown slot {slot!r}; known slots: {sorted(self._slots)}")
        return state

    def _accepts(self, state: _SlotState, seed_id: str, step: int) -> bool:
        rec = state.record
        return rec.stage in SEED_STAGES and rec.seed_id == seed_id and step > rec.entered_stage_step

    def _new_evidence(self) -> SeedEvidence:
        g = self._settings.gates
        return SeedEvidence(
            stability_window_steps=g.stability_window_steps,
            clamp_window_steps=g.clamp_window_steps,
            validation_window_batches=g.validation_window_batches,
        )
