"""The Redis bus against values another process wrote under its keys.

Any Redis writer could end the run with one HSET (a counter that is no number cut the scripts' reply short, and the
ValueError crashed the publisher until the restarts gave up); now such a value is repaired or passed over, and a reply
the bus cannot read is an outage."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import structlog

from actors.oona.housekeeping import trimmer
from actors.oona.publisher import PUBLISHER, OonaPublisher
from esper.runtime.bus import BusLimits, PublishStatus, Topic
from esper.runtime.bus_redis import RedisBus, schema_message_types
from esper.runtime.bus_redis_reply import ReplyError
from esper.runtime.child_spec import ChildSpec
from esper.runtime.errors import BusUnavailable
from esper.runtime.system import ActorSystem
from schemas.domain_enums import TelemetryLevel
from schemas.enums import BreakerState, BusMessageType, EmergencyLevel, MessagePriority
from schemas.runtime import EmergencySignal
from schemas.telemetry import TelemetryEvent
from tests.test_bus_conformance import Ping, within

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from esper.runtime.clock import ManualClock
    from esper.runtime.events import RecordingSink


def _bus(clock: ManualClock, client: Redis, prefix: str, limits: BusLimits | None = None) -> RedisBus:
    return RedisBus(clock, client, prefix=prefix, limits=limits, message_types=(*schema_message_types(), Ping))


def _event(name: str) -> TelemetryEvent:
    return TelemetryEvent(name=name, level=TelemetryLevel.INFO)


async def test_a_counter_that_is_no_number_is_reset_counted_and_warned_once(
    clock: ManualClock, sink: RecordingSink, client: Redis, prefix: str
) -> None:
    """The review's repro: HSET <prefix>:oona.telemetry:stats emergency_rate_dropped abc, then a run on the prefix."""
    stats_key = f"{prefix}:{Topic.TELEMETRY.value}:stats"
    await client.hset(stats_key, "emergency_rate_dropped", "abc")
    bus = _bus(clock, client, prefix)
    system = ActorSystem(clock=clock, sink=sink)
    await system.start(ChildSpec(PUBLISHER, lambda: OonaPublisher(bus, clock=clock, sink=sink)))
    publisher = system.ref(PUBLISHER, OonaPublisher)
    with structlog.testing.capture_logs() as logs:
        await trimmer(bus)()
        for name in ("a", "b"):
            await publisher.ask(_event(name), type(None))
        (state,) = [state for state in system.snapshot() if state.actor == PUBLISHER]
        await system.stop()
    assert [e["event"] for e in logs] == ["oona_bus_counter_repaired"]
    assert logs[0]["topic"] == Topic.TELEMETRY.value
    assert bus.repaired_values == 1
    telemetry = bus.statistics().of(Topic.TELEMETRY)
    assert (telemetry.published, telemetry.emergency_rate_dropped) == (2, 0)
    assert await client.hget(stats_key, "emergency_rate_dropped") == b"0"
    assert (state.handled, state.failed, state.restarts, state.breaker) == (2, 0, 0, BreakerState.CLOSED)


async def test_a_counter_a_script_increments_is_reset_before_the_increment(
    clock: ManualClock, client: Redis, prefix: str
) -> None:
    """HINCRBY on a value that is no integer fails the whole script: the publish was refused for good."""
    await client.hset(f"{prefix}:{Topic.NORMAL.value}:stats", "published", "1.5")
    bus = _bus(clock, client, prefix)
    result = await bus.publish(Topic.NORMAL, Ping(n=1), message_type=BusMessageType.ADAPTATION_COMMAND)
    assert result.status is PublishStatus.PUBLISHED
    assert bus.statistics().of(Topic.NORMAL).published == 1
    assert bus.repaired_values == 1


