"""The publisher cancelled at a stop while it publishes its queue ends at once, on the real Redis server.

The cancel is the stop's shutdown deadline. redis-py lost a cancel that arrived just after a command was sent, and the
publisher went on publishing every queued event, on a slow server long past the deadline, while the stop waited for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from actors.oona.publisher import PUBLISHER, OonaPublisher
from esper.runtime.bus import Topic
from esper.runtime.bus_redis_open import open_redis_bus
from esper.runtime.child_spec import ChildSpec
from esper.runtime.system import ActorSystem
from schemas.domain_enums import TelemetryLevel
from schemas.telemetry import TelemetryEvent
from tests.test_bus_conformance import REDIS_URL

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from esper.runtime.clock import ManualClock
    from esper.runtime.events import RecordingSink
    from tests._redis_fixtures import CancelOnSend

QUEUED = 20


def event(name: str) -> TelemetryEvent:
    return TelemetryEvent(name=name, level=TelemetryLevel.INFO)


async def test_a_publisher_cancelled_while_it_publishes_its_queue_at_a_stop_publishes_no_more(
    client: Redis, prefix: str, clock: ManualClock, sink: RecordingSink, cancel_on_send: CancelOnSend
) -> None:
    async with open_redis_bus(REDIS_URL, clock, prefix=prefix) as bus:
        await bus.subscribe(Topic.TELEMETRY, group="observer")
        system = ActorSystem(clock=clock, sink=sink)
        await system.start(ChildSpec(PUBLISHER, lambda: OonaPublisher(bus, clock=clock, sink=sink)))
        publisher = system.ref(PUBLISHER, OonaPublisher)
        await publisher.ask(event("published"), type(None))  # connected before the cancel is armed
        for number in range(QUEUED):
            publisher.tell_nowait(event(f"queued-{number}"))
        cancel_on_send.arm()  # the cancel arrives as the next event's publish has been sent
        await system.stop()
        assert cancel_on_send.victim is not None
        assert cancel_on_send.went_on == 0, f"the cancelled publisher sent {cancel_on_send.went_on} more commands"
        statistics = await bus.fetch_statistics()
        [telemetry] = [row for row in statistics.topics if row.topic is Topic.TELEMETRY]
        assert telemetry.published == 2  # the event published before, and the one whose publish was sent
