"""Kasmina drives a seed through its lifecycle from packets, decisions and receipts, one transition per boundary."""

from __future__ import annotations

from itertools import pairwise
from typing import TYPE_CHECKING

import torch

from schemas.domain_enums import CommandKind, CommandRejectReason, TelemetryLevel
from schemas.enums import SeedLifecycleStage as Stage
from schemas.kasmina import SeedValidation, SeedValidationReport
from schemas.nissa import SeedStageChanged
from schemas.runtime import BreakerTransition
from schemas.telemetry import TelemetryEvent
from tests._kasmina_harness import RUN, Harness, running_kasmina, seed_report

if TYPE_CHECKING:
    from esper.runtime.clock import ManualClock
    from esper.runtime.events import RecordingSink
    from schemas.boundary import BoundaryPlan


def transitions(sink: RecordingSink, seed_id: str) -> list[tuple[int, str]]:
    return [
        (int(e.attributes["step"]), str(e.attributes["to_stage"]))
        for e in sink.of_type(TelemetryEvent)
        if e.name == "seed_transition" and e.attributes["seed_id"] == seed_id
    ]


async def attach_seed(h: Harness, step: int = 1, slot: str = "a", seed_id: str = "s1") -> BoundaryPlan:
    """Germinate at ``step``, apply the attach, and run boundaries until the seed is TRAINING."""
    plan = await h.boundary(step, h.germinate(slot=slot, seed_id=seed_id, rank=2))
    await h.apply(plan)
    s = step + 1
    while await h.stage(slot) is not Stage.TRAINING:
        await h.boundary(s)
        s += 1
        assert s < step + 10, "G1 never passed"
    return plan


async def test_germinate_plans_an_attach_at_lag_with_a_zero_output_module(
    clock: ManualClock, sink: RecordingSink
) -> None:
    async with running_kasmina(clock, sink, lag=3) as h:
        plan = await h.boundary(5, h.germinate(rank=2))
        assert (plan.run_id, plan.decided_on_step, plan.effect_step) == (RUN, 5, 8)
        (op,) = plan.ops
        assert (op.kind, op.slot, op.seed_id, op.stage, op.blueprint_id) == (
            "attach",
            "a",
            "s1",
            Stage.TRAINING,
            "BP002",
        )
        assert op.handle is not None
        (result,) = plan.command_results
        assert result.accepted
        assert result.applied_step == 8
        module = h.handoff.take(op.handle)
        x = torch.randn(3, 8, 11)
        assert torch.equal(module(x), torch.zeros_like(x))
        assert any(p.requires_grad for p in module.parameters())
        assert (await h.stage("a")) is Stage.GERMINATED


async def test_seed_goes_all_the_way_to_fossilized_one_transition_per_boundary(
    clock: ManualClock, sink: RecordingSink
) -> None:
    async with running_kasmina(clock, sink) as h:
        await attach_seed(h)
        ops: list[tuple[str, Stage | None]] = []
        step = 10
        fossilize_sent = False
        while (stage := await h.stage("a")) is not Stage.FOSSILIZED:
            assert step < 80, f"stuck in {stage.name}"
            alpha = 1.0 if stage in (Stage.BLENDING, Stage.SHADOWING, Stage.PROBATIONARY) else 0.0
            if stage in (Stage.SHADOWING, Stage.PROBATIONARY):
                batch = SeedValidation(seed_id="s1", loss_without_seed=(1.0, 1.1), loss_with_seed=(0.5, 0.6))
                await h.ref.tell(SeedValidationReport(run_id=RUN, step=step, seeds=(batch,)))
            command = None
            if stage is Stage.PROBATIONARY and not fossilize_sent:
                command = h.command(CommandKind.FOSSILIZE, slot="a", seed_id="s1")
                fossilize_sent = True
            plan = await h.boundary(step, command, seeds=(seed_report(alpha=alpha),))
            ops.extend((op.kind, op.stage) for op in plan.ops)
            await h.apply(plan)
            step += 1
        assert ops == [
            ("set_stage", Stage.BLENDING),
            ("set_stage", Stage.SHADOWING),
            ("set_stage", Stage.PROBATIONARY),
            ("fossilize", None),
        ]
        seen = transitions(sink, "s1")
        assert [to for _, to in seen] == [
            "GERMINATED",
            "TRAINING",
            "BLENDING",
            "SHADOWING",
            "PROBATIONARY",
            "FOSSILIZED",
        ]
        steps = [s for s, _ in seen]
        assert steps == sorted(set(steps)), "two transitions of one seed at one boundary"
        blend_ops = [e for e in sink.events if type(e).__name__ == "GateResult"]
        assert blend_ops, "gate results are reported"
        assert (await h.states())["a"].stage is Stage.FOSSILIZED


