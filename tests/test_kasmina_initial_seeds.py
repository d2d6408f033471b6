"""tolaria.initial_seeds as Kasmina sees them: their slots are FOSSILIZED from the start, in every incarnation."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from actors.kasmina.lifecycle import SeedLifecycle
from schemas.boundary import TrainingRestored
from schemas.enums import SeedLifecycleStage as Stage
from schemas.state import SeedState
from tests._kasmina_harness import RUN, bare_planner, make_packet, running_kasmina
from tests.test_kasmina_planner import germinate_b
from tests.test_kasmina_restart import crash, grow_one_seed

if TYPE_CHECKING:
    from esper.runtime.clock import ManualClock
    from esper.runtime.events import RecordingSink
    from schemas.state import SystemStatePacket

INITIAL = {"b": "BP002"}
# What Tolaria's packet says of the slot: the seed attached before step 0, fossilized, with its parameters.
TRAINER_VIEW = SeedState(slot="b", stage=Stage.FOSSILIZED, layer_depth=1, seed_id="initial-b", parameter_count=64)


def test_a_slot_holding_an_initial_seed_is_fossilized_from_the_start_and_refuses_a_germination(
    clock: ManualClock, sink: RecordingSink
) -> None:
    """The controller germinated into such a slot (it read DORMANT), the trainer's attach failed and the seed was
    culled as attach_failed, again and again; now the slot is occupied from the start and G0 refuses it."""
    planner = bare_planner(clock, sink, initial_seeds=INITIAL)
    a, b = planner.seed_states()
    assert (a.stage, a.seed_id) == (Stage.DORMANT, None)
    assert (b.stage, b.seed_id, b.blueprint_id, b.blend_allowed) == (Stage.FOSSILIZED, "initial-b", "BP002", True)
    draft = planner.begin(make_packet(1), germinate_b(), None)
    (result,) = draft.results
    assert (result.accepted, result.detail) == (False, "G0: slot_occupied")
    assert draft.preparations == []
    assert planner.finish(draft).ops == ()
    for step in range(2, 6):
        planner.finish(planner.begin(make_packet(step, seeds=(TRAINER_VIEW,)), None, None))
    assert planner.seed_states()[1] == b, "nothing moves it"


def test_an_initial_seed_in_no_slot_is_refused() -> None:
    with pytest.raises(ValueError, match=r"initial seeds name unknown slots \['c'\]"):
        SeedLifecycle(("a", "b"), fossilized={"c": ("initial-c", "BP002")})


async def test_the_controller_sees_the_slot_occupied_before_and_after_a_restart_and_a_restore(
    clock: ManualClock, sink: RecordingSink
) -> None:
    """A restart (a crash) and the trainer's restore rebuild the planner and replay the journal: the initial seed's
    slot is FOSSILIZED again, with the trainer's figures merged in, while a grown seed goes through its lifecycle."""
    shown: list[SystemStatePacket] = []

    async def controller(packet: SystemStatePacket) -> None:
        shown.append(packet)

    async with running_kasmina(clock, sink, lag=2, observer=controller, initial_seeds=INITIAL) as h:
        step = await grow_one_seed(h)  # in slot a
        await h.boundary(step, seeds=(TRAINER_VIEW,))
        seen = {s.slot: s for s in shown[-1].seed_states}
        assert (seen["b"].stage, seen["b"].seed_id, seen["b"].parameter_count) == (Stage.FOSSILIZED, "initial-b", 64)
        assert seen["a"].stage is Stage.TRAINING
        await crash(h, step + 1)
        assert (await h.states())["b"].stage is Stage.FOSSILIZED
        await h.ref.tell(TrainingRestored(run_id=RUN, step=1, tier="fast"))
        await h.next_plan()  # the attach decided on 1 is in flight again
        states = await h.states()
        assert (states["a"].stage, states["b"].stage, states["b"].seed_id) == (
            Stage.GERMINATED,
            Stage.FOSSILIZED,
            "initial-b",
        )
