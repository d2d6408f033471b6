"""A restarted Kasmina replays its journal and goes on from where it stood; Tolaria's TrainingRestored cuts it back."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import msgspec

from actors.kasmina.journal import JOURNAL_FILENAME, JournalReceipt, read_journal
from schemas.boundary import TrainingRestored
from schemas.domain_enums import CommandKind, CommandRejectReason
from schemas.enums import SeedLifecycleStage as Stage
from schemas.nissa import LifecycleRestored
from schemas.telemetry import TelemetryEvent
from tests._kasmina_harness import RUN, Harness, running_kasmina, seed_report

if TYPE_CHECKING:
    from pathlib import Path

    from esper.runtime.clock import ManualClock
    from esper.runtime.events import RecordingSink
    from schemas.state import SeedState, SystemStatePacket


def rebuilds(sink: RecordingSink) -> list[str]:
    return [e.description for e in sink.of_type(TelemetryEvent) if e.name == "kasmina_rebuilt"]


async def grow_one_seed(h: Harness) -> int:
    """Germinate into slot a at step 1, apply it, and plan boundaries until the seed trains; the next free step."""
    await h.apply(await h.boundary(1, h.germinate(rank=2)))
    step = 2
    while await h.stage("a") is not Stage.TRAINING:
        await h.boundary(step, seeds=(seed_report(),))
        step += 1
        assert step < 12, "G1 never passed"
    return step


async def crash(h: Harness, step: int) -> None:
    """A packet of another run: the actor raises; once its supervisor sleeps out the restart backoff on the test's
    clock, a fresh incarnation takes the messages queued behind the crash."""
    sleeping = h.clock.sleepers
    await h.ref.tell(msgspec.structs.replace(h.packet(step), run_id="another-run"))
    async with asyncio.timeout(5):
        while h.clock.sleepers == sleeping:  # noqa: ASYNC110  # the loop only yields; the condition is a fact
            await asyncio.sleep(0)
    h.clock.advance(5.0)


async def test_a_restarted_kasmina_replays_its_journal_and_plans_on(clock: ManualClock, sink: RecordingSink) -> None:
    async with running_kasmina(clock, sink) as h:
        step = await grow_one_seed(h)
        before: dict[str, SeedState] = await h.states()
        await crash(h, step)
        after = await h.states()  # answered by the fresh incarnation
        assert after == before
        assert len(rebuilds(sink)) == 1
        # The lifecycle goes on from where it stood: the next boundary is planned, not refused as stale.
        plan = await h.boundary(step, seeds=(seed_report(),))
        assert plan.decided_on_step == step
        stats = await h.statistics()
        assert (stats.boundaries, stats.plans_sent) == (step, 1), "every boundary planned, one by this incarnation"
        assert len(rebuilds(sink)) == 1


async def test_a_restart_then_a_training_restored_replays_the_journal_cut_at_the_step(
    clock: ManualClock, sink: RecordingSink
) -> None:
    async with running_kasmina(clock, sink, lag=2) as h:
        step = await grow_one_seed(h)
        await h.boundary(step, seeds=(seed_report(),))
        await crash(h, step + 1)
        # Tolaria restarted too and continues from the state after step 1: the attach (decided on 1, effect 3) is
        # in flight again, so it is sent again, and the seed is back to GERMINATED.
        await h.ref.tell(TrainingRestored(run_id=RUN, step=1, tier="fast"))
        again = await h.next_plan()
        assert (again.decided_on_step, again.effect_step, [op.kind for op in again.ops]) == (1, 3, ["attach"])
        assert await h.stage("a") is Stage.GERMINATED
        # Two replays: the whole journal at the restart (building the seeds into the ready cache before the
        # trainer needs them), then the cut one.
        whole, cut = rebuilds(sink)
        assert f"up to step {step};" in whole
        assert "0 plans sent again" in whole
        assert "up to step 1;" in cut
        assert "1 plans sent again" in cut
        # Observers (the summary, Nissa, the console, the report) hear which transitions the restore undid.
        assert sink.of_type(LifecycleRestored) == [LifecycleRestored(run_id=RUN, step=1, lag_steps=2)]


async def test_a_plan_due_at_the_restored_step_is_resent_unless_a_receipt_says_it_was_applied(
    clock: ManualClock, sink: RecordingSink
) -> None:
    """A stop can come while the trainer waits at a boundary for that boundary's plan: restored there, it expects
    the plan again, so a replay must resend a plan whose effect step is the cut, unless its receipt is journaled."""
    async with running_kasmina(clock, sink, lag=2) as h:
        waiting = await h.boundary(1, h.germinate(rank=2))  # takes effect at 3; no receipt: never applied
        await h.ref.tell(TrainingRestored(run_id=RUN, step=3, tier="full"))
        again = await h.next_plan()
        assert (again.decided_on_step, again.effect_step, [op.kind for op in again.ops]) == (1, 3, ["attach"])
        assert waiting.effect_step == 3
        await h.apply(again)  # applied at 3, its receipt journaled
        await h.boundary(3, seeds=(seed_report(),))  # takes effect at 5
        await h.ref.tell(TrainingRestored(run_id=RUN, step=3, tier="fast"))
        resent = await h.next_plan()
        assert (resent.decided_on_step, resent.effect_step) == (3, 5), "only the plan still in flight"
        assert rebuilds(sink)[-1].endswith("1 plans sent again")
        assert h.plans.empty()


async def test_a_lag_0_plan_applied_after_the_restored_states_capture_is_resent_and_its_receipt_dropped(
    clock: ManualClock, sink: RecordingSink, tmp_path: Path
) -> None:
    """With lag 0 an epoch end's state is captured before the plan decided on its own packet is applied at that very
    step: a receipt applied at the restored step is then not the restored state's. The restore names that plan
    (TrainingRestored.unapplied), so it is sent again (a kill -9 resume and a rollback to the epoch end missed it and
    went into an emergency) and the journal keeps only the receipt of the application that stands."""
    async with running_kasmina(clock, sink, lag=0, journal_dir=tmp_path) as h:
        plan = await h.boundary(1, h.germinate(rank=2))
        assert (plan.decided_on_step, plan.effect_step) == (1, 1)
        await h.apply(plan)  # applied at 1, after the epoch end's capture
        await h.ref.tell(TrainingRestored(run_id=RUN, step=1, tier="fast", unapplied=(1,)))
        again = await h.next_plan()
        assert (again.decided_on_step, again.effect_step, [op.kind for op in again.ops]) == (1, 1, ["attach"])
        assert rebuilds(sink)[-1].endswith("1 plans sent again")
        await h.apply(again)
        # A restore of a state that had applied it (a stop's, after the plan came) names nothing: nothing is resent.
        await h.ref.tell(TrainingRestored(run_id=RUN, step=1, tier="full"))
        await h.statistics()  # the barrier: the restore is handled
        assert rebuilds(sink)[-1].endswith("0 plans sent again")
        assert h.plans.empty()
    receipts = [e for e in read_journal(tmp_path / JOURNAL_FILENAME) if isinstance(e, JournalReceipt)]
    assert [(e.receipt.decided_on_step, e.receipt.applied_step) for e in receipts] == [(1, 1)]
    # A resume whose start's replay took that receipt for the checkpoint's replays again without it.
    sink.events.clear()
    async with running_kasmina(clock, sink, lag=0, journal_dir=tmp_path, resume_step=1) as h:
        await h.ref.tell(TrainingRestored(run_id=RUN, step=1, tier="full", unapplied=(1,)))
        resent = await h.next_plan()
        assert (resent.decided_on_step, resent.effect_step, [op.kind for op in resent.ops]) == (1, 1, ["attach"])
        start, restore = rebuilds(sink)
        assert "0 plans held for the restore" in start
        assert restore.endswith("1 plans sent again")
        assert len(h.handoff) == 1  # the resent attach's module only
    assert not [e for e in read_journal(tmp_path / JOURNAL_FILENAME) if isinstance(e, JournalReceipt)]


async def test_a_lag_2_plan_a_stop_cut_the_wait_for_is_resent_when_the_restore_names_it(
    clock: ManualClock, sink: RecordingSink, tmp_path: Path
) -> None:
    """Not lag 0 alone: a stop that cut the trainer's wait for a late plan short saves it expected at its own step;
    resumed, the plan is applied there and journaled, and a kill -9 before the next checkpoint resumes from that stop
    checkpoint again, naming the plan: the receipt of the killed session's application is not the state's."""
    async with running_kasmina(clock, sink, lag=2, journal_dir=tmp_path) as h:
        plan = await h.boundary(1, h.germinate(rank=2))
        assert (plan.decided_on_step, plan.effect_step) == (1, 3)
        await h.apply(plan)  # applied at 3 by the resumed session, which then died
        await h.ref.tell(TrainingRestored(run_id=RUN, step=3, tier="full", unapplied=(1,)))
        again = await h.next_plan()
        assert (again.decided_on_step, again.effect_step, [op.kind for op in again.ops]) == (1, 3, ["attach"])
        assert rebuilds(sink)[-1].endswith("1 plans sent again")


async def test_a_resume_replays_the_journal_once_when_the_restore_names_the_expected_step(
    clock: ManualClock, sink: RecordingSink, tmp_path: Path
) -> None:
    """A resume knows the checkpoint's step: the start's replay stops there and holds the plans in flight, and
    Tolaria's restore at that step only sends them (a long run's resume replayed its whole journal twice)."""
    async with running_kasmina(clock, sink, lag=2, journal_dir=tmp_path) as h:
        step = await grow_one_seed(h)
        await h.boundary(step, seeds=(seed_report(),))
    sink.events.clear()
    async with running_kasmina(clock, sink, lag=2, journal_dir=tmp_path, resume_step=1) as h:
        await h.ref.tell(TrainingRestored(run_id=RUN, step=1, tier="full"))
        again = await h.next_plan()
        assert (again.decided_on_step, again.effect_step, [op.kind for op in again.ops]) == (1, 3, ["attach"])
        assert await h.stage("a") is Stage.GERMINATED
        [start] = rebuilds(sink)
        assert "up to step 1;" in start
        assert "1 plans held for the restore" in start
        ready = [e.description for e in sink.of_type(TelemetryEvent) if e.name == "kasmina_restore_ready"]
        assert ready == ["the start's replay up to step 1 serves the restore; 1 plans sent again"]
        assert sink.of_type(LifecycleRestored) == [LifecycleRestored(run_id=RUN, step=1, lag_steps=2)]


async def test_a_restore_at_another_step_than_expected_replays_again_and_releases_the_held_modules(
    clock: ManualClock, sink: RecordingSink, tmp_path: Path
) -> None:
    async with running_kasmina(clock, sink, lag=2, journal_dir=tmp_path) as h:
        step = await grow_one_seed(h)
        await h.boundary(step, seeds=(seed_report(),))
    sink.events.clear()
    async with running_kasmina(clock, sink, lag=2, journal_dir=tmp_path, resume_step=1) as h:
        assert len(h.handoff) == 1  # the held attach's module
        await h.ref.tell(TrainingRestored(run_id=RUN, step=0, tier="none"))
        assert await h.stage("a") is Stage.DORMANT  # cut before the germination: the seed never was
        assert len(rebuilds(sink)) == 2
        assert len(h.handoff) == 0
        assert not [e for e in sink.of_type(TelemetryEvent) if e.name == "kasmina_restore_ready"]


async def test_a_rollback_to_a_boundary_still_waiting_for_its_decision_plans_it_when_the_decision_comes(
    clock: ManualClock, sink: RecordingSink
) -> None:
    """The trainer rolled back to an epoch end whose packet still waited for the controller's decision: the rebuild
    dropped that packet, the restored trainer never sends it again, so its plan never came and training stalled for
    the whole plan deadline (12 s), then failed the epoch."""
    async with running_kasmina(clock, sink, lag=2) as h:
        await h.boundary(1)
        await h.ref.tell(h.packet(3))  # the epoch end's packet, its decision still to come
        await h.ref.tell(h.packet(5))  # the undone attempt's next packet: the trainer sends step 5 again
        await h.ref.tell(TrainingRestored(run_id=RUN, step=3, tier="fast"))
        resent = await h.next_plan()  # decided on 1, in effect at 3: in flight at the restored step
        assert (resent.decided_on_step, resent.effect_step) == (1, 3)
        await h.ref.tell(h.decision(3))
        plan = await h.next_plan()
        assert (plan.decided_on_step, plan.effect_step) == (3, 5)
        again = await h.boundary(5)  # taken anew, not dropped as a duplicate of the undone one
        assert again.decided_on_step == 5
        dropped = [e for e in sink.of_type(TelemetryEvent) if e.name == "boundary_input_dropped"]
        assert dropped == []


async def test_a_command_decided_after_the_restored_step_is_accepted_when_decided_again(
    clock: ManualClock, sink: RecordingSink
) -> None:
    """After a trainer restart (or a rollback) the controller decides the later steps again, under the same
    reproducible command id: the verifier, which outlives restarts, refused it as a replay and the command was lost
    (an optimizer tweak after a crash: the run then differed from an uninterrupted one)."""
    async with running_kasmina(clock, sink, lag=2) as h:
        await h.boundary(1)
        tweak = h.command(CommandKind.OPTIMIZER, lr_delta=0.1, decision_step=3)
        first = await h.boundary(3, tweak)
        assert [(r.accepted, r.reason) for r in first.command_results] == [(True, None)]
        await h.ref.tell(TrainingRestored(run_id=RUN, step=1, tier="fast"))
        await h.next_plan()  # decided on 1, in effect at 3: in flight at the restored step, sent again
        again = await h.boundary(3, tweak)
        assert [(r.accepted, r.reason) for r in again.command_results] == [(True, None)]
        # A real replay (nothing was undone) is still refused: signed for step 3, it cannot act on step 5's packet.
        replayed = await h.boundary(5, tweak)
        assert [r.reason for r in replayed.command_results] == [CommandRejectReason.DECISION_MISMATCH]


async def test_a_decision_on_a_packet_the_restore_undid_is_dropped_not_paired_with_the_rerun(
    clock: ManualClock, sink: RecordingSink
) -> None:
    """A rollback after a failed epoch end: the controller's decision on the undone attempt's packet arrived after the
    restore and waited for a partner; the rerun's packet of that step took it (its germination applied), and the
    controller's own decision on the rerun was refused as a duplicate, logged as an ERROR."""
    shown: list[int] = []

    async def controller(packet: SystemStatePacket) -> None:
        shown.append(packet.global_step)

    async with running_kasmina(clock, sink, lag=2, observer=controller) as h:
        await h.boundary(1)
        await h.ref.tell(h.packet(3))  # the failed attempt's epoch end, shown to the controller
        await h.ref.tell(TrainingRestored(run_id=RUN, step=1, tier="fast"))
        await h.next_plan()  # decided on 1, in effect at 3: sent again
        stale = h.command(CommandKind.OPTIMIZER, lr_delta=0.5, decision_step=3)
        await h.ref.tell(h.decision(3, stale))  # decided on the undone packet
        rerun = await h.boundary(3)  # the rerun's packet, shown again, and the controller's decision on it
        assert (rerun.decided_on_step, rerun.ops, rerun.command_results) == (3, (), ())
        assert shown == [1, 3, 3]
        names = [e.name for e in sink.of_type(TelemetryEvent)]
        assert "stale_decision_dropped" in names
        assert "boundary_input_dropped" not in names


