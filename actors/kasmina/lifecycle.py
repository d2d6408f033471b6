"""SeedLifecycle: every slot's record and evidence, advanced one stage at a time at step boundaries.

Everything here is pure and synchronous: the Kasmina actor calls it on its own loop, turns the returned records into
telemetry and commands for Tolaria, and turns the exceptions (IllegalTransition, TransitionOrderError) into ERROR
events. Timers count optimizer steps and epochs, never seconds, so the same inputs give the same transitions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, final

from actors.kasmina.gates import G0Context, GateOutcome, evaluate_g0
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
from actors.kasmina.slot_advance import SlotState, advance, new_evidence
from schemas.enums import SeedLifecycleStage as Stage

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from actors.kasmina.evidence import (
        AttachmentEvidence,
        EvidenceSnapshot,
        GerminationRequest,
        ResetEvidence,
        StepEvidence,
        ValidationEvidence,
    )
    from actors.kasmina.lifecycle_table import TransitionEntry


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
        self._slots: dict[str, SlotState] = {}
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
            self._slots[name] = SlotState(record, new_evidence(self._settings))
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
            cull, evaluation = advance(state, self._settings, self._held, step, epoch)
            transitions.extend(state.record.history[before:])
            if evaluation is not None:
                evaluations.append(evaluation)
            if cull is not None:
                culls.append(cull)
        return BoundaryReport(
            step=step, epoch=epoch, transitions=tuple(transitions), evaluations=tuple(evaluations), culls=tuple(culls)
        )

    # ------------------------------------------------------------ helpers

    def _state(self, slot: str) -> SlotState:
        state = self._slots.get(slot)
        if state is None:
            raise UnknownSlot(f"unknown slot {slot!r}; known slots: {sorted(self._slots)}")
        return state

    def _accepts(self, state: SlotState, seed_id: str, step: int) -> bool:
        rec = state.record
        return rec.stage in SEED_STAGES and rec.seed_id == seed_id and step > rec.entered_stage_step
