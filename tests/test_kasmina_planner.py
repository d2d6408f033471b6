"""The boundary planner on its own: receipts take effect by step, never by arrival, and build the ownership map."""

from __future__ import annotations

from typing import TYPE_CHECKING

from actors.kasmina.preparation import derive_build_seed
from esper.runtime.signing import sign_command
from schemas.boundary import BoundaryApplied, OpOutcome
from schemas.control import AdaptationCommand, BlendConfig, CommandSecurity
from schemas.domain_enums import CommandKind
from schemas.enums import SeedLifecycleStage as Stage
from tests._kasmina_harness import KEY, KEY_ID, RUN, bare_planner, make_packet, prepared_seed

if TYPE_CHECKING:
    from esper.runtime.clock import ManualClock
    from esper.runtime.events import RecordingSink

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
