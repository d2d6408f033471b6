"""esper.wiring.Routes and Tolaria's control.

A plan for a Tolaria that has stopped is dropped and counted, never raised at Kasmina; a plan that missed its step is
refused with a receipt."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import structlog
from torch import nn

from actors.tolaria.actor import TolariaControl
from actors.tolaria.cell import TolariaCell
from actors.tolaria.plans import PlanInbox
from actors.tolaria.snapshots import SnapshotStore
from esper.runtime.child_spec import ChildSpec
from esper.runtime.handoff import Handoff
from esper.runtime.supervisor import Supervisor
from esper.runtime.system import ActorSystem
from esper.wiring import Routes
from schemas.boundary import BoundaryApplied, BoundaryPlan, SeedOp
from schemas.enums import SeedLifecycleStage

if TYPE_CHECKING:
    from esper.runtime.clock import ManualClock
    from esper.runtime.events import RecordingSink


async def test_a_plan_for_a_stopped_tolaria_is_dropped_not_raised(clock: ManualClock, sink: RecordingSink) -> None:
    cell = TolariaCell(inbox=PlanInbox(), snapshots=SnapshotStore(2**20))
    system = ActorSystem(clock=clock, sink=sink)
    tolaria = Supervisor([ChildSpec("control", lambda: TolariaControl(cell))], name="tolaria", backoff_initial_s=0.0)
    await system.start(Supervisor([ChildSpec("tolaria", lambda: tolaria)], backoff_initial_s=0.0))
    routes = Routes(system, sink)
    cell.inbox.expect(4, 8)
    await routes.plan(BoundaryPlan(run_id="r", decided_on_step=4, effect_step=8))  # delivered while it runs
    assert routes.dropped == 0
    await system.stop()
    await system.wait()
    with structlog.testing.capture_logs() as logs:
        await routes.plan(BoundaryPlan(run_id="r", decided_on_step=8, effect_step=12))  # training over: dropped
    assert routes.dropped == 1
    assert [entry["event"] for entry in logs if entry["event"].startswith("boundary")] == ["boundary_plan_undelivered"]


async def test_a_plan_that_missed_its_step_is_refused_with_a_receipt_and_its_module_released(
    clock: ManualClock, sink: RecordingSink
) -> None:
    """The trainer gave up waiting for the plan (a decision timeout) and trains on; when it arrives it is never
    applied, so Kasmina is told no op took effect (its germinated seed is culled instead of waiting for an attach
    that never comes) and the prepared module leaves the handoff store."""
    cell = TolariaCell(inbox=PlanInbox(), snapshots=SnapshotStore(2**20))
    handoff: Handoff[nn.Module] = Handoff()
    handle = handoff.put(nn.Linear(2, 2))
    receipts: list[BoundaryApplied] = []
    got = asyncio.Event()

    def on_applied(receipt: BoundaryApplied) -> None:
        receipts.append(receipt)
        got.set()

    system = ActorSystem(clock=clock, sink=sink)
    control = ChildSpec("control", lambda: TolariaControl(cell, handoff=handoff, on_applied=on_applied))
    await system.start(Supervisor([ChildSpec("tolaria", lambda: Supervisor([control], name="tolaria"))]))
    try:
        cell.inbox.expect(4, 12)
        assert cell.inbox.take_due(12, 0.0).missed == (4,)
        attach = SeedOp(kind="attach", slot="s", seed_id="seed-s-4", stage=SeedLifecycleStage.TRAINING, handle=handle)
        plan = BoundaryPlan(run_id="r", decided_on_step=4, effect_step=12, ops=(attach,))
        with structlog.testing.capture_logs() as logs:
            system.ref("tolaria/control", TolariaControl).tell_nowait(plan)
            async with asyncio.timeout(5):
                await got.wait()
        [receipt] = receipts
        assert (receipt.decided_on_step, receipt.effect_step, receipt.applied_step) == (4, 12, 12)
        [outcome] = receipt.outcomes
        assert (outcome.kind, outcome.seed_id, outcome.applied) == ("attach", "seed-s-4", False)
        assert outcome.error == "the plan missed its step 12 (decided on 4) and was dropped"
        assert len(handoff) == 0
        [dropped] = [entry for entry in logs if entry["event"] == "boundary_plan_dropped"]
        assert dropped["detail"] == "late: its deadline passed"
    finally:
        await system.stop()
