"""The step loop's exchange with the planner: the plans due at a boundary applied, state packets sent."""

from __future__ import annotations

from typing import TYPE_CHECKING, final

import structlog

from actors.tolaria.loop_watch import silent_detail
from schemas.boundary import BoundaryApplied, BoundaryPlan, OpOutcome
from schemas.enums import EmergencyLevel

if TYPE_CHECKING:
    from torch import nn

    from actors.tolaria.loop_state import LoopState
    from actors.tolaria.telemetry import IntervalStats
    from schemas.boundary import SeedOp

_log = structlog.get_logger("actors.tolaria")


@final
class PlanExchange:
    """Applies the plans due at a boundary and sends state packets, each with its plan expected.

    ``_s``: the loop's shared state (loop_state.py)."""

    def __init__(self, state: LoopState) -> None:
        self._s = state

    def apply_due(self, *, stoppable: bool = True) -> None:
        pos = self._s.pos
        # A plan resent after a restore waits for the planner's journal replay, which grows with the run: it gets as
        # long as a full restore may take.
        config = self._s.config
        watch = self._s.watch
        due = self._s.inbox.take_due(
            pos.global_step,
            config.decision_deadline_ms / 1e3,
            grace_s=config.rollback_full_deadline_s,
            stoppable=stoppable,
            hold=watch.hold,
        )
        if due.stall_s > 0:
            _log.info("boundary_stall", step=pos.global_step, stall_ms=round(due.stall_s * 1e3, 3))
        for plan in due.plans:
            self._apply_plan(plan, due.stall_s)
        if due.missed:
            self._s.missed_this_epoch += len(due.missed)
            fields: dict[str, object] = {}
            silent_s = watch.silent_s()
            if silent_s >= config.decision_deadline_ms / 2e3:
                # The planner never had a turn: the loop's own caller held it (the run's decisions change all the same).
                self._s.loop_silent_s = max(self._s.loop_silent_s, silent_s)
                fields["detail"] = silent_detail(silent_s)
            _log.warning("plan_missed", step=pos.global_step, decided_on_steps=list(due.missed), **fields)

    def _apply_plan(self, plan: BoundaryPlan, stall_s: float) -> None:
        applier = self._s.applier
        assert applier is not None
        step = self._s.pos.global_step
        level = self._s.policy.level
        outcomes: list[OpOutcome] = []
        for op in plan.ops:
            if level >= EmergencyLevel.L3_CONSERVATIVE and op.kind != "detach":
                outcome = OpOutcome(
                    kind=op.kind,
                    slot=op.slot,
                    seed_id=op.seed_id,
                    applied=False,
                    error="adaptation paused (emergency level L3 or above)",
                    level_refused=True,
                )
            else:
                outcome = applier.apply(
                    op, step=step, take_module=self._take_module, conservative=level >= EmergencyLevel.L2_ELEVATED
                )
            if not outcome.applied and op.handle is not None and self._s.handoff is not None:
                # Nobody takes a refused attach's module later (a plan sent again prepares its own): left in the
                # store, each refusal held one for the rest of the run, until the full store refused a germination.
                self._s.handoff.discard(op.handle)
            outcomes.append(outcome)
        if plan.ops:
            self._s.pool_reserved = False
            self._s.planned_capture.forget()
        receipt = BoundaryApplied(
            run_id=plan.run_id,
            decided_on_step=plan.decided_on_step,
            effect_step=plan.effect_step,
            applied_step=step,
            outcomes=tuple(outcomes),
            stall_ms=stall_s * 1e3,
            seed_parameters=self._s.trainee.seed_parameters(),
        )
        self._s.outbox.applied(receipt)

    def _take_module(self, op: SeedOp) -> nn.Module:
        if self._s.handoff is None or op.handle is None:
            raise ValueError(f"no prepared module for seed {op.seed_id!r} (handle {op.handle!r})")
        return self._s.handoff.take(op.handle)

    def send_packet(
        self,
        stats: IntervalStats,
        *,
        epoch_progress: float,
        epoch: int | None = None,
        validation: tuple[float, float] | None = None,
        loss_delta: float | None = None,
        epoch_means: tuple[float, float] | None = None,
        epoch_stats: IntervalStats | None = None,
        probe: bool = True,
        expect: bool = True,
    ) -> None:
        pos = self._s.pos
        packets = self._s.packets
        assert packets is not None
        trainee = self._s.trainee
        if probe:
            self._s.isolation.maybe_probe(trainee, pos.global_step, self._s.outbox.event)
        packet = packets.build(
            stats,
            run_id=self._s.options.run_id,
            epoch=pos.epoch if epoch is None else epoch,
            epochs_total=self._s.config.epochs,
            global_step=pos.global_step,
            epoch_progress=epoch_progress,
            hook_latency_ms=self._s.hook_ms,
            hook_capture_ms=self._s.capture_ms,
            emergency_level=self._s.policy.level,
            validation=validation,
            loss_delta=loss_delta,
            epoch_means=epoch_means,
            epoch_stats=epoch_stats,
            # The rate the interval's last step used (the step of index global_step - 1): an epoch's row shows the
            # rate its epoch ended with, not the next epoch's first.
            lr_factor=self._s.stepper.lr_factor(max(0, pos.global_step - 1)),
        )
        if expect:
            self.expect_plan()
        self._s.outbox.packet(packet)

    def expect_plan(self) -> None:
        # Registered before the packet is sent, so even an instant plan finds its expectation.
        if self._s.options.expects_plans:
            step = self._s.pos.global_step
            self._s.inbox.expect(step, step + self._s.config.command_lag_steps)
