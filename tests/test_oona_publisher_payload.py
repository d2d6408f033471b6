"""Oona's publisher and an event the bus refuses as too large: dropped, counted and said, never a crash."""

from __future__ import annotations

import functools
import uuid
from typing import TYPE_CHECKING, final

import structlog

from actors.oona.publisher import PUBLISHER, BusLosses, OonaPublisher
from esper.runtime.actor import Actor
from esper.runtime.bus import BusLimits, PublishStatus, Topic
from esper.runtime.bus_inproc import InProcessBus
from esper.runtime.bus_redis import RedisBus
from esper.runtime.child_spec import ChildSpec
from esper.runtime.supervisor import Supervisor
from esper.runtime.system import ActorSystem
from schemas.base import Message
from schemas.domain_enums import TelemetryLevel
from schemas.enums import BreakerState, BusMessageType
from schemas.runtime import ChildFailed, ChildRestarted
from schemas.telemetry import TelemetryEvent
from tests.test_bus_conformance import connect_redis
from tests.test_oona_publisher import BREAKER, DownBus

if TYPE_CHECKING:
    from esper.runtime.bus import Bus
    from esper.runtime.clock import ManualClock
    from esper.runtime.events import RecordingSink

LIMIT = 256


class Ping(Message, frozen=True):
    n: int


@final
class Trainer(Actor[Ping]):
    """Stands for the actors a run starts after the publisher, which rest_for_one restarts when it crashes."""

    def __init__(self) -> None:
        super().__init__(inbox=(Ping,))

    async def handle(self, msg: Ping) -> object:
        return msg.n


def event(name: str) -> TelemetryEvent:
    return TelemetryEvent(name=name, level=TelemetryLevel.INFO)


def oversized(name: str) -> TelemetryEvent:
    return TelemetryEvent(name=name, level=TelemetryLevel.INFO, description="x" * (2 * LIMIT))


def failed(child: str) -> ChildFailed:
    return ChildFailed(supervisor="root", child=child, error_type="ValueError", error="y" * (2 * LIMIT))


@final
class Run:
    """A publisher on ``bus`` and a trainer after it under rest_for_one, as in a run."""

    def __init__(self, bus: Bus, clock: ManualClock, sink: RecordingSink) -> None:
        self.losses = BusLosses()
        self.system = ActorSystem(clock=clock, sink=sink)
        self._bus = bus
        self._clock = clock
        self._sink = sink
        self.publishers: list[OonaPublisher] = []  # each incarnation, the newest last

    def _publisher(self) -> OonaPublisher:
        made = OonaPublisher(self._bus, clock=self._clock, sink=self._sink, breaker=BREAKER, losses=self.losses)
        self.publishers.append(made)
        return made

    async def start(self) -> None:
        root = Supervisor(
            [ChildSpec(PUBLISHER, self._publisher), ChildSpec("trainer", Trainer)],
            strategy="rest_for_one",
            backoff_initial_s=0.0,
            backoff_max_s=0.0,
        )
        await self.system.start(root)

    async def tell(self, msg: TelemetryEvent | ChildFailed) -> None:
        """Tell the event as the run's BusSink does (a crash in its handler is the publisher's), then wait until the
        publisher has handled it."""
        publisher = self.system.ref(PUBLISHER, OonaPublisher)
        await publisher.tell(msg)
        await publisher.ask(event("barrier"), type(None))


async def test_an_event_too_large_for_the_bus_is_dropped_counted_and_said_once_per_type(
    clock: ManualClock, sink: RecordingSink
) -> None:
    """The Redis bus's PayloadTooLarge crashed the publisher, and rest_for_one restarted every actor after it (the
    trainer included): a state packet over the limit every few steps hit the restart limit and failed the run."""
    bus = DownBus(clock)
    bus.max_payload_bytes = LIMIT
    run = Run(bus, clock, sink)
    await run.start()
    with structlog.testing.capture_logs() as logs:
        await run.tell(oversized("first"))
        await run.tell(oversized("second"))
        await run.tell(failed("kasmina"))
        await run.system.stop()
    assert sink.of_type(ChildFailed) == []
    assert sink.of_type(ChildRestarted) == []
    said = [
        (e["event"], e.get("message_type"), e.get("max_payload_bytes")) for e in logs if e["event"].startswith("oona_")
    ]
    assert said == [
        ("oona_event_too_large", "TelemetryEvent", LIMIT),
        ("oona_event_too_large", "ChildFailed", LIMIT),
    ]  # nothing said of an outage or of a publisher that fell behind
    assert next(e["size"] for e in logs if e["event"] == "oona_event_too_large") > LIMIT
    assert (run.losses.oversized, run.losses.missed, run.losses.total) == (3, 0, 3)
    await bus.close()


