"""The boundary planner on its own: receipts take effect by step, never by arrival, and build the ownership map."""

from __future__ import annotations

from typing import TYPE_CHECKING

from actors.kasmina.preparation import derive_build_seed
from esper.runtime.signing import sign_command
from schemas.boundary import BoundaryApplied, OpOutcome
from schemas.control import AdaptationCommand, BlendConfig, CommandSecurity
from schemas.domain_enums import CommandKind
from schemas.enums import SeedLifecycleGate
from schemas.enums import SeedLifecycleStage as Stage
from schemas.nissa import SeedStageChanged
from schemas.state import GateResult
from tests._kasmina_harness import KEY, KEY_ID, RUN, bare_planner, make_packet, prepared_seed, seed_report

if TYPE_CHECKING:
    from actors.kasmina.planner import BoundaryPlanner
    from esper.runtime.clock import ManualClock
    from esper.runtime.events import RecordingSink
    from schemas.boundary import SeedOpKind

COMMAND_ID = "00000000-0000-4000-8000-000000000001"


def germinate_b() -> AdaptationCommand:
    security = CommandSecurity(signature="", key_id="", nonce=COMMAND_ID, issued_at=0.0)
    cmd = AdaptationCommand(
        command_id=COMMAND_ID,
        issued_at=0.0,
        training_run_id=RUN,
        kind=CommandKind.GERMINATE,
        decision_step=1,
        policy_version="t",
        security=security,
        target_slot="b",
        target_seed_id="s1",
        blueprint_id="BP002",
        blueprint_params={"rank": 2.0},
        blend=BlendConfig(),
    )
    return sign_command(cmd, KEY, KEY_ID)


def seed_verb(kind: CommandKind, step: int, number: int) -> AdaptationCommand:
    """A signed PAUSE / RESUME / CULL of seed s1, decided on ``step``."""
    command_id = f"00000000-0000-4000-8000-{number:012d}"
    security = CommandSecurity(signature="", key_id="", nonce=command_id, issued_at=0.0)
    cmd = AdaptationCommand(
        command_id=command_id,
        issued_at=0.0,
        training_run_id=RUN,
        kind=kind,
        decision_step=step,
        policy_version="t",
        security=security,
        target_seed_id="s1",
        reason="test",
    )
    return sign_command(cmd, KEY, KEY_ID)


def receipt(decided: int, *outcomes: OpOutcome, lag: int = 2) -> BoundaryApplied:
    """Tolaria's receipt of the plan decided on ``decided``, applied at its effect step."""
    return BoundaryApplied(
        run_id=RUN, decided_on_step=decided, effect_step=decided + lag, applied_step=decided + lag, outcomes=outcomes
    )


def attached_seed(planner: BoundaryPlanner) -> None:
    """Seed s1 germinated in slot b at step 1, attached at step 3 and TRAINING from the boundary of step 4."""
    draft = planner.begin(make_packet(1), germinate_b(), None)
    planner.prepared(prepared_seed())
    planner.finish(draft)
    planner.record_receipt(receipt(1, OpOutcome(kind="attach", slot="b", seed_id="s1", applied=True)))
    for step in (2, 3, 4):
        planner.finish(planner.begin(make_packet(step, seeds=(seed_report("s1", "b"),)), None, None))
    assert planner.seed_states()[1].stage is Stage.TRAINING


def test_receipts_apply_at_the_first_boundary_after_their_step_and_record_ownership(
    clock: ManualClock, sink: RecordingSink
) -> None:
    planner = bare_planner(clock, sink)
    draft = planner.begin(make_packet(1), germinate_b(), None)
    (request,) = draft.preparations
    assert (request.slot, request.build_seed) == ("b", derive_build_seed(7, "s1"))
    planner.prepared(prepared_seed())
    plan = planner.finish(draft)
    assert [(op.kind, op.handle) for op in plan.ops] == [("attach", "s1-1")]
    assert plan.effect_step == 3
    attach = OpOutcome(kind="attach", slot="b", seed_id="s1", applied=True)
    # The receipt arrives before the packets of steps 2 and 3, yet counts only after its applied step 3.
    planner.record_receipt(
        BoundaryApplied(run_id=RUN, decided_on_step=1, effect_step=3, applied_step=3, outcomes=(attach,))
    )
    for step in (2, 3):
        planner.finish(planner.begin(make_packet(step), None, None))
        assert planner.owner_of("b.seed.up.weight") is None
        assert planner.seed_states()[1].stage is Stage.GERMINATED
    planner.finish(planner.begin(make_packet(4), None, None))
    assert planner.owner_of("b.seed.up.weight") == "s1"
    assert planner.owner_of("b.seed.down.weight") == "s1"
    assert planner.seed_states()[1].stage is Stage.TRAINING
    assert planner.slot_of("s1") == "b"


