"""Tolaria's reports brought to a Kasmina boundary: receipts, validation reports, slot resets, each packet's evidence.

Receipts (BoundaryApplied) and validation reports are kept until the first boundary after the step they describe
(receipts: applied_step < packet step; validation: report step <= packet step), never applied when they happen to
arrive, so thread timing never moves a transition. TrainerReports shares the planner's seed bookkeeping (the
lifecycle, the seed and ownership maps and the stage retries: the same objects) and runs on the Kasmina actor's loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, final

from actors.kasmina.commands import emit_event
from actors.kasmina.evidence import AttachmentEvidence, ResetEvidence, StepEvidence, ValidationEvidence
from actors.kasmina.lifecycle_table import SEED_STAGES
from actors.kasmina.step_queue import StepQueue
from schemas.domain_enums import TelemetryLevel
from schemas.enums import BreakerState
from schemas.enums import SeedLifecycleStage as Stage

if TYPE_CHECKING:
    from collections.abc import Callable

    from actors.kasmina.lifecycle import SeedLifecycle
    from actors.kasmina.seeds import SeedEntry
    from actors.kasmina.stage_retries import StageRetries
    from esper.runtime.events import EventSink
    from schemas.boundary import BoundaryApplied, OpOutcome
    from schemas.kasmina import SeedValidationReport
    from schemas.state import SystemStatePacket

_STAGE_OPS = frozenset({"set_stage", "fossilize"})

ATTACH_REFUSED_FOR_LEVEL = "attach_refused:emergency_level"
"""The reason of the GERMINATED -> DORMANT transition of a germination whose attach the emergency level refused."""


@final
class TrainerReports:
    """Applies receipts, validation reports and packets to the shared seed bookkeeping; counts isolation culls."""

    def __init__(
        self,
        *,
        lifecycle: SeedLifecycle,
        seeds: dict[str, SeedEntry],
        owners: dict[str, str],
        retries: StageRetries,
        sink: EventSink,
        cull: Callable[[str, str], None],
    ) -> None:
        """``cull`` queues a slot's cull for the next boundary (an illegal one is counted by the caller)."""
        self._lifecycle = lifecycle
        self._seeds = seeds
        self._owners = owners
        self._retries = retries
        self._sink = sink
        self._cull = cull
        self._receipts: StepQueue[BoundaryApplied] = StepQueue(_applied_step)
        self._validation: StepQueue[SeedValidationReport] = StepQueue(_report_step)
        self.isolation_culls = 0

    def record_receipt(self, receipt: BoundaryApplied) -> None:
        """Keep Tolaria's receipt until the first boundary after its applied step."""
        self._receipts.append(receipt)

    def record_validation(self, report: SeedValidationReport) -> None:
        """Keep a validation report until the boundary of its step."""
        self._validation.append(report)

    def apply_receipts(self, step: int) -> None:
        """Apply the receipts of plans applied before ``step``: op outcomes, parameter counts and ownership."""
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
        if kind == "attach" and outcome.level_refused:
            self._attach_refused_for_level(seed, error, step)
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
        # ladder doing its job, not an error.
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
            self._cull(seed.slot, "G1_GRADIENT_HEALTH:attach_failed")

    def _attach_refused_for_level(self, seed: SeedEntry, error: str, step: int) -> None:
        """The trainer refused a germination's attach for the emergency level (L2: no new grafts; L3: adaptation
        paused, as when a rollback restores the epoch end that decided it). Nothing went wrong with the seed and its
        module never reached the model: the germination is withdrawn and the slot is DORMANT again at the next
        boundary, free for the controller to germinate into once the level allows (a cull counted a healthy seed
        among the run's culled ones and embargoed its slot)."""
        seed.attach_sent = False
        if not self._lifecycle.withdraw(seed.slot, seed.seed_id, ATTACH_REFUSED_FOR_LEVEL):
            return  # culled meanwhile (a CULL command): its cull stands
        self._event(
            "seed_germination_withdrawn",
            TelemetryLevel.INFO,
            f"attach of seed {seed.seed_id} in slot {seed.slot} refused ({error}): germination withdrawn, the slot is"
            " free again",
            slot=seed.slot,
            seed_id=seed.seed_id,
            op="attach",
            step=step,
        )

    def apply_validation(self, step: int) -> None:
        """Record the counterfactual losses of the validation reports of steps up to ``step``."""
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

    def report_resets(self) -> None:
        """Tell the lifecycle what each RESETTING slot still holds of its seed, for G5."""
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

    def apply_packet(self, packet: SystemStatePacket) -> None:
        """Record each live seed's step evidence from ``packet``; an isolation breaker it opens culls the seed."""
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

    def _event(self, name: str, level: TelemetryLevel, description: str, **attributes: str | int | float) -> None:
        emit_event(self._sink, name, level, description, **attributes)


def _applied_step(receipt: BoundaryApplied) -> int:
    return receipt.applied_step


def _report_step(report: SeedValidationReport) -> int:
    return report.step
