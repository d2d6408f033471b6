"""The boundary planner: one state packet plus its decision in, lifecycle boundary run, one BoundaryPlan out.

Synchronous and deterministic: given the same packets, decisions, receipts and validation reports in the same order,
it takes the same transitions at the same steps and writes the same plans. It never awaits; the actor around it
verifies signatures, awaits seed preparation on the io lane between ``begin`` and ``finish``, and sends the plan.
Runs on the Kasmina actor's event loop; not thread-safe. Events go to the injected sink, which never blocks.

Timeline of one seed (s = the step of the GERMINATE's packet, lag = TolariaConfig.command_lag_steps):
boundary s: G0 passes, DORMANT -> GERMINATED, the module is prepared and plan s carries ``attach`` (slot mode
TRAINING) effective at s + lag. The receipt of that attach is the G1 evidence; at the first boundary after the
attach took effect G1 passes and the lifecycle records GERMINATED -> TRAINING (no op: the slot already trains).
Later boundaries: TRAINING -> BLENDING (``set_stage`` with the blend config), -> SHADOWING, -> PROBATIONARY
(``set_stage``), -> FOSSILIZED (``fossilize``); a cull from any live stage is a ``detach``.

Receipts (BoundaryApplied) and validation reports are applied at the first boundary after the step they describe
(receipts: applied_step < packet step; validation: report step <= packet step), never when they happen to arrive,
so thread timing never moves a transition.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, final

from actors.kasmina.admission import checked_params
from actors.kasmina.commands import CommandDesk, emit_event
from actors.kasmina.evidence import (
    AttachmentEvidence,
    ResetEvidence,
    StepEvidence,
    ValidationEvidence,
)
from actors.kasmina.gates import GateVerdict
from actors.kasmina.lifecycle import SeedLifecycle
from actors.kasmina.lifecycle_table import SEED_STAGES, IllegalTransition
from actors.kasmina.seeds import SeedEntry, gate_result, seed_state
from actors.kasmina.stage_retries import SET_STAGE, StageRetries
from actors.kasmina.step_queue import StepQueue
from schemas.boundary import BoundaryPlan, SeedOp
from schemas.config import initial_seed_id
from schemas.domain_enums import CommandRejectReason, TelemetryLevel
from schemas.enums import BreakerState
from schemas.enums import SeedLifecycleStage as Stage
from schemas.nissa import SeedStageChanged

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from actors.kasmina.lifecycle_settings import LifecycleSettings
    from actors.kasmina.lifecycle_table import BoundaryReport, SlotRecord
    from actors.kasmina.preparation import PreparationRequest, PreparedSeed
    from esper.nn.blueprints import BlueprintDescriptor, SlotShape
    from esper.runtime.clock import Clock
    from esper.runtime.events import EventSink
    from schemas.boundary import BoundaryApplied, OpOutcome
    from schemas.config import BreakerConfig
    from schemas.control import AdaptationCommand, CommandResult
    from schemas.kasmina import PrefetchSeed, SeedValidationReport
    from schemas.state import SeedState, SystemStatePacket

_CRITICAL_GATE_REASONS = ("fallback", "latency_over_budget", "interface_mismatch")
_STAGE_OPS = frozenset({"set_stage", "fossilize"})
_AFTER_LIFE = frozenset({Stage.CULLED, Stage.EMBARGOED, Stage.RESETTING})


@final
@dataclass
class Draft:
    """A plan being assembled: ops in order, with attach placeholders (seed ids) until preparation is done."""

    step: int
    epoch: int
    ops: list[SeedOp | str] = field(default_factory=list)
    results: list[CommandResult] = field(default_factory=list)
    preparations: list[PreparationRequest] = field(default_factory=list)


@final
class BoundaryPlanner:
    """Owns the SeedLifecycle, each seed's bookkeeping and isolation breaker, and the parameter-ownership map."""

    def __init__(
        self,
        *,
        run_id: str,
        run_seed: int,
        slots: Mapping[str, SlotShape],
        settings: LifecycleSettings,
        lag_steps: int,
        describe: Callable[[str], BlueprintDescriptor | None],
        clock: Clock,
        sink: EventSink,
        breaker: BreakerConfig,
        approved_blueprints: frozenset[str] = frozenset(),
        initial_seeds: Mapping[str, str] | None = None,
    ) -> None:
        """``initial_seeds`` maps a slot to the blueprint id of the seed the trainer attached there before step 0
        (``tolaria.initial_seeds``): the slot is FOSSILIZED from the start, so nothing germinates into it.

        Raises: ValueError: no slots, a negative lag, a slot name repeated or empty, or an initial seed in no slot.
        """
        if not slots:
            raise ValueError("slots must name at least one seed slot")
        if lag_steps < 0:
            raise ValueError(f"lag_steps must be >= 0, got {lag_steps}")
        self._run_id = run_id
        self._run_seed = run_seed
        self._shapes = dict(slots)
        self._depth = {name: i for i, name in enumerate(slots)}
        # Boot at step -1 so that a packet at step 0 is a boundary after it.
        fossilized = {slot: (initial_seed_id(slot), bp) for slot, bp in (initial_seeds or {}).items()}
        self._lifecycle = SeedLifecycle(tuple(slots), settings, step=-1, epoch=0, fossilized=fossilized)
        self._lag = lag_steps
        self._describe = describe
        self._clock = clock
        self._sink = sink
        self._breaker = breaker
        self._approved = approved_blueprints
        self._seeds: dict[str, SeedEntry] = {}
        self._pending: dict[str, SeedEntry] = {}
        self._owners: dict[str, str] = {}
        self._desk = CommandDesk(
            lifecycle=self._lifecycle,
            shapes=self._shapes,
            seeds=self._seeds,
            pending=self._pending,
            owners=self._owners,
            describe=describe,
            approved=approved_blueprints,
            lag_steps=lag_steps,
            run_seed=run_seed,
            clock=clock,
            sink=sink,
            breaker=breaker,
        )
        self._receipts: StepQueue[BoundaryApplied] = StepQueue(_applied_step)
        # Seeds whose stage op the trainer refused, until one takes effect.
        self._retries = StageRetries()
        self._validation: StepQueue[SeedValidationReport] = StepQueue(_report_step)
        self._last_step: int | None = None
        self._reported_epoch: int | None = None
        self.boundaries = 0
        self.isolation_culls = 0

    # ------------------------------------------------------------ queries

    @property
    def lag_steps(self) -> int:
        return self._lag

    @property
    def last_step(self) -> int | None:
        """The step of the last boundary planned, or None before the first."""
        return self._last_step

    def seed_states(self) -> tuple[SeedState, ...]:
        return tuple(self._seed_state(rec) for rec in self._lifecycle.records())

    def owner_of(self, parameter: str) -> str | None:
        """The seed id (or ``"host"`` after fossilization) owning a qualified parameter name, from receipts."""
        return self._owners.get(parameter)

    def slot_of(self, seed_id: str) -> str | None:
        return self._desk.slot_of(seed_id)

    @property
    def accepted(self) -> int:
        """Commands accepted so far."""
        return self._desk.accepted

    @property
    def rejected(self) -> dict[str, int]:
        """Commands refused so far, by reason."""
        return self._desk.rejected

    @property
    def illegal_transitions(self) -> int:
        """Transitions the lifecycle refused so far."""
        return self._desk.illegal_transitions

    # ------------------------------------------------------------ inputs between boundaries

    def record_receipt(self, receipt: BoundaryApplied) -> None:
        """Keep Tolaria's receipt until the first boundary after its applied step."""
        self._receipts.append(receipt)

    def record_validation(self, report: SeedValidationReport) -> None:
        """Keep a validation report until the boundary of its step."""
        self._validation.append(report)

    def prefetch_request(self, msg: PrefetchSeed) -> PreparationRequest | str:
        """The preparation a prefetch asks for, or one line saying why it cannot be prepared."""
        shape = self._shapes.get(msg.slot)
        if shape is None:
            return f"unknown slot {msg.slot!r}"
        checked = checked_params(self._describe(msg.blueprint_id), msg.blueprint_id, shape, msg.blueprint_params)
        if isinstance(checked, str):
            return checked
        return self._desk.request(msg.seed_id, msg.slot, msg.blueprint_id, shape, checked)

    # ------------------------------------------------------------ the boundary

    def begin(
        self, packet: SystemStatePacket, command: AdaptationCommand | None, security: CommandRejectReason | None
    ) -> Draft:
        """Run the boundary of ``packet``: evidence, the command (already verified: ``security`` is the verifier's
        verdict), the lifecycle transitions; returns the draft plan and the modules it still needs.

        Raises:
            ValueError: the packet's step is not after the last boundary (the caller drops such packets first).
            TransitionOrderError: the packet's epoch went backwards.
        """
        step, epoch = packet.global_step, packet.epoch
        if self._last_step is not None and step <= self._last_step:
            raise ValueError(f"packet step {step} is not after the last boundary {self._last_step}")
        draft = Draft(step=step, epoch=epoch)
        self._apply_receipts(step)
        self._apply_validation(step)
        self._report_resets()
        self._apply_packet(packet)
        command_ops: list[SeedOp] = []
        paused_before = self._paused_slots()
        if command is not None:
            result, command_ops = self._desk.apply(command, security, step, epoch)
            draft.results.append(result)
            self._sink.emit(result)
        # A paused seed changes no stage (the trainer refuses it): held from the boundary of its pause, whose ops
        # follow this boundary's transitions in the plan, to the boundary after its resume, whose ops do as well.
        self._lifecycle.hold(paused_before | self._paused_slots())
        report = self._lifecycle.step_boundary(step, epoch)
        self._last_step = step
        self.boundaries += 1
        self._judged(report)
        changed = self._transition_ops(report, draft)
        self._retries.retry(draft.ops, draft.step, self._seeds, lambda slot: self._lifecycle.record(slot).stage)
        draft.ops.extend(command_ops)
        if self._reported_epoch != epoch:
            self._reported_epoch = epoch
            changed = {rec.slot for rec in self._lifecycle.records()}
        for rec in self._lifecycle.records():
            if rec.slot in changed:
                self._sink.emit(self._seed_state(rec))
        return draft

    def _paused_slots(self) -> frozenset[str]:
        return frozenset(seed.slot for seed in self._seeds.values() if seed.paused and not seed.detached)

    def prepared(self, prepared: PreparedSeed) -> None:
        """Record a module ready in the handoff store for a seed of the current draft."""
        self._seeds[prepared.seed_id].prepared = prepared
        self._seeds[prepared.seed_id].parameter_count = prepared.parameter_count

    def preparation_failed(self, seed_id: str, detail: str) -> None:
        """A seed's module could not be prepared: G1 fails with ``fetch_error``; the seed is culled next boundary."""
        seed = self._seeds[seed_id]
        self._event(
            "preparation_failed",
            TelemetryLevel.ERROR,
            f"seed {seed_id} in slot {seed.slot}: {detail}",
            slot=seed.slot,
            seed_id=seed_id,
        )
        self._cull(seed.slot, "G1_GRADIENT_HEALTH:fetch_error")

    def finish(self, draft: Draft) -> BoundaryPlan:
        """The plan of a draft: attach placeholders become attach ops for the seeds that were prepared."""
        ops: list[SeedOp] = []
        for op in draft.ops:
            if isinstance(op, SeedOp):
                ops.append(op)
                continue
            seed = self._seeds.get(op)
            if seed is None or seed.prepared is None:
                continue
            seed.attach_sent = True
            ops.append(
                SeedOp(
                    kind="attach",
                    slot=seed.slot,
                    seed_id=seed.seed_id,
                    stage=Stage.TRAINING,
                    handle=seed.prepared.handle,
                    blueprint_id=seed.blueprint_id,
                    artifact_sha256=seed.prepared.artifact_sha256,
                    blend=seed.blend,
                    reason="germinate",
                )
            )
        return BoundaryPlan(
            run_id=self._run_id,
            decided_on_step=draft.step,
            effect_step=draft.step + self._lag,
            ops=tuple(ops),
            command_results=tuple(draft.results),
        )

    # ------------------------------------------------------------ evidence

    def _apply_receipts(self, step: int) -> None:
        for receipt in self._receipts.take_through(step - 1):
            for seed_id, count in receipt.seed_parameters.items():
                if seed_id in self._seeds:
                    self._seeds[seed_id].parameter_count = count
            for outcome in receipt.outcomes:
                seed = self._seeds.get(outcome.seed_id) if outcome.seed_id is not None else None
                if seed is None:
                    continue
                if outcome.applied and outcome.kind in _STAGE_OPS and self._retries.pending(seed.seed_id):
                    self._took_effect(seed, outcome.kind, receipt)
                if outcome.kind in ("pause", "resume"):
                    seed.settle_pause(outcome.kind, outcome.applied, receipt.decided_on_step)
                if not outcome.applied:
                    self._op_failed(seed, outcome, receipt.applied_step)
                elif outcome.kind == "attach":
                    self._attached(seed)
                elif outcome.kind == "detach":
                    seed.detached = True
                    for name in [n for n, owner in self._owners.items() if owner == seed.seed_id]:
                        del self._owners[name]
                elif outcome.kind == "fossilize":
                    for name in [n for n, owner in self._owners.items() if owner == seed.seed_id]:
                        self._owners[name] = "host"

    def _attached(self, seed: SeedEntry) -> None:
        seed.attached = True
        prepared = seed.prepared
        assert prepared is not None  # an attach op is only written for a prepared seed
        for name in prepared.param_names:
            self._owners[f"{seed.slot}.seed.{name}"] = seed.seed_id
        self._lifecycle.record_attachment(
            seed.slot,
            AttachmentEvidence(
                seed_id=seed.seed_id,
                # An artifact's SHA-256 was verified before it was loaded; a module built from Karn's catalogue is
                # built by the blueprint's own builder from its spec: nothing to verify.
                artifact_verified=True,
                artifact_sha256=prepared.artifact_sha256,
                fallback=False,
                interface_matches=prepared.interface_ok,
                probe_seed_grad_norm=prepared.probe_grad_norm,
                # The preparation probe runs the seed alone; Tolaria's isolation probe reports leaks per packet.
                probe_host_grad_max_abs=0.0,
                isolation_breaker=seed.breaker.state,
                params_in_optimizer=True,
            ),
        )

    def _took_effect(self, seed: SeedEntry, kind: str, receipt: BoundaryApplied) -> None:
        """A stage op of a seed whose earlier one the trainer refused took effect: said with both steps, since the
        stage's event (SeedStageChanged) carries the step first planned; the report draws the change at this one."""
        planned_step, stage = self._retries.took_effect(seed.seed_id, receipt)
        what = f"{kind} ({stage.name.lower()})" if stage is not None and kind == "set_stage" else kind
        attributes: dict[str, str | int] = {"stage": stage.name} if stage is not None else {}
        self._event(
            "seed_op_retried",
            TelemetryLevel.INFO,
            f"{what} of seed {seed.seed_id} in slot {seed.slot}, planned for step {planned_step}, took effect"
            f" at step {receipt.applied_step}, after the trainer had refused it",
            slot=seed.slot,
            seed_id=seed.seed_id,
            op=kind,
            step=receipt.applied_step,
            planned_step=planned_step,
            **attributes,
        )

    def _op_failed(self, seed: SeedEntry, outcome: OpOutcome, step: int) -> None:
        kind, error = outcome.kind, outcome.error or "no reason given"
        if kind == "detach" and not seed.attached:
            # No receipt ever confirmed the attach (its plan was missed and no refusal came back): the trainer holds
            # no such seed, so nothing is left to detach. Counted as detached, or G5 saw a kernel attached at every
            # boundary and the slot stayed in RESETTING for the rest of the run.
            seed.detached = True
            self._event(
                "seed_op_failed",
                TelemetryLevel.WARNING,
                f"detach of seed {seed.seed_id} in slot {seed.slot} refused ({error}): its attach never took effect,"
                " so the slot holds nothing of it",
                slot=seed.slot,
                seed_id=seed.seed_id,
                op=kind,
                step=step,
            )
            return
        again = ""
        if kind in _STAGE_OPS:
            # The trainer refused a stage change (adaptation paused at L3 after a rollback): the lifecycle moved on and
            # the model did not (the seed blended in its lifecycle only, then was culled for an alpha that never
            # rose). Sent again, for the stage the seed is in by then, until it is applied; said once.
            if not self._retries.refused(seed.seed_id, step):
                return
            again = "; sent again until it takes effect"
        # Refused for the emergency level (L2: no new grafts; L3: adaptation paused, as after a rollback) is the
        # ladder doing its job, not an error; the seed it concerns was healthy, so no gate is named for its cull.
        refused = outcome.level_refused
        self._event(
            "seed_op_failed",
            TelemetryLevel.WARNING if refused else TelemetryLevel.ERROR,
            f"{kind} of seed {seed.seed_id} in slot {seed.slot} failed: {error}{again}",
            slot=seed.slot,
            seed_id=seed.seed_id,
            op=kind,
            step=step,
        )
        if kind == "attach":
            seed.attach_sent = False
            self._cull(seed.slot, "attach_refused:emergency_level" if refused else "G1_GRADIENT_HEALTH:attach_failed")

    def _apply_validation(self, step: int) -> None:
        for report in self._validation.take_through(step):
            for entry in report.seeds:
                seed = self._seeds.get(entry.seed_id)
                if seed is None:
                    continue
                for without, with_seed in zip(entry.loss_without_seed, entry.loss_with_seed, strict=True):
                    evidence = ValidationEvidence(
                        seed_id=entry.seed_id, step=report.step, loss_without_seed=without, loss_with_seed=with_seed
                    )
                    self._lifecycle.record_validation(seed.slot, evidence)

    def _report_resets(self) -> None:
        for rec in self._lifecycle.records():
            if rec.stage is not Stage.RESETTING:
                continue
            seed = self._seeds.get(rec.seed_id) if rec.seed_id is not None else None
            held = seed is not None and seed.attach_sent and not seed.detached
            self._lifecycle.record_reset(
                rec.slot,
                ResetEvidence(
                    kernel_attached=held,
                    parameters_held=held,
                    optimizer_state_held=held,
                    prefetch_pending=False,
                    cache_references=0,
                ),
            )

    def _apply_packet(self, packet: SystemStatePacket) -> None:
        for state in packet.seed_states:
            seed = self._seeds.get(state.seed_id) if state.seed_id is not None else None
            if seed is None:
                continue
            grad = state.gradient_norm
            if grad is None:
                grad = packet.seed_gradient_norms.get(seed.seed_id)
            new_violations = max(0, state.isolation_violations - seed.violations_seen)
            seed.violations_seen = max(seed.violations_seen, state.isolation_violations)
            seed.alpha, seed.alpha_steps = state.alpha, state.alpha_steps
            seed.gradient_norm, seed.learning_rate = grad, state.learning_rate
            self._lifecycle.record_step_evidence(
                seed.slot,
                StepEvidence(
                    seed_id=seed.seed_id,
                    step=packet.global_step,
                    seed_grad_norm=grad,
                    seed_loss=packet.training_loss,
                    alpha=state.alpha,
                    isolation_violations=new_violations,
                ),
            )
            for _ in range(new_violations):
                seed.breaker.record_failure("isolation_violation")
            stage = self._lifecycle.record(seed.slot).stage
            if seed.breaker.state is BreakerState.OPEN and not seed.isolation_culled and stage in SEED_STAGES:
                seed.isolation_culled = True
                self.isolation_culls += 1
                self._event(
                    "isolation_breaker",
                    TelemetryLevel.CRITICAL,
                    f"seed {seed.seed_id} in slot {seed.slot}: isolation breaker open after "
                    f"{seed.violations_seen} violations; culling",
                    slot=seed.slot,
                    seed_id=seed.seed_id,
                    violations=seed.violations_seen,
                )
                self._cull(seed.slot, "isolation_breaker")

    # ------------------------------------------------------------ transitions

    def _judged(self, report: BoundaryReport) -> None:
        for evaluation in report.evaluations:
            outcome = evaluation.outcome
            if outcome.verdict is GateVerdict.PENDING:
                continue
            result = gate_result(evaluation)
            seed = self._seeds.get(evaluation.seed_id) if evaluation.seed_id is not None else None
            if seed is not None:
                seed.last_gate = result
                if result.passed and result.gate.name == "G1_GRADIENT_HEALTH":
                    seed.breaker.record_success()
            self._sink.emit(result)
            if not result.passed:
                critical = result.reason.startswith("timeout") or result.reason in _CRITICAL_GATE_REASONS
                self._event(
                    "gate_failure",
                    TelemetryLevel.CRITICAL if critical else TelemetryLevel.WARNING,
                    f"{result.gate.name} failed for seed {result.seed_id} in slot {result.slot}: {result.reason}",
                    gate=result.gate.name,
                    reason=result.reason,
                    slot=result.slot,
                    seed_id=result.seed_id,
                )

    def _transition_ops(self, report: BoundaryReport, draft: Draft) -> set[str]:
        changed: set[str] = set()
        for entry in report.transitions:
            changed.add(entry.slot)
            self._event(
                "seed_transition",
                TelemetryLevel.INFO,
                f"slot {entry.slot}: {entry.from_stage.name} -> {entry.to_stage.name} ({entry.reason})",
                slot=entry.slot,
                seed_id=entry.seed_id or "",
                from_stage=entry.from_stage.name,
                to_stage=entry.to_stage.name,
                step=entry.step,
                epoch=entry.epoch,
                reason=entry.reason,
            )
            to, seed_id = entry.to_stage, entry.seed_id
            self._stage_changed(entry.slot, entry.from_stage, to, seed_id, entry.step, entry.epoch, entry.reason)
            if to is Stage.GERMINATED:
                born = self._pending.pop(entry.slot)
                self._seeds[born.seed_id] = born
                draft.preparations.append(born.request)
                draft.ops.append(born.seed_id)
                continue
            seed = self._seeds.get(seed_id) if seed_id is not None else None
            if seed is None:
                continue
            if to in SET_STAGE:
                blend = seed.blend if to is Stage.BLENDING else None
                draft.ops.append(
                    SeedOp(
                        kind="set_stage", slot=entry.slot, seed_id=seed_id, stage=to, blend=blend, reason=entry.reason
                    )
                )
            elif to is Stage.FOSSILIZED:
                draft.ops.append(SeedOp(kind="fossilize", slot=entry.slot, seed_id=seed_id, reason=entry.reason))
            elif to is Stage.CULLED:
                self._event(
                    "seed_culled",
                    TelemetryLevel.WARNING,
                    f"seed {seed_id} in slot {entry.slot} culled from {entry.from_stage.name}: {entry.reason}",
                    slot=entry.slot,
                    seed_id=seed.seed_id,
                    stage=entry.from_stage.name,
                    reason=entry.reason,
                )
                if seed.attach_sent:
                    draft.ops.append(SeedOp(kind="detach", slot=entry.slot, seed_id=seed_id, reason=entry.reason))
            elif to is Stage.DORMANT:
                del self._seeds[seed.seed_id]
        return changed

    # ------------------------------------------------------------ helpers

    def _stage_changed(
        self, slot: str, from_stage: Stage, to: Stage, seed_id: str | None, step: int, epoch: int, reason: str
    ) -> None:
        """The lifecycle event of one transition (schemas.nissa's contract), stamped with the step at which the plan
        of this boundary takes effect; a stage op the trainer refuses there takes effect later, which
        ``seed_op_retried`` says (see _took_effect). A slot's clean-up after a cull carries no seed id: the seed's
        outcome stays CULLED."""
        seed = self._pending.get(slot) if to is Stage.GERMINATED else self._seeds.get(seed_id or "")
        self._sink.emit(
            SeedStageChanged(
                slot=slot,
                from_stage=from_stage,
                to_stage=to,
                step=step + self._lag,
                seed_id=None if from_stage in _AFTER_LIFE else seed_id,
                blueprint_id=seed.blueprint_id if seed is not None else None,
                epoch=epoch,
                reason=reason,
            )
        )

    def _cull(self, slot: str, reason: str) -> None:
        try:
            self._lifecycle.cull(slot, reason)
        except IllegalTransition as err:
            self._desk.illegal(err)

    def _seed_state(self, rec: SlotRecord) -> SeedState:
        seed = self._seeds.get(rec.seed_id) if rec.seed_id is not None else None
        epoch = self._reported_epoch if self._reported_epoch is not None else 0
        evidence = self._lifecycle.evidence(rec.slot)
        return seed_state(rec, seed, evidence, depth=self._depth[rec.slot], step=self._last_step, epoch=epoch)

    def _event(self, name: str, level: TelemetryLevel, description: str, **attributes: str | int | float) -> None:
        emit_event(self._sink, name, level, description, **attributes)


def _applied_step(receipt: BoundaryApplied) -> int:
    return receipt.applied_step


def _report_step(report: SeedValidationReport) -> int:
    return report.step
