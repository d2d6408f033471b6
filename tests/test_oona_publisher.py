"""Oona's publisher on a bus that stops answering: the breaker it reports, what it loses and how it counts it."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, final

import msgspec
import structlog

from actors.oona.publisher import PUBLISHER, BusLosses, BusSink, OonaPublisher
from esper.runtime.bus_inproc import InProcessBus
from esper.runtime.child_spec import ChildSpec
from esper.runtime.errors import BusUnavailable, PayloadTooLarge
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
    """An in-process bus whose publish raises BusUnavailable while ``down`` (a Redis server gone away); while ``held``
    it waits first (a hung server: ``entered`` is set once a publish waits) until ``release()``, which answers it as
    ``answer`` says: published (the server was only slow), or BusUnavailable (the client's timeout). A payload whose
    encoding is over ``max_payload_bytes`` is refused with PayloadTooLarge, as the Redis bus does."""

    def __init__(self, clock: ManualClock) -> None:
        self.inner = InProcessBus(clock)
        self.down = False
        self.held = False
        self.answer = True
        self.entered = asyncio.Event()
        self.max_payload_bytes: int | None = None
        self.broken: Exception | None = None  # raised by every publish: a bus failing otherwise than unavailable
        self.attempts = 0
        self._released = asyncio.Event()

    def release(self, *, answer: bool) -> None:
        self.answer = answer
        self.held = False
        self._released.set()

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
        self.attempts += 1
        if self.broken is not None:
            raise self.broken
        if self.held:
            self.entered.set()
            await self._released.wait()
            if not self.answer:
                self.down = True
        if self.down:
            raise BusUnavailable("the Redis server did not answer: TimeoutError: Timeout reading from 127.0.0.1:6390")
        size = len(msgspec.msgpack.encode(payload))
        if self.max_payload_bytes is not None and size > self.max_payload_bytes:
            raise PayloadTooLarge(type(payload).__name__, size, self.max_payload_bytes)
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


@final
class Held:
    """A publisher with a small mailbox, its BusSink, and a DownBus held mid-publish with its mailbox overflowing."""

    def __init__(self, clock: ManualClock, sink: RecordingSink) -> None:
        self.bus = DownBus(clock)
        self.losses = BusLosses()
        self.system = ActorSystem(clock=clock, sink=sink)
        self.instances: list[OonaPublisher] = []
        self._clock = clock
        self._sink = sink
        self.emit = BusSink(lambda: self.system.ref(PUBLISHER, OonaPublisher), self.losses).emit

    def _build(self) -> OonaPublisher:
        publisher = OonaPublisher(
            self.bus, clock=self._clock, sink=self._sink, breaker=BREAKER, capacity=4, losses=self.losses
        )
        self.instances.append(publisher)
        return publisher

    async def start_held(self) -> None:
        """Publish one event, then hold the next publish and emit 6 more: 4 wait in the mailbox, 2 are refused."""
        await self.system.start(ChildSpec(PUBLISHER, self._build))
        await self.system.ref(PUBLISHER, OonaPublisher).ask(event("published"), type(None))
        self.bus.held = True
        self.emit(event("held"))
        await self.bus.entered.wait()
        for n in range(6):
            self.emit(event(f"after-{n}"))
        assert self.losses.overflow == 2


async def test_a_run_stopping_on_a_hung_server_counts_every_event_lost_in_one_warning(
    clock: ManualClock, sink: RecordingSink
) -> None:
    """The events queued behind a publish the server never answered became dead letters at the stop (105 of them,
    one warning each up to 10), and the outage's count left them and those the full mailbox refused out
    (``oona_bus_unavailable_at_stop dropped=1``)."""
    held = Held(clock, sink)
    with structlog.testing.capture_logs() as logs:
        await held.start_held()
        stopping = asyncio.create_task(held.system.stop())
        while not held.instances[0].stopping:  # noqa: ASYNC110  # the stop reaches the publisher while it waits
            await asyncio.sleep(0)
        held.bus.release(answer=False)  # the client's timeout
        await stopping
    said = [(e["event"], e.get("dropped")) for e in logs if e["event"].startswith("oona_")]
    assert said == [("oona_bus_unavailable", None), ("oona_bus_unavailable_at_stop", 7)]  # held, 4 queued, 2 refused
    assert held.system.dead_letters == 0
    assert held.losses.total == 7
    await held.bus.close()


async def test_the_count_when_the_bus_answers_again_includes_what_the_full_mailbox_refused(
    clock: ManualClock, sink: RecordingSink
) -> None:
    held = Held(clock, sink)
    with structlog.testing.capture_logs() as logs:
        await held.start_held()
        publisher = held.system.ref(PUBLISHER, OonaPublisher)
        held.bus.release(answer=False)
        await publisher.ask(event("refused-by-the-open-breaker"), type(None))  # the barrier: the 4 queued are handled
        held.bus.down = False
        clock.advance(BREAKER.open_s)
        await publisher.ask(event("published-again"), type(None))
    said = [(e["event"], e.get("dropped")) for e in logs if e["event"].startswith("oona_")]
    assert said == [("oona_bus_unavailable", None), ("oona_bus_restored", 8)]
    await held.system.stop()
    await held.bus.close()


async def test_a_slow_bus_that_overflows_the_mailbox_is_said_once(clock: ManualClock, sink: RecordingSink) -> None:
    """The events a full mailbox refused were counted (BusSink.dropped) but never said or reported anywhere."""
    held = Held(clock, sink)
    with structlog.testing.capture_logs() as logs:
        await held.start_held()
        publisher = held.system.ref(PUBLISHER, OonaPublisher)
        held.bus.release(answer=True)  # slow, not down: every event it was given is published
        await publisher.ask(event("barrier"), type(None))
        for n in range(6):  # and once more, without a word this time
            held.emit(event(f"burst-{n}"))
        await held.system.stop()
    said = [(e["event"], e.get("dropped")) for e in logs if e["event"].startswith("oona_")]
    assert said == [("oona_publisher_behind", 2)]
    assert (held.losses.overflow, held.losses.unavailable, held.system.dead_letters) == (4, 0, 0)
    assert held.instances[0].published == 1 + 1 + 4 + 1 + 4  # the burst's 4 queued went out at the stop
    await held.bus.close()


async def test_a_publish_failing_otherwise_than_unavailable_drops_the_event_and_never_crashes_the_publisher(
    clock: ManualClock, sink: RecordingSink
) -> None:
    """Only BusUnavailable and PayloadTooLarge were caught: any other exception from publish (a client bug, a
    serialisation error) crashed the publisher at every event, and its restarts ended the run."""
    bus = DownBus(clock)
    bus.broken = RuntimeError("chaos: the client failed")
    losses = BusLosses()
    system = ActorSystem(clock=clock, sink=sink)
    await system.start(
        ChildSpec(PUBLISHER, lambda: OonaPublisher(bus, clock=clock, sink=sink, breaker=BREAKER, losses=losses))
    )
    emit = BusSink(lambda: system.ref(PUBLISHER, OonaPublisher), losses).emit
    with structlog.testing.capture_logs() as logs:
        for n in range(10):
            emit(event(f"told-{n}"))  # tells: a failure to handle one crashed the actor
        async with asyncio.timeout(5):  # a crashed publisher waits on the (manual) clock's backoff: never answers
            await system.ref(PUBLISHER, OonaPublisher).ask(event("barrier"), type(None))
    [state] = system.snapshot()
    assert state.restarts == 0
    assert state.breaker is BreakerState.OPEN
    assert bus.attempts == BREAKER.failure_threshold  # then the open breaker drops events without trying
    assert losses.unavailable == 11
    said = [(e["event"], e["log_level"], e.get("error")) for e in logs if e["event"].startswith("oona_")]
    assert said == [("oona_bus_unavailable", "warning", "RuntimeError: chaos: the client failed")]
    await system.stop()
    await bus.close()