def test_a_fossilized_seeds_parameters_pass_to_the_host(clock: ManualClock, sink: RecordingSink) -> None:
    """The receipt of an applied fossilize hands the seed's parameters to the host (the isolation checks then leave
    them alone); kept when the refused-stage-op retries were added to the same receipt handling."""
    planner = bare_planner(clock, sink)
    draft = planner.begin(make_packet(1), germinate_b(), None)
    planner.prepared(prepared_seed())
    planner.finish(draft)
    attach = OpOutcome(kind="attach", slot="b", seed_id="s1", applied=True)
    planner.record_receipt(
        BoundaryApplied(run_id=RUN, decided_on_step=1, effect_step=3, applied_step=3, outcomes=(attach,))
    )
    fossilize = OpOutcome(kind="fossilize", slot="b", seed_id="s1", applied=True)
    planner.record_receipt(
        BoundaryApplied(run_id=RUN, decided_on_step=4, effect_step=6, applied_step=6, outcomes=(fossilize,))
    )
    for step in range(2, 6):
        planner.finish(planner.begin(make_packet(step), None, None))
    assert planner.owner_of("b.seed.up.weight") == "s1"
    planner.finish(planner.begin(make_packet(7), None, None))
    assert planner.owner_of("b.seed.up.weight") == "host"


