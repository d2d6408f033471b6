"""Oona's publisher on a bus that stops answering: the breaker it reports, what it loses and how it counts it."""

from __future__ import annotations

from typing import TYPE_CHECKING, final

from actors.oona.publisher import PUBLISHER, OonaPublisher
from esper.runtime.bus_inproc import InProcessBus
from esper.runtime.errors import BusUnavailable
from esper.runtime.supervisor import ChildSpec
from esper.runtime.system import ActorSystem
from schemas.config import BreakerConfig
from schemas.domain_enums import TelemetryLevel
from schemas.enums import BreakerState, MessagePriority
from schemas.telemetry import TelemetryEvent

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    from esper.runtime.bus import BusStatistics, Envelope, PublishResult, Topic
    from esper.runtime.clock import ManualClock
    from esper.runtime.events import RecordingSink
    from schemas.base import Message
    from schemas.enums import BusMessageType

BREAKER = BreakerConfig(failure_threshold=2, open_s=5.0, success_threshold=1)


@final
class DownBus:
    """An in-process bus whose publish raises BusUnavailable while ``down`` (a Redis server gone away)."""

    def __init__(self, clock: ManualClock) -> None:
        self.inner = InProcessBus(clock)
        self.down = False

    @property
    def topics(self) -> frozenset[Topic]:
        return self.inner.topics

    async def publish(
        self,
        topic: Topic,
        payload: Message,
        *,
        message_type: BusMessageType,
        priority: MessagePriority = MessagePriority.NORMAL,
    ) -> PublishResult:
        if self.down:
            raise BusUnavailable("the Redis server did not answer: TimeoutError: Timeout reading from 127.0.0.1:6390")
        return await self.inner.publish(topic, payload, message_type=message_type, priority=priority)

    async def subscribe(self, topics: Topic | Sequence[Topic], *, group: str) -> None:
        await self.inner.subscribe(topics, group=group)

    async def receive(self, topics: Topic | Sequence[Topic], *, group: str, consumer: str) -> Envelope[Message]:
        return await self.inner.receive(topics, group=group, consumer=consumer)

    def consume(
        self, topics: Topic | Sequence[Topic], *, group: str, consumer: str
    ) -> AsyncIterator[Envelope[Message]]:
        return self.inner.consume(topics, group=group, consumer=consumer)

    async def ack(self, envelope: Envelope[Message]) -> bool:
        return await self.inner.ack(envelope)

    async def nack(self, envelope: Envelope[Message], error: str) -> None:
        await self.inner.nack(envelope, error)

    async def backlog(self, topic: Topic, group: str) -> int:
        return await self.inner.backlog(topic, group)

    async def trim_expired(self) -> int:
        return await self.inner.trim_expired()

    def statistics(self) -> BusStatistics:
        return self.inner.statistics()

    async def close(self) -> None:
        await self.inner.close()


def event(name: str) -> TelemetryEvent:
    return TelemetryEvent(name=name, level=TelemetryLevel.INFO)


async def test_the_state_shows_the_publish_breaker(clock: ManualClock, sink: RecordingSink) -> None:
    """``--state`` showed ``-`` for oona-publisher while its breaker was open: it did not report it."""
    bus = DownBus(clock)
    system = ActorSystem(clock=clock, sink=sink)
    await system.start(ChildSpec(PUBLISHER, lambda: OonaPublisher(bus, clock=clock, sink=sink, breaker=BREAKER)))
    publisher = system.ref(PUBLISHER, OonaPublisher)
    await publisher.ask(event("published"), type(None))
    [state] = system.snapshot()
    assert state.breaker is BreakerState.CLOSED
    bus.down = True
    for name in ("lost-1", "lost-2"):
        await publisher.ask(event(name), type(None))
    [state] = system.snapshot()
    assert state.breaker is BreakerState.OPEN
    await system.stop()
    await bus.close()
