"""StructlogSink: events named after their type in snake_case, fields flattened, levels derived from the event."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec
import pytest
import structlog
from structlog.testing import LogCapture

from esper.log_events import StructlogSink, event_level, event_name, log_actor_state
from esper.logs import configure_logging, get_logger, reset_logging
from esper.tail_render import parse_actor_state, parse_line
from schemas.base import Message
from schemas.domain_enums import TelemetryLevel
from schemas.enums import ActorStatus, BreakerState, EmergencyLevel
from schemas.runtime import (
    ActorState,
    BreakerTransition,
    ChildFailed,
    ChildRestarted,
    EmergencySignal,
    SupervisorEscalated,
)
from schemas.telemetry import TelemetryEvent

if TYPE_CHECKING:
    from pathlib import Path

    from structlog.typing import FilteringBoundLogger

    from esper.runtime.events import EventSink


class KernelCatalogUpdate(Message, frozen=True):
    """A message the sink has no special rule for; also checks acronym-free CamelCase splitting."""

    entries: int


def capturing_logger() -> tuple[FilteringBoundLogger, LogCapture]:
    """A logger bound to its own capture pipeline: no process-wide configuration involved."""
    capture = LogCapture()
    logger: FilteringBoundLogger = structlog.wrap_logger(
        None, processors=[capture], wrapper_class=structlog.make_filtering_bound_logger(0)
    )
    return logger, capture


def emergency(level: EmergencyLevel) -> EmergencySignal:
    return EmergencySignal(
        level=level,
        previous=EmergencyLevel.L1_NOTICE,
        reason="budget breach",
        origin="nissa",
        monotonic_time_ms=12.5,
        run_id="r1",
    )


def breaker(to_state: BreakerState) -> BreakerTransition:
    return BreakerTransition(
        breaker="tamiyo.policy", from_state=BreakerState.CLOSED, to_state=to_state, reason="3 failures", at_s=4.0
    )


STATE = ActorState(
    actor="kasmina",
    status=ActorStatus.RUNNING,
    mailbox_depth=3,
    mailbox_capacity=64,
    handled=120,
    failed=1,
    restarts=0,
    breaker=BreakerState.HALF_OPEN,
    last_latency_ms=0.75,
)


def test_sink_satisfies_the_event_sink_protocol() -> None:
    logger, capture = capturing_logger()
    sink: EventSink = StructlogSink(logger)
    sink.emit(KernelCatalogUpdate(entries=1))
    assert [entry["event"] for entry in capture.entries] == ["kernel_catalog_update"]


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        (ChildFailed, "child_failed"),
        (SupervisorEscalated, "supervisor_escalated"),
        (BreakerTransition, "breaker_transition"),
        (EmergencySignal, "emergency_signal"),
        (ActorState, "actor_state"),
        (KernelCatalogUpdate, "kernel_catalog_update"),
    ],
)
def test_event_names_are_snake_case_type_names(kind: type[Message], name: str) -> None:
    assert event_name(kind) == name


@pytest.mark.parametrize(
    ("event", "level"),
    [
        (ChildFailed(supervisor="w", child="tolaria", error_type="RuntimeError", error="x"), "warning"),
        (ChildRestarted(supervisor="w", child="tolaria", restarts=1, backoff_s=0.5), "info"),
        (SupervisorEscalated(supervisor="w", child="tolaria", restarts=5, window_s=60.0), "error"),
        (breaker(BreakerState.OPEN), "warning"),
        (breaker(BreakerState.HALF_OPEN), "info"),
        (breaker(BreakerState.CLOSED), "info"),
        (emergency(EmergencyLevel.L1_NOTICE), "info"),
        (emergency(EmergencyLevel.L2_ELEVATED), "warning"),
        (emergency(EmergencyLevel.L3_CONSERVATIVE), "error"),
        (emergency(EmergencyLevel.L4_HALT), "critical"),
        (KernelCatalogUpdate(entries=2), "info"),
        (TelemetryEvent(name="seed_transition", level=TelemetryLevel.INFO), "info"),
        (TelemetryEvent(name="seed_culled", level=TelemetryLevel.WARNING), "warning"),
        (TelemetryEvent(name="loss_spike", level=TelemetryLevel.ERROR), "error"),
        (TelemetryEvent(name="command_rejected", level=TelemetryLevel.CRITICAL), "critical"),
    ],
)
def test_levels_follow_the_event(event: Message, level: str) -> None:
    assert event_level(event) == level
    logger, capture = capturing_logger()
    StructlogSink(logger).emit(event)
    (entry,) = capture.entries
    assert entry["log_level"] == level
    assert entry["event"] == event_name(type(event))


def test_fields_are_flattened_without_the_type_tag() -> None:
    logger, capture = capturing_logger()
    StructlogSink(logger).emit(breaker(BreakerState.OPEN))
    (entry,) = capture.entries
    assert entry == {
        "event": "breaker_transition",
        "log_level": "warning",
        "breaker": "tamiyo.policy",
        "from_state": "closed",
        "to_state": "open",
        "reason": "3 failures",
        "at_s": 4.0,
        "run_id": None,  # a run's sink writes its id here
    }


def test_a_field_named_like_a_reserved_key_is_prefixed() -> None:
    logger, capture = capturing_logger()
    StructlogSink(logger).emit(emergency(EmergencyLevel.L4_HALT))
    (entry,) = capture.entries
    assert entry["log_level"] == "critical"
    assert entry["msg_level"] == int(EmergencyLevel.L4_HALT)
    assert entry["previous"] == int(EmergencyLevel.L1_NOTICE)
    assert entry["origin"] == "nissa"


def test_log_actor_state_writes_every_state_field() -> None:
    logger, capture = capturing_logger()
    log_actor_state(logger, STATE)
    StructlogSink(logger).emit(STATE)  # the sink accepts the record too
    first, second = capture.entries
    assert first == second
    assert first == {
        "event": "actor_state",
        "log_level": "info",
        "actor": "kasmina",
        "status": "running",
        "mailbox_depth": 3,
        "mailbox_capacity": 64,
        "handled": 120,
        "failed": 1,
        "restarts": 0,
        "breaker": "half_open",
        "last_latency_ms": 0.75,
    }


def test_actor_state_round_trips_through_the_file_and_the_tail(tmp_path: Path) -> None:
    """The contract --state relies on: what log_actor_state writes, the tail reads back as the same ActorState."""
    logging = configure_logging(tmp_path, console=False)
    try:
        sink = StructlogSink()
        sink.emit(STATE)
        log_actor_state(get_logger(), msgspec.structs.replace(STATE, breaker=None, last_latency_ms=None))
        sink.emit(ChildFailed(supervisor="weatherlight", child="tolaria", error_type="ValueError", error="bad"))
    finally:
        logging.close()
        reset_logging()
    assert logging.json_path is not None
    events = [parse_line(line) for line in logging.json_path.read_text().splitlines()]
    assert all(event is not None for event in events)
    first, second, failed = (event for event in events if event is not None)
    assert parse_actor_state(first) == STATE
    bare = parse_actor_state(second)
    assert bare is not None
    assert (bare.breaker, bare.last_latency_ms) == (None, None)
    assert (failed.event, failed.level, failed.fields["child"]) == ("child_failed", "warning", "tolaria")
