"""Kasmina verifies every command and answers a CommandResult: accepted at s + lag, or one enumerated reason."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec
import pytest

from esper.runtime.signing import sign_command
from schemas.control import BlendConfig
from schemas.domain_enums import BlendMode, CommandKind, CommandRejectReason, TelemetryLevel
from schemas.enums import SeedLifecycleStage as Stage
from schemas.telemetry import TelemetryEvent
from tests._kasmina_harness import KEY, KEY_ID, fast_settings, running_kasmina

if TYPE_CHECKING:
    from esper.runtime.clock import ManualClock
    from esper.runtime.events import RecordingSink
    from schemas.control import AdaptationCommand
    from tests._kasmina_harness import Harness

R = CommandRejectReason


def rejections(sink: RecordingSink) -> list[tuple[str, TelemetryLevel]]:
    return [
        (str(e.attributes["reason"]), e.level) for e in sink.of_type(TelemetryEvent) if e.name == "command_rejected"
    ]


async def reject_reason(h: Harness, step: int, command: AdaptationCommand) -> R | None:
    plan = await h.boundary(step, command)
    (result,) = plan.command_results
    assert result.command_id == command.command_id
    assert not plan.ops
    return result.reason


async def test_security_rejections_are_critical_and_counted(clock: ManualClock, sink: RecordingSink) -> None:
    async with running_kasmina(clock, sink) as h:
        forged = h.command(CommandKind.GERMINATE, slot="a", seed_id="s1", blueprint_id="BP001", key=b"x" * 32)
        assert await reject_reason(h, 1, forged) is R.BAD_SIGNATURE
        good = h.germinate(blueprint_id="BP001")
        assert (await h.boundary(2, good)).command_results[0].accepted
        assert await reject_reason(h, 3, good) is R.NONCE_REPLAYED
        old = h.command(CommandKind.CULL, slot="a", seed_id="s1", issued_at=clock.now())
        clock.advance(61.0)
        assert await reject_reason(h, 4, old) is R.STALE
        assert rejections(sink) == [
            ("bad_signature", TelemetryLevel.CRITICAL),
            ("nonce_replayed", TelemetryLevel.CRITICAL),
            ("stale", TelemetryLevel.CRITICAL),
        ]
        stats = await h.statistics()
        assert stats.rejected == {"bad_signature": 1, "nonce_replayed": 1, "stale": 1}
        assert stats.accepted == 1


async def test_a_command_signed_for_another_step_or_run_than_its_decision_is_refused(
    clock: ManualClock, sink: RecordingSink
) -> None:
    """Kasmina pairs each decision with its signed command: one signed for another step would act on a state it was
    not decided on, one of another run comes from another controller. Refused, CRITICAL and counted; the command's
    nonce is not spent, so it is accepted with the decision of its own step."""
    async with running_kasmina(clock, sink) as h:
        later = h.command(CommandKind.GERMINATE, slot="a", seed_id="s1", blueprint_id="BP001", decision_step=4)
        assert await reject_reason(h, 3, later) is R.DECISION_MISMATCH
        ours = h.command(CommandKind.GERMINATE, slot="a", seed_id="s2", blueprint_id="BP001", decision_step=5)
        foreign = sign_command(msgspec.structs.replace(ours, training_run_id="other"), KEY, KEY_ID)
        assert await reject_reason(h, 5, foreign) is R.DECISION_MISMATCH
        assert rejections(sink) == [("decision_mismatch", TelemetryLevel.CRITICAL)] * 2
        stats = await h.statistics()
        assert (stats.rejected, stats.accepted) == ({"decision_mismatch": 2}, 0)


async def test_a_command_refused_for_its_step_keeps_its_nonce(clock: ManualClock, sink: RecordingSink) -> None:
    async with running_kasmina(clock, sink) as h:
        command = h.command(CommandKind.GERMINATE, slot="a", seed_id="s1", blueprint_id="BP001", decision_step=4)
        assert await reject_reason(h, 3, command) is R.DECISION_MISMATCH
        plan = await h.boundary(4, command)
        assert plan.command_results[0].accepted


@pytest.mark.parametrize(
    ("slot", "blueprint_id", "params", "blend", "reason"),
    [
        ("z", "BP001", {}, None, R.UNKNOWN_SLOT),
        ("a", "BP999", {}, None, R.UNKNOWN_BLUEPRINT),
        ("a", "BP011", {}, None, R.QUARANTINED),
        ("a", "BP009", {}, None, R.TIER_NOT_ALLOWED),
        ("a", "BP002", {"rank": 99.0}, None, R.PARAMETER_OUT_OF_BOUNDS),
        ("a", "BP002", {"rank": 2.5}, None, R.PARAMETER_OUT_OF_BOUNDS),
        ("a", "BP001", {}, BlendConfig(mode=BlendMode.CHANNEL, channel_alpha=(1.0, 1.0)), R.INVALID_BLEND_CONFIG),
        ("a", "BP001", {}, BlendConfig(mode=BlendMode.CONVEX, channel_alpha=(1.0,) * 8), R.INVALID_BLEND_CONFIG),
    ],
    ids=["unknown_slot", "unknown_bp", "quarantined", "high_risk", "out_of_range", "not_integer", "channel", "vector"],
)
async def test_germinate_refusals_are_warnings_with_a_reason(
    clock: ManualClock,
    sink: RecordingSink,
    slot: str,
    blueprint_id: str,
    params: dict[str, float],
    blend: BlendConfig | None,
    reason: R,
) -> None:
    async with running_kasmina(clock, sink) as h:
        cmd = h.command(
            CommandKind.GERMINATE, slot=slot, seed_id="s1", blueprint_id=blueprint_id, params=params, blend=blend
        )
        assert await reject_reason(h, 1, cmd) is reason
        assert rejections(sink) == [(reason.value, TelemetryLevel.WARNING)]
        assert (await h.statistics()).rejected == {reason.value: 1}
        assert (await h.stage("a")) is Stage.DORMANT


async def test_channel_blend_with_one_entry_per_channel_is_accepted(clock: ManualClock, sink: RecordingSink) -> None:
    async with running_kasmina(clock, sink) as h:
        blend = BlendConfig(mode=BlendMode.CHANNEL, channel_alpha=(0.5,) * 8)
        cmd = h.command(CommandKind.GERMINATE, slot="a", seed_id="s1", blueprint_id="BP001", blend=blend)
        plan = await h.boundary(1, cmd)
        assert plan.ops[0].blend == blend


async def test_occupied_slot_and_seed_budget(clock: ManualClock, sink: RecordingSink) -> None:
    async with running_kasmina(clock, sink, settings=fast_settings(max_active_seeds=1)) as h:
        assert (await h.boundary(1, h.germinate(blueprint_id="BP001"))).command_results[0].accepted
        assert await reject_reason(h, 2, h.germinate(seed_id="s2", blueprint_id="BP001")) is R.SLOT_OCCUPIED
        assert (
            await reject_reason(h, 3, h.germinate(slot="b", seed_id="s2", blueprint_id="BP001"))
            is R.SEED_BUDGET_EXCEEDED
        )


async def test_seed_verbs_are_refused_outside_their_slot_or_stage(clock: ManualClock, sink: RecordingSink) -> None:
    async with running_kasmina(clock, sink) as h:
        await h.boundary(1, h.germinate(blueprint_id="BP001"))
        cross = h.command(CommandKind.CULL, slot="b", seed_id="s1")
        assert await reject_reason(h, 2, cross) is R.UNKNOWN_SEED
        ghost = h.command(CommandKind.CULL, slot="a", seed_id="nobody")
        assert await reject_reason(h, 3, ghost) is R.UNKNOWN_SEED
        early = h.command(CommandKind.FOSSILIZE, slot="a", seed_id="s1")
        assert await reject_reason(h, 4, early) is R.ILLEGAL_TRANSITION
        illegal = [e for e in sink.of_type(TelemetryEvent) if e.name == "illegal_transition"]
        assert [e.level for e in illegal] == [TelemetryLevel.ERROR]
        assert illegal[0].attributes["to_stage"] == "FOSSILIZED"
        resume = h.command(CommandKind.RESUME, slot="a", seed_id="s1")
        assert await reject_reason(h, 5, resume) is R.ILLEGAL_TRANSITION
        assert (await h.statistics()).illegal_transitions == 1


async def test_pause_and_resume_become_ops(clock: ManualClock, sink: RecordingSink) -> None:
    async with running_kasmina(clock, sink) as h:
        await h.boundary(1, h.germinate(blueprint_id="BP001"))
        paused = await h.boundary(2, h.command(CommandKind.PAUSE, slot="a", seed_id="s1"))
        assert [(op.kind, op.slot, op.seed_id) for op in paused.ops] == [("pause", "a", "s1")]
        assert (await h.states())["a"].paused
        resumed = await h.boundary(3, h.command(CommandKind.RESUME, seed_id="s1"))
        assert [op.kind for op in resumed.ops] == ["resume"]


async def test_a_paused_seed_changes_no_stage_until_the_boundary_after_its_resume(
    clock: ManualClock, sink: RecordingSink
) -> None:
    """The trainer refuses a stage change for a paused seed; the lifecycle must not record one it never took (a G1
    pass planned behind a pause was shown as a stage the model never reached)."""
    async with running_kasmina(clock, sink) as h:
        await h.apply(await h.boundary(1, h.germinate(blueprint_id="BP001")))  # attached at step 3: G1's evidence
        await h.boundary(2, h.command(CommandKind.PAUSE, slot="a", seed_id="s1"))
        for step in (4, 5):  # G1 would pass here
            await h.boundary(step)
            assert (await h.stage("a")) is Stage.GERMINATED
        resumed = await h.boundary(6, h.command(CommandKind.RESUME, seed_id="s1"))
        assert [op.kind for op in resumed.ops] == ["resume"]
        assert (await h.stage("a")) is Stage.GERMINATED  # the resume's own plan follows this boundary's transitions
        await h.boundary(7)
        assert (await h.stage("a")) is Stage.TRAINING


async def test_optimizer_command_becomes_a_scale_lr_op(clock: ManualClock, sink: RecordingSink) -> None:
    async with running_kasmina(clock, sink, lag=4) as h:
        plan = await h.boundary(3, h.command(CommandKind.OPTIMIZER, lr_delta=-0.5))
        (op,) = plan.ops
        assert op.kind == "scale_lr"
        assert op.lr_scale == pytest.approx(0.5)
        assert plan.command_results[0].accepted
        assert plan.command_results[0].applied_step == 7


async def test_cancel_culls_a_live_seed(clock: ManualClock, sink: RecordingSink) -> None:
    async with running_kasmina(clock, sink) as h:
        await h.boundary(1, h.germinate(blueprint_id="BP001"))
        plan = await h.boundary(2, h.command(CommandKind.CANCEL, slot="a", seed_id="s1"))
        assert [op.kind for op in plan.ops] == ["detach"]
        assert (await h.stage("a")) is Stage.CULLED


async def test_an_optimizer_command_outside_its_bounds_is_refused(clock: ManualClock, sink: RecordingSink) -> None:
    """The bounds of lr_delta were checked only when a command was decoded, and Tamiyo's are built in-process: a
    delta of 50 multiplied the learning rate by 51; a NaN one was accepted, then refused by the trainer unsaid."""
    async with running_kasmina(clock, sink) as h:
        for step, delta in ((1, 50.0), (2, float("nan")), (3, -0.95)):
            tweak = h.command(CommandKind.OPTIMIZER, lr_delta=delta, decision_step=step)
            assert await reject_reason(h, step, tweak) is R.PARAMETER_OUT_OF_BOUNDS
        plan = await h.boundary(4, h.command(CommandKind.OPTIMIZER, lr_delta=-0.5, decision_step=4))
        assert plan.command_results[0].accepted
        assert [(op.kind, op.lr_scale) for op in plan.ops] == [("scale_lr", 0.5)]
