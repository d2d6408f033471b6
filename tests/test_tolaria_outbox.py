"""HeldOutbox: messages pass straight through, except across an epoch end.

Across an epoch end they are kept and then sent in their order once the lane thread's own epoch-end work (validation
evidence, packet, snapshot, verdict) is done."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from actors.tolaria.build import load_data
from actors.tolaria.loop import TrainingLoop
from actors.tolaria.loop_options import LoopOptions
from actors.tolaria.outbox import HeldOutbox
from actors.tolaria.plans import PlanInbox
from actors.tolaria.snapshots import SnapshotStore
from schemas.boundary import BoundaryApplied, TrainingRestored
from schemas.config import TolariaConfig
from schemas.kasmina import SeedValidationReport
from schemas.state import SystemStatePacket
from tests.test_tolaria_loop import Box

if TYPE_CHECKING:
    from esper.nn.data import DataSplits

pytestmark = pytest.mark.timeout(90)

TINY = {"epochs": 3, "dataset_samples": 1000, "batch_size": 50, "state_every_steps": 4}


def test_held_messages_arrive_in_their_order_on_release_and_later_ones_pass_straight_through() -> None:
    inner = Box()
    outbox = HeldOutbox(inner)
    first = TrainingRestored(run_id="r", step=1, tier="fast")
    outbox.event(first)
    assert inner.arrived == [first]
    outbox.hold()
    receipt = BoundaryApplied(run_id="r", decided_on_step=2, effect_step=10, applied_step=10)
    second = TrainingRestored(run_id="r", step=3, tier="full")
    outbox.applied(receipt)
    outbox.event(second)
    outbox.hold()  # holding twice keeps one queue
    assert inner.arrived == [first]
    outbox.release()
    assert inner.arrived == [first, receipt, second]
    third = TrainingRestored(run_id="r", step=4, tier="fast")
    outbox.event(third)
    assert inner.arrived[-1] is third
    outbox.release()  # nothing held: nothing sent twice
    assert len(inner.arrived) == 4


@pytest.fixture(scope="module")
def data() -> DataSplits:
    return load_data(TolariaConfig(**TINY))  # type: ignore[arg-type]


def test_an_epoch_ends_messages_arrive_after_its_snapshot_is_taken(data: DataSplits) -> None:
    config = TolariaConfig(**TINY)  # type: ignore[arg-type]
    snapshots = SnapshotStore(int(config.snapshot_memory_cap_mb * 2**20))
    seen: list[tuple[int, int | None]] = []

    class Watcher(Box):
        def packet(self, packet: SystemStatePacket) -> None:
            super().packet(packet)
            if packet.epoch_progress == 1.0:
                latest = snapshots.latest
                seen.append((packet.global_step, latest.global_step if latest is not None else None))

    box = Watcher()
    loop = TrainingLoop(
        config,
        LoopOptions(run_id="t", checkpoint_dir=None),
        inbox=PlanInbox(),
        outbox=box,
        snapshots=snapshots,
        data=data,
    )
    assert loop.run().status == "completed"
    assert len(seen) == config.epochs
    # Each epoch-end packet was delivered once the same epoch end's fast snapshot existed (before, it went out first).
    assert all(step == snapshot_step for step, snapshot_step in seen), seen
    packets = [m for m in box.arrived if isinstance(m, SystemStatePacket)]
    assert [p.global_step for p in packets] == sorted(p.global_step for p in packets)
    assert not any(isinstance(m, SeedValidationReport) for m in box.arrived)  # no seeds, no evidence