async def test_an_entry_this_bus_did_not_write_is_dead_lettered_not_delivered(
    clock: ManualClock, client: Redis, prefix: str
) -> None:
    """An entry without the bus's fields (no publish time) failed every take on the stream."""
    bus = _bus(clock, client, prefix)
    await client.xadd(f"{prefix}:{Topic.NORMAL.value}", {"foo": "bar"})
    await bus.publish(Topic.NORMAL, Ping(n=2), message_type=BusMessageType.ADAPTATION_COMMAND)
    envelope = await within(bus.receive(Topic.NORMAL, group="g", consumer="c"))
    assert envelope.payload == Ping(n=2)
    assert bus.statistics().of(Topic.NORMAL).dead_letter_total == 1
    assert bus.statistics().of(Topic.DEAD_LETTER).depth == 0  # nothing of it is re-published


async def test_housekeeping_trims_an_entry_without_a_publish_time(
    clock: ManualClock, client: Redis, prefix: str
) -> None:
    bus = _bus(clock, client, prefix)
    await client.xadd(f"{prefix}:{Topic.TELEMETRY.value}", {"at": "soon"})
    assert await bus.trim_expired() == 1
    assert await client.xlen(f"{prefix}:{Topic.TELEMETRY.value}") == 0


async def test_a_stored_value_the_bus_cannot_read_is_an_outage_not_a_value_error(
    clock: ManualClock, client: Redis, prefix: str
) -> None:
    """A coalesced priority that is no number reaches the reply: ReplyError, a BusUnavailable, which the publisher's
    breaker and housekeeping take as an outage (a ValueError crashed them)."""
    bus = _bus(clock, client, prefix)
    published = await bus.publish(Topic.NORMAL, Ping(n=3), message_type=BusMessageType.ADAPTATION_COMMAND)
    await client.hset(f"{prefix}:{Topic.NORMAL.value}:over", f"p:{published.message_id}", "high")
    with pytest.raises(ReplyError, match=r"^malformed reply to the take script: ValueError: ") as caught:
        await bus.receive(Topic.NORMAL, group="g", consumer="c")
    assert isinstance(caught.value, BusUnavailable)
    assert "\n" not in str(caught.value)


async def test_a_foreign_coalescing_target_and_level_do_not_fail_an_emergency_publish(
    clock: ManualClock, client: Redis, prefix: str
) -> None:
    """A held level that is no number (compared with nil) or an origin's target that is no stream id (XRANGE refused
    it) failed every emergency signal of that origin while the lane was over its rate."""
    bus = _bus(clock, client, prefix, BusLimits(emergency_rate_per_min=1.0))
    emergency = f"{prefix}:{Topic.EMERGENCY.value}"

    async def emit(origin: str, level: EmergencyLevel) -> PublishStatus:
        signal = EmergencySignal(
            level=level, previous=EmergencyLevel.L1_NOTICE, reason="r", origin=origin, monotonic_time_ms=0.0, run_id="r"
        )
        result = await bus.publish(
            Topic.EMERGENCY, signal, message_type=BusMessageType.EMERGENCY_SIGNAL, priority=MessagePriority.CRITICAL
        )
        return result.status

    assert await emit("tamiyo", EmergencyLevel.L2_ELEVATED) is PublishStatus.PUBLISHED  # the one token
    (held,) = await client.hvals(f"{emergency}:origins")
    assert isinstance(held, bytes)
    await client.hset(f"{emergency}:over", b"l:" + held, "loud")
    await client.hset(f"{emergency}:origins", "kasmina", "not-an-id")
    assert await emit("tamiyo", EmergencyLevel.L4_HALT) is PublishStatus.COALESCED
    assert await emit("kasmina", EmergencyLevel.L2_ELEVATED) is PublishStatus.PUBLISHED


async def test_an_emergency_bucket_far_below_zero_refills_like_an_empty_one(
    clock: ManualClock, client: Redis, prefix: str
) -> None:
    """A stored token count of -1e300 kept the lane over its rate (dropping what it may drop) for good."""
    bus = _bus(clock, client, prefix, BusLimits(emergency_rate_per_min=60.0))
    await client.hset(f"{prefix}:bucket", mapping={"tokens": "-1e300", "at": repr(clock.now())})
    clock.advance(2.0)  # two tokens at 60 a minute
    result = await bus.publish(
        Topic.TELEMETRY, _event("x"), message_type=BusMessageType.TELEMETRY, priority=MessagePriority.HIGH
    )
    assert result.status is PublishStatus.PUBLISHED