async def test_an_event_too_large_as_the_half_open_probe_gives_the_probe_back(
    clock: ManualClock, sink: RecordingSink
) -> None:
    """Refused before it reached the server, it says nothing of the server: the next event is the probe."""
    bus = DownBus(clock)
    bus.max_payload_bytes = LIMIT
    run = Run(bus, clock, sink)
    await run.start()
    bus.down = True
    await run.tell(event("lost-1"))  # the barriers are lost as well: 2 failures each, the breaker opens on the first
    bus.down = False
    clock.advance(BREAKER.open_s)
    publisher = run.system.ref(PUBLISHER, OonaPublisher)
    await publisher.tell(oversized("probe"))
    await publisher.ask(event("next-probe"), type(None))
    assert [state.breaker for state in run.system.snapshot() if state.actor == PUBLISHER] == [BreakerState.CLOSED]
    assert (run.losses.unavailable, run.losses.oversized) == (2, 1)
    await run.system.stop()
    await bus.close()


async def test_an_event_over_the_redis_bus_limit_is_dropped_and_the_next_is_published(
    clock: ManualClock, sink: RecordingSink
) -> None:
    client = await connect_redis()
    bus = RedisBus(clock, client, prefix=f"esper-test-{uuid.uuid4().hex}", max_payload_bytes=LIMIT)
    try:
        await bus.subscribe(Topic.TELEMETRY, group="observer")
        run = Run(bus, clock, sink)
        await run.start()
        await run.tell(oversized("too-large"))
        await run.tell(event("fits"))
        await run.system.stop()
        assert sink.of_type(ChildFailed) == []
        assert (run.losses.oversized, run.losses.total) == (1, 1)
        names = []
        while (await bus.backlog(Topic.TELEMETRY, "observer")) > 0:
            envelope = await bus.receive(Topic.TELEMETRY, group="observer", consumer="o")
            assert isinstance(envelope.payload, TelemetryEvent)
            names.append(envelope.payload.name)
            await bus.ack(envelope)
        assert names == ["barrier", "fits", "barrier"]
    finally:
        await bus.purge()
        await bus.close()
        await client.aclose()


async def test_events_the_bus_sheds_are_counted_in_bus_dropped_and_said_once(
    clock: ManualClock, sink: RecordingSink
) -> None:
    """Runs sharing a Redis prefix fill its telemetry backlog (nobody reads it; it stays its TTL): the bus then shed
    every event of the next runs, and their summaries said bus_dropped 0 with no warning."""
    bus = InProcessBus(clock, limits=BusLimits(depth_high=2, depth_recovery=1, capacity=8))
    await bus.subscribe(Topic.TELEMETRY, group="observer")  # a reader that lags: what is shed is its loss
    run = Run(bus, clock, sink)
    await run.start()
    with structlog.testing.capture_logs() as logs:
        for n in range(4):
            await run.tell(event(f"e{n}"))
        await run.system.stop()
    # Two published, then the backlog is at depth_high: the rest (each barrier included) is shed.
    shed = run.losses.shed
    assert shed >= 2
    assert run.losses.total == shed
    assert run.losses.missed == 0  # not an outage: the bus answered
    assert [publisher.dropped for publisher in run.publishers] == [shed]
    said = [e for e in logs if e["event"] == "oona_bus_shedding"]
    assert len(said) == 1
    assert "counted in bus_dropped" in said[0]["dropping"]
    await bus.close()


async def test_a_topic_nobody_subscribed_to_sheds_without_a_loss(clock: ManualClock, sink: RecordingSink) -> None:
    """A long run on the in-process bus with no observer at all reached the shedding level on the telemetry topic it
    keeps for late subscribers: it warned oona_bus_shedding and its summary said "bus: 19 events never reached its
    observers" of a run that had none."""
    bus = InProcessBus(clock, limits=BusLimits(depth_high=2, depth_recovery=1, capacity=8))
    run = Run(bus, clock, sink)
    await run.start()
    with structlog.testing.capture_logs() as logs:
        for n in range(4):
            await run.tell(event(f"e{n}"))
        await run.system.stop()
    stats = bus.statistics().of(Topic.TELEMETRY)
    assert stats.publish_dropped >= 2, "the bus still sheds past depth_high: what it retains stays bounded"
    assert stats.depth == 2
    assert (run.losses.shed, run.losses.total) == (0, 0)
    assert [publisher.dropped for publisher in run.publishers] == [0], "an unread shed is not counted either"
    assert [e for e in logs if e["event"] == "oona_bus_shedding"] == []
    await bus.close()


async def test_the_in_process_bus_says_a_shed_message_was_unread_only_while_no_group_reads_its_topic(
    clock: ManualClock,
) -> None:
    bus = InProcessBus(clock, limits=BusLimits(depth_high=1, depth_recovery=0, capacity=8))
    publish = functools.partial(bus.publish, Topic.TELEMETRY, event("e"), message_type=BusMessageType.TELEMETRY)
    assert (await publish()).status is PublishStatus.PUBLISHED
    unread = await publish()
    assert (unread.status, unread.unread) == (PublishStatus.DROPPED, True)
    await bus.subscribe(Topic.TELEMETRY, group="observer")
    read = await publish()
    assert (read.status, read.unread) == (PublishStatus.DROPPED, False)
    await bus.close()
