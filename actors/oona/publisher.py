"""Oona's publisher: puts the run's typed events on the bus so observers in other processes (Redis) can follow a run.

The event sink hands events to this actor's mailbox without waiting (``BusSink``); the actor publishes each on its
topic: emergency signals on the emergency lane with a priority from their level, everything else on the telemetry
topic. Telemetry may be shed by the bus under backpressure (counted there); a full mailbox drops the event here
(counted) rather than stall whoever emitted it.
"""

from __future__ import annotations

import typing
from typing import TYPE_CHECKING, Final, final

import structlog

from esper.runtime.actor import Actor
from esper.runtime.breaker import CircuitBreaker
from esper.runtime.bus import PublishStatus, Topic
from esper.runtime.errors import ActorStopped, BusUnavailable, MailboxFull
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
class OonaPublisher(Actor[Published]):
    """Publishes each event it is told on the bus; event loop only.

    The bus is for observers, so its server going away (Redis down) must not stop training: a publish the server does
    not answer is a failure of the ``oona.publish`` breaker and the event is dropped (counted in ``unavailable``);
    while the breaker is open events are dropped without trying, and after ``open_s`` a probe tries again. The
    outage is logged once when it starts (``oona_bus_unavailable``) and once when publishing works again
    (``oona_bus_restored``, with the count dropped).
    """

    def __init__(
        self,
        bus: Bus,
        *,
        clock: Clock,
        sink: EventSink,
        breaker: BreakerConfig | None = None,
        capacity: int = 1024,
    ) -> None:
        super().__init__(inbox=PUBLISHED, capacity=capacity)
        self._bus = bus
        self._breaker = CircuitBreaker.configured("oona.publish", breaker, clock=clock, sink=sink)
        self._outage_dropped: int | None = None  # events dropped in the current outage; None while the bus answers
        self._clock = clock
        self._sink = sink
        self._depth_reported_s: float | None = None
        self.published = 0
        self.dropped = 0
        self.unavailable = 0

    async def handle(self, msg: Published) -> None:
        if not self._breaker.allow():
            self._drop_unavailable()
            return
        topic, message_type, priority = route(msg)
        try:
            result = await self._bus.publish(topic, msg, message_type=message_type, priority=priority)
        except BusUnavailable as err:
            self._breaker.record_failure(type(err).__name__)
            if self._outage_dropped is None:
                self._outage_dropped = 0
                _log.warning("oona_bus_unavailable", actor=PUBLISHER, error=str(err), dropping="until it answers")
            self._drop_unavailable()
            return
        self._breaker.record_success()
        if self._outage_dropped is not None:
            _log.info("oona_bus_restored", actor=PUBLISHER, dropped=self._outage_dropped)
            self._outage_dropped = None
        if result.status is PublishStatus.DROPPED:
            self.dropped += 1
        else:
            self.published += 1
        self._report_depth()

    def breaker_state(self) -> BreakerState:
        return self._breaker.state

    async def on_stop(self) -> None:
        if self._outage_dropped is not None:
            # The run ends inside an outage: oona_bus_restored, which says how many were dropped, will not come.
            _log.warning("oona_bus_unavailable_at_stop", actor=PUBLISHER, dropped=self._outage_dropped)

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

    def _drop_unavailable(self) -> None:
        self.unavailable += 1
        if self._outage_dropped is not None:
            self._outage_dropped += 1


@final
class BusSink:
    """An EventSink that hands the published event types to the publisher without waiting.

    ``resolve`` returns the publisher's ref once the tree runs (None before): events before that are not published.
    """

    def __init__(self, resolve: Callable[[], ActorRef[Published] | None]) -> None:
        self._resolve = resolve
        self.dropped = 0

    def emit(self, event: Message | Record) -> None:
        if not isinstance(event, PUBLISHED):
            return
        ref = self._resolve()
        if ref is None:
            return
        try:
            ref.tell_nowait(event)
        except MailboxFull:
            self.dropped += 1
        except ActorStopped:
            return
