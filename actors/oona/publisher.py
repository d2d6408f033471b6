"""Oona's publisher: puts the run's typed events on the bus so observers in other processes (Redis) can follow a run.

The event sink hands events to this actor's mailbox without waiting (``BusSink``); the actor publishes each on its
topic: emergency signals on the emergency lane with a priority from their level, everything else on the telemetry
topic. Telemetry may be shed by the bus under backpressure (counted there); a full mailbox drops the event here
(counted in BusLosses) rather than stall whoever emitted it, and so does a bus that refuses an event as too large.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, final

import structlog

from esper.runtime.actor import Actor
from esper.runtime.breaker import CircuitBreaker
from esper.runtime.bus import PublishStatus, Topic
from esper.runtime.errors import ActorStopped, BusUnavailable, MailboxFull, PayloadTooLarge
from schemas.boundary import BoundaryApplied
from schemas.enums import BreakerState, BusMessageType, EmergencyLevel, MessagePriority
from schemas.nissa import SeedStageChanged
from schemas.runtime import BreakerTransition, ChildFailed, ChildRestarted, EmergencySignal, SupervisorEscalated
from schemas.state import SystemStatePacket
from schemas.telemetry import MetricPoint, TelemetryEvent, TelemetryPacket

if TYPE_CHECKING:
    from collections.abc import Callable

    from esper.runtime.bus import Bus
    from esper.runtime.clock import Clock
    from esper.runtime.events import EventSink
    from esper.runtime.ref import ActorRef
    from schemas.base import Message, Record
    from schemas.config import BreakerConfig

Published = (
    TelemetryEvent
    | EmergencySignal
    | BreakerTransition
    | ChildFailed
    | ChildRestarted
    | SupervisorEscalated
    | SeedStageChanged
    | SystemStatePacket
    | BoundaryApplied
)
PUBLISHED: Final = typing.get_args(Published)
PUBLISHER = "oona-publisher"
DEPTH_METRIC = "oona.queue.depth"
_DEPTH_EVERY_S = 10.0  # each report is also a line of events.jsonl

_EMERGENCY_PRIORITY: Final = {
    EmergencyLevel.L1_NOTICE: MessagePriority.NORMAL,
    EmergencyLevel.L2_ELEVATED: MessagePriority.HIGH,
    EmergencyLevel.L3_CONSERVATIVE: MessagePriority.CRITICAL,
    EmergencyLevel.L4_HALT: MessagePriority.CRITICAL,
}

_log = structlog.get_logger("actors.oona")


def route(event: Published) -> tuple[Topic, BusMessageType, MessagePriority]:
    """The topic, message type and priority an event is published with."""
    if isinstance(event, EmergencySignal):
        return Topic.EMERGENCY, BusMessageType.EMERGENCY_SIGNAL, _EMERGENCY_PRIORITY[event.level]
    if isinstance(event, SystemStatePacket):
        return Topic.TELEMETRY, BusMessageType.SYSTEM_STATE, MessagePriority.NORMAL
    return Topic.TELEMETRY, BusMessageType.TELEMETRY, MessagePriority.NORMAL


@final
@dataclass(slots=True)
class BusLosses:
    """The run's events that never reached the bus, across every incarnation of the publisher (summary.json's
    ``bus_dropped``). Event loop only."""

    unavailable: int = 0  # the bus did not answer: failed, refused by the open breaker, or still queued at the stop
    overflow: int = 0  # refused by the publisher's full mailbox (BusSink): it fell behind, on a slow or hung server
    oversized: int = 0  # refused by the bus as over its oona.max_payload_bytes (Redis): no retry could publish them
    # Shed by the bus (telemetry over its topic's oona.queue_depth_high backlog, which every run on a shared Redis
    # prefix fills, or an emergency signal past oona.emergency_rate_per_min): the bus answered, and dropped it.
    shed: int = 0
    behind_warned: bool = False  # oona_publisher_behind is said once a run
    shed_warned: bool = False  # oona_bus_shedding is said once a run
    oversized_warned: set[str] = field(default_factory=set)  # message types oona_event_too_large was said for

    @property
    def missed(self) -> int:
        """Those lost to the bus not answering or to the full mailbox: what the outage and behind warnings count."""
        return self.unavailable + self.overflow

    @property
    def total(self) -> int:
        return self.missed + self.oversized + self.shed


@final
class OonaPublisher(Actor[Published]):
    """Publishes each event it is told on the bus; event loop only.

    The bus is for observers, so its server going away (Redis down or hung) must not stop training: a publish the
    server does not answer, or that fails in any other way, is a failure of the ``oona.publish`` breaker and the
    event is dropped; while the breaker is
    open events are dropped without trying, and after ``open_s`` a probe tries again. The outage is logged once when
    it starts (``oona_bus_unavailable``) and once when publishing works again (``oona_bus_restored``) or the run
    stops inside it (``oona_bus_unavailable_at_stop``), the last two with the count of every event lost since the
    bus last answered: those it dropped, and those its full mailbox refused (``losses``, shared with the BusSink).
    Events lost to a full mailbox while the bus answers (it is slower than the events come) are said once a run
    (``oona_publisher_behind``). An event the bus refuses as over its size limit (``oona.max_payload_bytes``) is
    dropped and counted (``losses.oversized``), said once a run per message type (``oona_event_too_large``); it is no
    failure of the server, so the breaker is not told. At a requested stop the events still queued are published (or
    counted lost, in an outage, without waiting on the server again) rather than left to become dead letters.
    """

    def __init__(
        self,
        bus: Bus,
        *,
        clock: Clock,
        sink: EventSink,
        breaker: BreakerConfig | None = None,
        capacity: int = 1024,
        losses: BusLosses | None = None,
    ) -> None:
        super().__init__(inbox=PUBLISHED, capacity=capacity)
        self._bus = bus
        self._breaker = CircuitBreaker.configured("oona.publish", breaker, clock=clock, sink=sink)
        self._losses = losses if losses is not None else BusLosses()
        # losses.missed when the bus last answered (or this incarnation started): what an outage's count starts from.
        self._answered_total = self._losses.missed
        self._outage_from: int | None = None  # _answered_total as the current outage began; None while the bus answers
        self._clock = clock
        self._sink = sink
        self._depth_reported_s: float | None = None
        self.published = 0
        self.dropped = 0

    async def handle(self, msg: Published) -> None:
        if not self._breaker.allow():
            self._losses.unavailable += 1
            return
        topic, message_type, priority = route(msg)
        try:
            result = await self._bus.publish(topic, msg, message_type=message_type, priority=priority)
        except PayloadTooLarge as err:
            # Refused before reaching the server, so it says nothing of the server's health: a half-open probe's slot
            # is given back for the next event to try.
            self._breaker.release_probe()
            self._too_large(err)
            return
        except Exception as err:  # noqa: BLE001  # any failure to publish drops the event: observers never end a run
            # Not only BusUnavailable: a bus that fails some other way every time crashed this actor each event, and
            # its restarts ended the run (RestartIntensityExceeded) for the sake of observers.
            self._breaker.record_failure(type(err).__name__)
            if self._outage_from is None:
                self._outage_from = self._answered_total
                error = str(err) if isinstance(err, BusUnavailable) else f"{type(err).__name__}: {err}"
                _log.warning("oona_bus_unavailable", actor=PUBLISHER, error=error, dropping="until it answers")
            self._losses.unavailable += 1
            return
        self._breaker.record_success()
        self._answered()
        if result.status is PublishStatus.DROPPED:
            # Unread: shed from a topic no subscriber existed for in this process, which is no loss, so neither
            # counted nor said.
            if not result.unread:
                self.dropped += 1
                self._shed(msg)
        else:
            self.published += 1
        self._report_depth()

    def breaker_state(self) -> BreakerState:
        return self._breaker.state

    async def on_stop(self) -> None:
        if self.stopping:
            await self._publish_queued()
        lost = self._losses.missed
        if self._outage_from is not None:
            # The run ends inside an outage: oona_bus_restored, which says how many were dropped, will not come.
            _log.warning("oona_bus_unavailable_at_stop", actor=PUBLISHER, dropped=lost - self._outage_from)
        elif lost > self._answered_total:
            self._behind(lost - self._answered_total)

    async def _publish_queued(self) -> None:
        """Publish what is queued at a requested stop; in an outage, count it lost without waiting on the server (a
        hung one would hold the stop for a timeout per event)."""
        mailbox = self._mailbox
        assert mailbox is not None, "stopped before it was bound"
        while (item := mailbox.receive_nowait()) is not None:
            msg, reply = item
            if self._outage_from is None:
                await self.handle(msg)
            else:
                self._losses.unavailable += 1
            if reply is not None and not reply.done():
                reply.set_result(None)

    def _answered(self) -> None:
        """The bus answered: end an outage with its count, or say once that the mailbox overflowed meanwhile."""
        lost = self._losses.missed
        if self._outage_from is not None:
            _log.info("oona_bus_restored", actor=PUBLISHER, dropped=lost - self._outage_from)
            self._outage_from = None
        elif lost > self._answered_total:
            self._behind(lost - self._answered_total)
        self._answered_total = lost

    def _too_large(self, err: PayloadTooLarge) -> None:
        losses = self._losses
        losses.oversized += 1
        if err.message_type not in losses.oversized_warned:
            losses.oversized_warned.add(err.message_type)
            _log.warning(
                "oona_event_too_large",
                actor=PUBLISHER,
                message_type=err.message_type,
                size=err.size,
                max_payload_bytes=err.limit,
                dropping="every event of this type over the limit (counted in bus_dropped)",
            )

    def _shed(self, msg: Published) -> None:
        # Counted in bus_dropped (summary.json said 0 of a run whose every event the bus shed) and said once a run.
        losses = self._losses
        losses.shed += 1
        if not losses.shed_warned:
            losses.shed_warned = True
            _log.warning(
                "oona_bus_shedding",
                actor=PUBLISHER,
                message_type=type(msg).__name__,
                dropping=(
                    "events the bus sheds under load: its topic's backlog reached oona.queue_depth_high (shared by"
                    " every run on the same oona.stream_prefix, kept oona.message_ttl_s when nobody reads it) or"
                    " emergency signals past oona.emergency_rate_per_min (counted in bus_dropped)"
                ),
            )

    def _behind(self, dropped: int) -> None:
        if not self._losses.behind_warned:
            self._losses.behind_warned = True
            _log.warning(
                "oona_publisher_behind",
                actor=PUBLISHER,
                dropped=dropped,
                error="its mailbox was full: the bus answers more slowly than the run's events come",
            )

    def _report_depth(self) -> None:
        """The ``oona.queue.depth`` gauge, at most every 10 s of the run clock: the deepest observed topic's backlog as
        the bus measures it for shedding (retained or unacknowledged messages), which Nissa's oona_queue_depth alert
        watches. Topics no consumer group reads are left out: they keep messages for late subscribers up to the
        shedding level on any run longer than a minute, which is no backlog of anyone's."""
        now = self._clock.now()
        if self._depth_reported_s is not None and now - self._depth_reported_s < _DEPTH_EVERY_S:
            return
        self._depth_reported_s = now
        topics = self._bus.statistics().topics
        depth = max((max(t.depth, t.pending) for t in topics if t.groups), default=0)
        point = MetricPoint(name=DEPTH_METRIC, value=float(depth))
        self._sink.emit(
            TelemetryPacket(packet_id=f"oona-depth-{self.published}", source="oona", issued_at=now, metrics=(point,))
        )


@final
class BusSink:
    """An EventSink that hands the published event types to the publisher without waiting.

    ``resolve`` returns the publisher's ref once the tree runs (None before): events before that are not published.
    An event the publisher's full mailbox refuses is counted in ``losses.overflow`` (the publisher reports it).
    """

    def __init__(self, resolve: Callable[[], ActorRef[Published] | None], losses: BusLosses | None = None) -> None:
        self._resolve = resolve
        self.losses = losses if losses is not None else BusLosses()

    def emit(self, event: Message | Record) -> None:
        if not isinstance(event, PUBLISHED):
            return
        ref = self._resolve()
        if ref is None:
            return
        try:
            ref.tell_nowait(event)
        except MailboxFull:
            self.losses.overflow += 1
        except ActorStopped:
            return