async def test_cull_detaches_and_the_slot_is_embargoed_until_the_epochs_pass(
    clock: ManualClock, sink: RecordingSink
) -> None:
    async with running_kasmina(clock, sink) as h:
        await attach_seed(h)
        plan = await h.boundary(10, h.command(CommandKind.CULL, slot="a", seed_id="s1"), epoch=0)
        assert [(op.kind, op.slot, op.seed_id) for op in plan.ops] == [("detach", "a", "s1")]
        assert plan.command_results[0].accepted
        await h.apply(plan)
        state = (await h.states())["a"]
        assert state.stage is Stage.CULLED
        assert state.embargo_until_epoch == 2
        refused = await h.boundary(11, h.germinate(seed_id="s2", rank=2), epoch=1)
        assert refused.command_results[0].reason is CommandRejectReason.EMBARGOED
        assert not refused.ops
        step = 12
        while await h.stage("a") is not Stage.DORMANT:
            await h.boundary(step, epoch=2)
            step += 1
            assert step < 30, "slot never came back to DORMANT"
        accepted = await h.boundary(step, h.germinate(seed_id="s2", rank=2), epoch=2)
        assert accepted.command_results[0].accepted
        assert [op.kind for op in accepted.ops] == ["attach"]
        assert (await h.statistics()).rejected == {"embargoed": 1}


async def test_isolation_violations_open_the_breaker_and_cull_with_a_critical_event(
    clock: ManualClock, sink: RecordingSink
) -> None:
    async with running_kasmina(clock, sink) as h:
        await attach_seed(h)
        # No gradient norms: G2 keeps waiting, so the only way out of TRAINING here is the breaker.
        plans = [await h.boundary(10 + i, seeds=(seed_report(violations=i + 1, grad=None),)) for i in range(3)]
        assert [op.kind for p in plans for op in p.ops] == ["detach"]
        assert plans[2].ops[0].reason == "isolation_breaker"
        events = [e for e in sink.of_type(TelemetryEvent) if e.name == "isolation_breaker"]
        assert len(events) == 1
        assert events[0].level is TelemetryLevel.CRITICAL
        opened = [t for t in sink.of_type(BreakerTransition) if t.breaker == "kasmina.isolation.s1"]
        assert opened, "the breaker's own transition is reported"
        assert (await h.stage("a")) is Stage.CULLED
        assert (await h.statistics()).isolation_culls == 1


async def test_seed_state_reported_for_every_slot_each_epoch_and_on_transitions(
    clock: ManualClock, sink: RecordingSink
) -> None:
    from schemas.state import SeedState

    async with running_kasmina(clock, sink) as h:
        await h.boundary(1, epoch=0)
        await h.boundary(2, epoch=0)
        first = [s.slot for s in sink.of_type(SeedState)]
        assert first == ["a", "b"], "one report per slot at the first epoch, none at the quiet boundary after"
        await h.boundary(3, h.germinate(rank=2), epoch=0)
        assert [s.slot for s in sink.of_type(SeedState)][2:] == ["a"]
        await h.boundary(4, epoch=1)
        latest = sink.of_type(SeedState)[3:]
        assert [s.slot for s in latest] == ["a", "b"]
        assert latest[0].seed_id == "s1"
        assert latest[0].stage is Stage.GERMINATED


