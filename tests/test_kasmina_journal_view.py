"""The boundary journal keeps only what the planner reads of a packet (planner_view).

A planner fed those views plans and reports exactly as one fed the full packets."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from actors.kasmina.journal import planner_view
from esper.runtime.events import RecordingSink
from schemas.boundary import BoundaryApplied, OpOutcome
from schemas.enums import SeedLifecycleStage as Stage
from schemas.state import SeedState, SystemStatePacket
from tests._kasmina_harness import RUN, bare_planner, make_packet, prepared_seed
from tests.test_kasmina_planner import germinate_b

if TYPE_CHECKING:
    from actors.kasmina.planner import BoundaryPlanner
    from esper.runtime.clock import ManualClock
    from schemas.boundary import BoundaryPlan


def _packet(step: int, epoch: int, *, live: bool) -> SystemStatePacket:
    """A full packet as Tolaria sends it: a dormant slot "a", slot "b" with seed s1 once it is attached."""
    dormant = SeedState(slot="a", stage=Stage.DORMANT, layer_depth=0)
    states: tuple[SeedState, ...] = (dormant,)
    if live:
        alpha = min(1.0, step / 40)
        seed = SeedState(slot="b", stage=Stage.TRAINING, layer_depth=1, seed_id="s1", alpha=alpha, gradient_norm=0.4)
        states = (dormant, seed)
    base = make_packet(step, epoch=epoch, seeds=states)
    loss = 1.0 / (1 + step)
    return msgspec.structs.replace(
        base,
        training_loss=loss,
        layer_gradient_norms={"a": 0.3, "b": 0.2, "head": 0.9},
        seed_gradient_norms={"s1": 0.4} if live else {},
    )


def test_the_view_keeps_the_planners_fields_and_drops_the_rest() -> None:
    full = _packet(12, 1, live=True)
    view = planner_view(full)
    assert (view.global_step, view.epoch, view.training_loss) == (full.global_step, full.epoch, full.training_loss)
    assert view.seed_gradient_norms == full.seed_gradient_norms
    assert view.seed_states == (full.seed_states[1],)  # the attached seed's state, whole
    assert view.layer_gradient_norms == {}
    assert len(msgspec.json.encode(view)) < 0.75 * len(msgspec.json.encode(full))


def _planner(clock: ManualClock) -> tuple[BoundaryPlanner, RecordingSink]:
    sink = RecordingSink()
    return bare_planner(clock, sink), sink


def _drive(planner: BoundaryPlanner, view: bool) -> list[tuple[BoundaryPlan, tuple[SeedState, ...]]]:
    """Germinate s1 into slot b at step 1, attach it at step 3, then 60 packets over 6 epochs."""
    out: list[tuple[BoundaryPlan, tuple[SeedState, ...]]] = []
    for step in range(1, 62):
        epoch = step // 10
        packet = _packet(step, epoch, live=step > 3)
        draft = planner.begin(planner_view(packet) if view else packet, germinate_b() if step == 1 else None, None)
        for request in draft.preparations:
            planner.prepared(prepared_seed(request.seed_id))
        plan = planner.finish(draft)
        if plan.ops:
            outcomes = tuple(OpOutcome(kind=op.kind, slot=op.slot, seed_id=op.seed_id, applied=True) for op in plan.ops)
            planner.record_receipt(
                BoundaryApplied(
                    run_id=RUN,
                    decided_on_step=plan.decided_on_step,
                    effect_step=plan.effect_step,
                    applied_step=plan.effect_step,
                    outcomes=outcomes,
                )
            )
        out.append((plan, planner.seed_states()))
    return out


def test_a_planner_fed_the_views_plans_exactly_as_one_fed_the_full_packets(clock: ManualClock) -> None:
    full_planner, full_sink = _planner(clock)
    view_planner, view_sink = _planner(clock)
    full = _drive(full_planner, view=False)
    views = _drive(view_planner, view=True)
    assert views == full
    assert view_sink.events == full_sink.events
    stages = {states[1].stage for _, states in full}
    assert len(stages) >= 3, f"the seed should move through its lifecycle to be a real test: {stages}"