def test_a_slot_whose_attach_never_took_effect_is_reset_after_the_cull(clock: ManualClock, sink: RecordingSink) -> None:
    """The trainer gave up on the plan carrying the attach and no receipt came back. G1 times out, the cull's detach
    is refused (the slot holds no seed): the trainer holds nothing of the seed, so the slot goes back to DORMANT
    instead of failing G5 ('kernel_attached') at every boundary for the rest of the run."""
    planner = bare_planner(clock, sink)
    draft = planner.begin(make_packet(1), germinate_b(), None)
    planner.prepared(prepared_seed())
    assert [op.kind for op in planner.finish(draft).ops] == ["attach"]
    detaches: list[int] = []
    for step in range(2, 1200):
        plan = planner.finish(planner.begin(make_packet(step, epoch=step // 100), None, None))
        for op in plan.ops:
            if op.kind == "detach":
                detaches.append(step)
                refused = OpOutcome(
                    kind="detach", slot="b", seed_id="s1", applied=False, error="detach: slot after 'b' holds no seed"
                )
                planner.record_receipt(receipt(step, refused))
    assert len(detaches) == 1
    stages = [(e.from_stage, e.to_stage) for e in sink.events if isinstance(e, SeedStageChanged) and e.slot == "b"]
    assert stages[-3:] == [
        (Stage.CULLED, Stage.EMBARGOED),
        (Stage.EMBARGOED, Stage.RESETTING),
        (Stage.RESETTING, Stage.DORMANT),
    ]
    assert planner.seed_states()[1].stage is Stage.DORMANT
    g5 = [e for e in sink.events if isinstance(e, GateResult) and e.gate is SeedLifecycleGate.G5_RESET]
    assert [r.passed for r in g5] == [True]


def test_a_refused_detach_of_an_attached_seed_keeps_its_slot_from_resetting(
    clock: ManualClock, sink: RecordingSink
) -> None:
    """A seed the trainer did attach and now refuses to detach may still be in the model: its slot waits in
    RESETTING rather than being handed to another seed."""
    planner = bare_planner(clock, sink)
    attached_seed(planner)
    planner.finish(planner.begin(make_packet(5), seed_verb(CommandKind.CULL, 5, 2), None))
    refused = OpOutcome(kind="detach", slot="b", seed_id="s1", applied=False, error="detach: something else")
    planner.record_receipt(receipt(5, refused))
    for step in range(6, 700):
        planner.finish(planner.begin(make_packet(step, epoch=step // 100), None, None))
    assert planner.seed_states()[1].stage is Stage.RESETTING


L3 = "adaptation paused (emergency level L3 or above)"


def pause_outcome(kind: SeedOpKind, *, applied: bool, error: str | None = None) -> OpOutcome:
    return OpOutcome(kind=kind, slot="b", seed_id="s1", applied=applied, error=error)


def boundaries(planner: BoundaryPlanner, steps: range) -> None:
    for step in steps:
        planner.finish(planner.begin(make_packet(step, seeds=(seed_report("s1", "b"),)), None, None))


def test_a_pause_the_trainer_refused_is_not_recorded_as_done(clock: ManualClock, sink: RecordingSink) -> None:
    """At L3 the trainer refuses every op but a detach: the seed trains on, so Kasmina reports it unpaused and its
    lifecycle goes on (it was reported paused and held for good)."""
    planner = bare_planner(clock, sink)
    attached_seed(planner)
    plan = planner.finish(planner.begin(make_packet(5), seed_verb(CommandKind.PAUSE, 5, 2), None))
    assert [op.kind for op in plan.ops] == ["pause"]
    assert planner.seed_states()[1].paused
    planner.record_receipt(receipt(5, pause_outcome("pause", applied=False, error=L3)))
    boundaries(planner, range(6, 8))
    assert planner.seed_states()[1].paused, "held until the receipt's boundary"
    boundaries(planner, range(8, 40))
    state = planner.seed_states()[1]
    assert not state.paused
    assert state.stage is not Stage.TRAINING


def test_a_resume_the_trainer_refused_leaves_the_seed_paused(clock: ManualClock, sink: RecordingSink) -> None:
    planner = bare_planner(clock, sink)
    attached_seed(planner)
    planner.finish(planner.begin(make_packet(5), seed_verb(CommandKind.PAUSE, 5, 2), None))
    planner.record_receipt(receipt(5, pause_outcome("pause", applied=True)))
    boundaries(planner, range(6, 10))
    planner.finish(planner.begin(make_packet(10), seed_verb(CommandKind.RESUME, 10, 3), None))
    assert not planner.seed_states()[1].paused
    planner.record_receipt(receipt(10, pause_outcome("resume", applied=False, error=L3)))
    boundaries(planner, range(11, 13))
    assert not planner.seed_states()[1].paused, "resumed in the planner's view until the receipt's boundary"
    boundaries(planner, range(13, 14))
    held = planner.seed_states()[1]
    assert held.paused
    boundaries(planner, range(14, 40))
    assert planner.seed_states()[1].paused
    assert planner.seed_states()[1].stage is held.stage, "a paused seed changes no stage"


def test_only_the_last_pause_or_resume_in_flight_settles_the_flag(clock: ManualClock, sink: RecordingSink) -> None:
    """A pause and a resume decided a step apart are both in flight: the trainer refuses the pause, then the resume
    (the seed is not paused); the seed is not paused, whatever order the refusals are read in."""
    planner = bare_planner(clock, sink)
    attached_seed(planner)
    planner.finish(planner.begin(make_packet(5), seed_verb(CommandKind.PAUSE, 5, 2), None))
    planner.finish(planner.begin(make_packet(6), seed_verb(CommandKind.RESUME, 6, 3), None))
    planner.record_receipt(receipt(5, pause_outcome("pause", applied=False, error=L3)))
    boundaries(planner, range(7, 9))
    assert not planner.seed_states()[1].paused, "the resume in flight decides"
    planner.record_receipt(receipt(6, pause_outcome("resume", applied=False, error="resume: seed 's1' is not paused")))
    boundaries(planner, range(9, 12))
    assert not planner.seed_states()[1].paused
