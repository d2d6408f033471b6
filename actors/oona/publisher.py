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
from esper.runtime.bus import PublishStatus, Topic
from esper.runtime.errors import ActorStopped, MailboxFull
from schemas.boundary import BoundaryApplied
from schemas.enums import BusMessageType, EmergencyLevel, MessagePriority
from schemas.nissa import SeedStageChanged
from schemas.runtime import BreakerTransition, ChildFailed, ChildRestarted, EmergencySignal, SupervisorEscalated
from schemas.state import SystemStatePacket
from schemas.telemetry import TelemetryEvent

if TYPE_CHECKING:
    from collections.abc import Callable

    from esper.runtime.bus import Bus
    from esper.runtime.ref import ActorRef
    from schemas.base import Message, Record

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
    """Publishes each event it is told on the bus; event loop only."""

    def __init__(self, bus: Bus, *, capacity: int = 1024) -> None:
        super().__init__(inbox=PUBLISHED, capacity=capacity)
        self._bus = bus
        self.published = 0
        self.dropped = 0

    async def handle(self, msg: Published) -> None:
        topic, message_type, priority = route(msg)
        result = await self._bus.publish(topic, msg, message_type=message_type, priority=priority)
        if result.status is PublishStatus.DROPPED:
            self.dropped += 1
        else:
            self.published += 1


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
