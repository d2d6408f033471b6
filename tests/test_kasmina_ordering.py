"""One plan per packet, in packet order, whatever order packets and decisions arrive in; plans wait for seeds."""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, final

from actors.kasmina.preparation import CatalogueSource
from schemas.domain_enums import TelemetryLevel
from schemas.telemetry import TelemetryEvent
from tests._kasmina_harness import running_kasmina

if TYPE_CHECKING:
    from collections.abc import Mapping

    from esper.nn.blueprints import BlueprintDescriptor, SlotShape, SourcedModule
    from esper.runtime.clock import ManualClock
    from esper.runtime.events import RecordingSink


async def test_plans_follow_packet_order_when_decisions_come_first(clock: ManualClock, sink: RecordingSink) -> None:
    async with running_kasmina(clock, sink, lag=5) as h:
        for step in (1, 2, 3):
            await h.ref.tell(h.decision(step))
        for step in (1, 2, 3):
            await h.ref.tell(h.packet(step))
        plans = [await h.next_plan() for _ in range(3)]
        assert [(p.decided_on_step, p.effect_step) for p in plans] == [(1, 6), (2, 7), (3, 8)]
        await h.ref.tell(h.packet(4))
        await h.ref.tell(h.decision(5, h.germinate(blueprint_id="BP001")))
        assert (await h.statistics()).pending_packets == 1, "packet 4 waits for its decision"
        await h.ref.tell(h.decision(4))
        await h.ref.tell(h.packet(5))
        four, five = await h.next_plan(), await h.next_plan()
        assert (four.decided_on_step, four.ops) == (4, ())
        assert (five.decided_on_step, [op.kind for op in five.ops]) == (5, ["attach"])
        stats = await h.statistics()
        assert (stats.plans_sent, stats.pending_packets, stats.pending_decisions) == (5, 0, 0)
        assert h.plans.empty()


async def test_a_small_mailbox_still_holds_what_the_lag_keeps_in_flight(
    clock: ManualClock, sink: RecordingSink
) -> None:
    # weatherlight.mailbox_capacity = 2 used to be Kasmina's mailbox and its limit of packets waiting for decisions:
    # the trainer's packets (sent without waiting, as its routes send them) were lost to a full mailbox, and the third
    # waiting packet crashed Kasmina ("2 packets wait for their partner"), changing the run's result.
    lag = 8
    async with running_kasmina(clock, sink, lag=lag, mailbox_capacity=2) as h:
        for step in range(1, lag + 2):
            h.ref.tell_nowait(h.packet(step))
        assert (await h.statistics()).pending_packets == lag + 1
        for step in range(1, lag + 2):
            await h.ref.tell(h.decision(step))
        plans = [await h.next_plan() for _ in range(lag + 1)]
        assert [p.decided_on_step for p in plans] == list(range(1, lag + 2))
        stats = await h.statistics()
        assert (stats.plans_sent, stats.pending_packets, stats.pending_decisions) == (lag + 1, 0, 0)


async def test_without_a_controller_every_packet_is_a_no_op(clock: ManualClock, sink: RecordingSink) -> None:
    async with running_kasmina(clock, sink, has_controller=False) as h:
        for step in (0, 8, 16):
            await h.ref.tell(h.packet(step))
        plans = [await h.next_plan() for _ in range(3)]
        assert [p.decided_on_step for p in plans] == [0, 8, 16]
        assert all(not p.ops and not p.command_results for p in plans)


async def test_a_stale_or_repeated_packet_is_dropped_with_an_error(clock: ManualClock, sink: RecordingSink) -> None:
    async with running_kasmina(clock, sink) as h:
        await h.boundary(3)
        await h.ref.tell(h.packet(3))
        await h.ref.tell(h.decision(2))
        stats = await h.statistics()
        assert (stats.plans_sent, stats.pending_packets, stats.pending_decisions) == (1, 0, 0)
        dropped = [e for e in sink.of_type(TelemetryEvent) if e.name == "boundary_input_dropped"]
        assert [e.level for e in dropped] == [TelemetryLevel.ERROR, TelemetryLevel.ERROR]


@final
class HeldSource:
    """The built-in catalogue, but each fetch waits on the lane thread until the test releases it."""

    def __init__(self, started: asyncio.Event, release: threading.Event) -> None:
        self._inner = CatalogueSource()
        self._loop = asyncio.get_running_loop()
        self._started = started
        self._release = release

    def describe(self, blueprint_id: str) -> BlueprintDescriptor | None:
        return self._inner.describe(blueprint_id)

    def fetch(self, blueprint_id: str, slot_shape: SlotShape, params: Mapping[str, float], seed: int) -> SourcedModule:
        self._loop.call_soon_threadsafe(self._started.set)
        self._release.wait()
        return self._inner.fetch(blueprint_id, slot_shape, params, seed)


async def test_a_plan_waits_for_its_slow_preparation_and_later_plans_wait_behind_it(
    clock: ManualClock, sink: RecordingSink
) -> None:
    started, release = asyncio.Event(), threading.Event()
    try:
        async with running_kasmina(clock, sink, source=HeldSource(started, release)) as h:
            await h.ref.tell(h.packet(1))
            await h.ref.tell(h.decision(1, h.germinate(blueprint_id="BP001")))
            await h.ref.tell(h.packet(2))
            await h.ref.tell(h.decision(2))
            async with asyncio.timeout(5):
                await started.wait()
            assert h.plans.empty(), "no plan may leave while its module is being prepared"
            release.set()
            first, second = await h.next_plan(), await h.next_plan()
            assert [op.kind for op in first.ops] == ["attach"]
            assert first.decided_on_step == 1
            assert (second.decided_on_step, second.ops) == (2, ())
            assert first.ops[0].handle is not None
            h.handoff.take(first.ops[0].handle)
    finally:
        release.set()