async def test_a_decision_is_paired_only_with_the_very_packet_it_was_decided_on(
    clock: ManualClock, sink: RecordingSink
) -> None:
    """The controller was still deciding the undone attempt's packet when the trainer, restored, reached the same step
    again and its packet was shown: the late decision passed the step check and was paired with the rerun's packet,
    and the controller's decision on the rerun was refused as a duplicate (an ERROR)."""
    shown: list[SystemStatePacket] = []

    async def controller(packet: SystemStatePacket) -> None:
        shown.append(packet)

    async with running_kasmina(clock, sink, lag=2, observer=controller) as h:
        await h.boundary(1)
        await h.ref.tell(h.packet(3))  # the attempt the restore undoes, shown to the controller
        await h.ref.tell(TrainingRestored(run_id=RUN, step=1, tier="fast"))
        await h.next_plan()  # decided on 1, in effect at 3: sent again
        clock.advance(0.5)
        await h.ref.tell(h.packet(3))  # the rerun's packet of the same step, shown again
        await h.statistics()  # the barrier: Kasmina has handled it
        undone, rerun = shown[-2], shown[-1]
        assert (undone.global_step, rerun.global_step) == (3, 3)
        assert undone.issued_at != rerun.issued_at
        stale = h.command(CommandKind.OPTIMIZER, lr_delta=0.5, decision_step=3)
        late = msgspec.structs.replace(h.decision(3, stale), packet_issued_at=undone.issued_at)
        await h.ref.tell(late)  # arrives after the rerun's packet was shown
        fresh = msgspec.structs.replace(h.decision(3), packet_issued_at=rerun.issued_at)
        await h.ref.tell(fresh)
        plan = await h.next_plan()
        assert (plan.decided_on_step, plan.ops, plan.command_results) == (3, (), ())
        names = [e.name for e in sink.of_type(TelemetryEvent)]
        assert names.count("stale_decision_dropped") == 1
        assert "boundary_input_dropped" not in names
