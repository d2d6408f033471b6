"""Telemetry contracts: metric points, structured events and the packets that carry them to Nissa."""

from __future__ import annotations

from msgspec import field

from schemas.base import Message, Record
from schemas.domain_enums import TelemetryLevel
from schemas.enums import HealthStatus, MessagePriority

AttributeValue = str | int | float | bool


class MetricPoint(Record, frozen=True):
    """One sample of a named metric (``tolaria.training.loss``); the unit is in the name or in ``unit``."""

    name: str
    value: float
    unit: str = ""
    attributes: dict[str, str] = field(default_factory=dict)


class TelemetryEvent(Message, frozen=True):
    """A named structured event (``gate_failure``, ``command_rejected``, ...) with typed scalar attributes."""

    name: str
    level: TelemetryLevel
    description: str = ""
    attributes: dict[str, AttributeValue] = field(default_factory=dict)
    run_id: str | None = None  # set by the run's event sink: runs publishing on one Redis prefix are told apart


class TelemetryPacket(Message, frozen=True):
    """A batch of metrics and events from one actor; its level is that of its worst event."""

    packet_id: str
    source: str
    issued_at: float
    level: TelemetryLevel = TelemetryLevel.INFO
    run_id: str | None = None
    global_step: int | None = None
    metrics: tuple[MetricPoint, ...] = ()
    events: tuple[TelemetryEvent, ...] = ()
    health: HealthStatus | None = None

    @property
    def priority(self) -> MessagePriority:
        """Bus priority from the level: CRITICAL -> CRITICAL, WARNING or ERROR -> HIGH, else NORMAL."""
        if self.level is TelemetryLevel.CRITICAL:
            return MessagePriority.CRITICAL
        if self.level in (TelemetryLevel.WARNING, TelemetryLevel.ERROR):
            return MessagePriority.HIGH
        return MessagePriority.NORMAL
