"""The GNN policy's warm-up on the policy lane, cut short by a stop of the actor."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from actors.tamiyo.gnn_state import PolicyWorker

if TYPE_CHECKING:
    from actors.tamiyo.gnn_state import GnnPolicyBase
    from esper.runtime.lanes import Lane


async def warm_up(policy: GnnPolicyBase, lane: Lane, stopping: asyncio.Event) -> RuntimeError | ArithmeticError | None:
    """Run the policy's warm-up on the lane; what it raised, or None. A stop requested meanwhile, or a cancel
    (a stop past the shutdown deadline), kills a worker process still starting, so the lane job ends at once: the
    lane never abandons started work, and a worker stuck in its start-up held a Ctrl-C for the 120 s ready
    timeout."""

    async def run() -> RuntimeError | ArithmeticError | None:
        try:
            await lane.run(policy.warm_up)
        except (RuntimeError, ArithmeticError) as err:
            return err
        return None

    async with asyncio.TaskGroup() as tg:
        job = tg.create_task(run())
        stop = tg.create_task(stopping.wait())
        try:
            await asyncio.wait((job, stop), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not job.done() and isinstance(policy, PolicyWorker):
                policy.abort_start()
            stop.cancel()
    return job.result()
