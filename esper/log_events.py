"""Typed events as log lines: the event name, level and fields of a msgspec message, and the sink that logs them."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Final, final

import msgspec

from esper.log_levels import LEVEL_NUMBERS, RESERVED_KEYS
from esper.logs import get_logger
from schemas.base import Message, Record
from schemas.domain_enums import TelemetryLevel
from schemas.enums import BreakerState, EmergencyLevel
from schemas.runtime import ActorState, BreakerTransition, ChildFailed, EmergencySignal, SupervisorEscalated
from schemas.telemetry import TelemetryEvent

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

    from esper.log_levels import LogLevel


_CAMEL_BOUNDARY: Final = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def event_name(kind: type[Message] | type[Record]) -> str:
    """The log event name of a message type: its class name in snake_case (ChildFailed -> child_failed)."""
    return _CAMEL_BOUNDARY.sub("_", kind.__name__).lower()


_EMERGENCY_LEVELS: Final[dict[EmergencyLevel, LogLevel]] = {
    EmergencyLevel.L1_NOTICE: "info",
    EmergencyLevel.L2_ELEVATED: "warning",
    EmergencyLevel.L3_CONSERVATIVE: "error",
    EmergencyLevel.L4_HALT: "critical",
}


_TELEMETRY_LEVELS: Final[dict[TelemetryLevel, LogLevel]] = {
    TelemetryLevel.INFO: "info",
    TelemetryLevel.WARNING: "warning",
    TelemetryLevel.ERROR: "error",
    TelemetryLevel.CRITICAL: "critical",
}


def event_level(event: Message | Record) -> LogLevel:
    """The level a typed event is logged at: failures warn, escalations are errors, L4 is critical, a telemetry
    event at its own severity (a loss spike is an error, a cull a warning), the rest info."""
    match event:
        case ChildFailed():
            return "warning"
        case SupervisorEscalated():
            return "error"
        case BreakerTransition(to_state=BreakerState.OPEN):
            return "warning"
        case EmergencySignal(level=emergency):
            return _EMERGENCY_LEVELS.get(emergency, "warning")
        case TelemetryEvent(level=severity):
            return _TELEMETRY_LEVELS.get(severity, "info")
        case _:
            return "info"


def event_fields(event: Message | Record) -> dict[str, object]:
    """The event's fields as plain JSON values, minus the type tag, with reserved names written as ``msg_<name>``."""
    raw = msgspec.to_builtins(event)
    if not isinstance(raw, dict):  # pragma: no cover - a Struct always becomes a dict
        raise TypeError(f"event {type(event).__name__} did not convert to a mapping")
    fields: dict[str, object] = {}
    for key, value in raw.items():
        if isinstance(event, Message) and key == "type":
            continue
        fields[f"msg_{key}" if key in RESERVED_KEYS else str(key)] = value
    return fields


def log_actor_state(logger: FilteringBoundLogger, state: ActorState) -> None:
    """Log one ``actor_state`` event: actor, status, mailbox_depth, mailbox_capacity, handled, failed, restarts,
    breaker (null when the actor has none), last_latency_ms (null before its first message, and for the trainer). The
    tail's --state reads exactly these fields; ``actor`` names the actor described, overriding any bound actor."""
    logger.info("actor_state", **event_fields(state))


@final
class StructlogSink:
    """An EventSink that logs every typed event as one structured line named after its type.

    emit() runs on the caller's thread (normally the event loop) and does a flushed, un-synced file write; it never
    waits on anything else. ActorState records are accepted too and logged as ``actor_state``.
    """

    def __init__(self, logger: FilteringBoundLogger | None = None) -> None:
        self._logger = logger if logger is not None else get_logger()

    def emit(self, event: Message | Record) -> None:
        if isinstance(event, ActorState):
            log_actor_state(self._logger, event)
            return
        self._logger.log(LEVEL_NUMBERS[event_level(event)], event_name(type(event)), **event_fields(event))
