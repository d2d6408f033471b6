"""esper.wiring.Routes: a plan for a Tolaria that has stopped is dropped and counted, never raised at Kasmina."""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from actors.tolaria.actor import TolariaCell, TolariaControl
from actors.tolaria.plans import PlanInbox
from actors.tolaria.snapshots import SnapshotStore
from esper.runtime.supervisor import ChildSpec, Supervisor
from esper.runtime.system import ActorSystem
from esper.wiring import Routes
from schemas.boundary import BoundaryPlan

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