async def test_a_stage_change_the_trainer_refused_is_sent_again_until_applied(
    clock: ManualClock, sink: RecordingSink
) -> None:
    """At L3 (after a rollback) the trainer refuses stage changes: the lifecycle said BLENDING while the model kept
    TRAINING, and the seed was culled 500 steps later for an alpha that never rose. The op goes again, for the stage
    the seed is in, one at a time, until a receipt says it took; the refusal is said once."""
    async with running_kasmina(clock, sink) as h:
        await attach_seed(h)
        step = 10
        while True:  # to the boundary that plans BLENDING
            plan = await h.boundary(step, seeds=(seed_report(),))
            step += 1
            if any(op.kind == "set_stage" for op in plan.ops):
                break
            await h.apply(plan)
            assert step < 40, "never reached blending"
        assert [(op.kind, op.stage) for op in plan.ops] == [("set_stage", Stage.BLENDING)]
        await h.apply(plan, applied=False, error="adaptation paused (emergency level L3 or above)")
        retried: list[int] = []
        for _ in range(9):  # refused again while the trainer stays at L3
            plan = await h.boundary(step, seeds=(seed_report(),))
            ops = [(op.kind, op.stage, op.reason) for op in plan.ops]
            assert ops in ([], [("set_stage", Stage.BLENDING, "retry")])
            if ops:
                retried.append(step)
            await h.apply(plan, applied=False, error="adaptation paused (emergency level L3 or above)")
            step += 1
        # One at a time: the next goes once the last one's receipt (at its effect step, lag 2) has been read.
        assert len(retried) == 3
        assert [later - earlier for earlier, later in pairwise(retried)] == [3, 3]
        applied_at = None
        while applied_at is None or step <= applied_at + 3:  # the level fell: the next retry takes
            plan = await h.boundary(step, seeds=(seed_report(),))
            if plan.ops:
                assert applied_at is None, "sent again after it was applied"
                applied_at = step
            await h.apply(plan)
            step += 1
        (refusal,) = [e for e in sink.of_type(TelemetryEvent) if e.name == "seed_op_failed"]
        (blending,) = [e for e in sink.of_type(SeedStageChanged) if e.to_stage is Stage.BLENDING]
        # The refusal names the step its plan was for (the console's line stands there), and that it is sent again.
        assert refusal.attributes["step"] == blending.step
        assert refusal.description.endswith("; sent again until it takes effect")
        # When it finally took is said with both steps (the stage's event carries the step first planned), and the
        # stage it set: the report draws the change at the step it took effect.
        (took,) = [e for e in sink.of_type(TelemetryEvent) if e.name == "seed_op_retried"]
        assert took.attributes["step"] == applied_at + 2
        assert (took.attributes["planned_step"], took.attributes["stage"]) == (blending.step, "BLENDING")
        assert took.description == (
            f"set_stage (blending) of seed s1 in slot a, planned for step {blending.step}, took effect at step"
            f" {applied_at + 2}, after the trainer had refused it"
        )


async def test_a_germination_whose_attach_the_emergency_level_refuses_is_withdrawn_and_its_slot_is_free_again(
    clock: ManualClock, sink: RecordingSink
) -> None:
    """After a rollback (L3) the trainer refuses the germination decided at the restored epoch end: Kasmina said so in
    a seed_op_failed warning and culled the healthy seed (attach_refused:emergency_level), which counted among the
    run's culled seeds and embargoed its slot. The germination is withdrawn now: the slot is DORMANT again at the
    next boundary, at once free for a new germination."""
    async with running_kasmina(clock, sink) as h:
        plan = await h.boundary(1, h.germinate(rank=2))
        await h.apply(plan, applied=False, error="adaptation paused (emergency level L3 or above)", level_refused=True)
        await h.boundary(3)  # the receipt of step 3 is read at the first boundary after it
        assert await h.stage("a") is Stage.GERMINATED
        await h.boundary(4)
        assert await h.stage("a") is Stage.DORMANT
        assert (await h.states())["a"].seed_id is None
        assert not [e for e in sink.of_type(TelemetryEvent) if e.name in ("seed_op_failed", "seed_culled")]
        (withdrawn,) = [e for e in sink.of_type(TelemetryEvent) if e.name == "seed_germination_withdrawn"]
        assert (withdrawn.level, withdrawn.attributes["step"]) == (TelemetryLevel.INFO, plan.effect_step)
        assert withdrawn.description == (
            "attach of seed s1 in slot a refused (adaptation paused (emergency level L3 or above)): germination"
            " withdrawn, the slot is free again"
        )
        changes = [(e.from_stage, e.to_stage, e.seed_id, e.reason) for e in sink.of_type(SeedStageChanged)]
        assert changes == [
            (Stage.DORMANT, Stage.GERMINATED, "s1", "germinate"),
            (Stage.GERMINATED, Stage.DORMANT, "s1", "attach_refused:emergency_level"),
        ]
        # Not embargoed: the controller's next germination into the slot is planned at once.
        again = await h.boundary(5, h.germinate(seed_id="s2", rank=2))
        assert [(op.kind, op.seed_id) for op in again.ops] == [("attach", "s2")]
        assert [r.accepted for r in again.command_results] == [True]


async def test_an_attach_that_fails_otherwise_is_an_error_and_culls_the_seed_under_g1(
    clock: ManualClock, sink: RecordingSink
) -> None:
    async with running_kasmina(clock, sink) as h:
        plan = await h.boundary(1, h.germinate(rank=2))
        await h.apply(plan, applied=False, error="attach: slot is occupied")
        await h.boundary(3)
        await h.boundary(4)
        [failed] = [e for e in sink.of_type(TelemetryEvent) if e.name == "seed_op_failed"]
        assert failed.level is TelemetryLevel.ERROR
        culls = [e.reason for e in sink.of_type(SeedStageChanged) if e.to_stage is Stage.CULLED]
        assert culls == ["G1_GRADIENT_HEALTH:attach_failed"]
