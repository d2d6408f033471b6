"""Conformance suite for Oona backends: every test runs against each backend the `make_bus` fixture builds."""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import TYPE_CHECKING, Protocol, TypeVar

import msgspec
import pytest

from esper.runtime.bus import (
    ALL_TOPICS,
    Bus,
    BusLimits,
    Envelope,
    PublishStatus,
    Topic,
    handle_each,
)
from esper.runtime.bus_inproc import InProcessBus
from esper.runtime.bus_redis import RedisBus, schema_message_types
from esper.runtime.errors import BusClosed, UnknownTopic
from schemas.base import Message
from schemas.enums import BusMessageType, EmergencyLevel, MessagePriority
from schemas.runtime import EmergencySignal

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Iterable

    from redis.asyncio import Redis

    from esper.runtime.clock import ManualClock

T = TypeVar("T")


class Ping(Message, frozen=True):
    n: int


class MakeBus(Protocol):
    def __call__(self, *, limits: BusLimits | None = None, topics: Iterable[Topic] = ALL_TOPICS) -> Bus: ...


REDIS_URL = "redis://127.0.0.1:6379/0"


def under_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false")


async def connect_redis() -> Redis:
    """A client for the test server at 127.0.0.1:6379. Skips without one, except under CI (which starts it): fails."""
    try:  # redis is an optional dependency that only the redis backend needs
        import redis.asyncio
        import redis.exceptions
    except ModuleNotFoundError:
        if under_ci():
            raise
        pytest.skip("the redis package is not installed (pip install redis)")
    client = redis.asyncio.Redis.from_url(REDIS_URL, decode_responses=False)
    try:
        await client.ping()
    except redis.exceptions.ConnectionError as err:
        await client.aclose()
        if under_ci():
            pytest.fail(f"no Redis server answers at {REDIS_URL} under CI: {err}")
        pytest.skip(f"no Redis server answers at {REDIS_URL} (start one with .ci/redis)")
    return client


BACKENDS = [pytest.param("inprocess", id="inprocess"), pytest.param("redis", id="redis")]


@pytest.fixture(params=BACKENDS)
async def make_bus(request: pytest.FixtureRequest, clock: ManualClock) -> AsyncIterator[MakeBus]:
    client = await connect_redis() if request.param == "redis" else None
    prefix = f"esper-test-{uuid.uuid4().hex}"  # unique per test; purged below
    built: list[Bus] = []

    def make(*, limits: BusLimits | None = None, topics: Iterable[Topic] = ALL_TOPICS) -> Bus:
        bus: Bus
        if client is None:
            bus = InProcessBus(clock, topics=topics, limits=limits)
        else:
            types: tuple[type[Message], ...] = (*schema_message_types(), Ping)
            bus = RedisBus(clock, client, prefix=prefix, topics=topics, limits=limits, message_types=types)
        built.append(bus)
        return bus

    try:
        yield make
    finally:
        for bus in built:
            await bus.close()
        if client is not None:
            for bus in built[:1]:
                assert isinstance(bus, RedisBus)
                await bus.purge()
            await client.aclose()


def signal(origin: str, level: EmergencyLevel) -> EmergencySignal:
    return EmergencySignal(
        level=level, previous=EmergencyLevel.L1_NOTICE, reason="test", origin=origin, monotonic_time_ms=0.0, run_id="r"
    )


async def command(bus: Bus, n: int, topic: Topic = Topic.NORMAL) -> str:
    result = await bus.publish(topic, Ping(n=n), message_type=BusMessageType.ADAPTATION_COMMAND)
    assert result.status is PublishStatus.PUBLISHED
    assert result.message_id is not None
    return result.message_id


async def telemetry(bus: Bus, n: int, priority: MessagePriority = MessagePriority.NORMAL) -> PublishStatus:
    result = await bus.publish(Topic.TELEMETRY, Ping(n=n), message_type=BusMessageType.TELEMETRY, priority=priority)
    return result.status


async def settle(bus: Bus) -> None:
    """Let every runnable task reach its next await (a scheduling barrier, not a wait on time).

    A networked backend's tasks are also waiting for replies, so for Redis this waits until none is in flight.
    """
    while True:
        for _ in range(10):
            await asyncio.sleep(0)
        if not isinstance(bus, RedisBus) or not bus.in_flight:
            return
        await bus.wait_idle()


async def within(awaitable: Awaitable[T]) -> T:
    async with asyncio.timeout(1):
        return await awaitable


def payload_n(envelope: Envelope[Message]) -> int:
    assert isinstance(envelope.payload, Ping)
    return envelope.payload.n


async def test_publish_receive_ack_round_trip(make_bus: MakeBus, clock: ManualClock) -> None:
    bus = make_bus()
    clock.advance(5.0)
    message_id = await command(bus, 1)
    envelope = await within(bus.receive(Topic.NORMAL, group="kasmina", consumer="k1"))
    assert envelope.message_id == message_id
    assert envelope.payload == Ping(n=1)
    assert (envelope.topic, envelope.message_type, envelope.priority) == (
        Topic.NORMAL,
        BusMessageType.ADAPTATION_COMMAND,
        MessagePriority.NORMAL,
    )
    assert (envelope.published_at_s, envelope.attempts, envelope.last_error) == (5.0, 1, None)
    assert (envelope.group, envelope.consumer) == ("kasmina", "k1")
    assert await bus.backlog(Topic.NORMAL, "kasmina") == 1
    assert await bus.ack(envelope) is True
    assert await bus.ack(envelope) is False
    stats = bus.statistics().of(Topic.NORMAL)
    assert (stats.published, stats.delivered, stats.acked, stats.depth, stats.pending) == (1, 1, 1, 0, 0)
    assert await bus.backlog(Topic.NORMAL, "kasmina") == 0


async def test_consumers_drain_emergency_then_control_then_telemetry(make_bus: MakeBus) -> None:
    bus = make_bus()
    assert await telemetry(bus, 1) is PublishStatus.PUBLISHED
    await command(bus, 2, Topic.POLICY)
    await command(bus, 3, Topic.NORMAL)
    await bus.publish(Topic.EMERGENCY, Ping(n=4), message_type=BusMessageType.EMERGENCY_SIGNAL)
    # HIGH and CRITICAL ride the emergency lane whatever topic they were sent to.
    critical = await bus.publish(
        Topic.TELEMETRY, Ping(n=5), message_type=BusMessageType.TELEMETRY, priority=MessagePriority.CRITICAL
    )
    assert critical.topic is Topic.EMERGENCY
    topics = [Topic.TELEMETRY, Topic.NORMAL, Topic.POLICY, Topic.EMERGENCY]
    order = []
    for _ in range(5):
        envelope = await within(bus.receive(topics, group="nissa", consumer="n1"))
        order.append(payload_n(envelope))
        await bus.ack(envelope)
    assert order == [4, 5, 3, 2, 1]


async def test_telemetry_is_shed_above_the_threshold_until_recovery(make_bus: MakeBus) -> None:
    bus = make_bus(limits=BusLimits(depth_high=3, depth_recovery=1, capacity=4))
    assert [await telemetry(bus, n) for n in range(4)] == [PublishStatus.PUBLISHED] * 3 + [PublishStatus.DROPPED]
    stats = bus.statistics().of(Topic.TELEMETRY)
    assert (stats.depth, stats.publish_dropped, stats.shedding) == (3, 1, True)
    first = await within(bus.receive(Topic.TELEMETRY, group="nissa", consumer="n1"))
    await bus.ack(first)
    assert await telemetry(bus, 10) is PublishStatus.DROPPED  # depth 2 is still above recovery
    second = await within(bus.receive(Topic.TELEMETRY, group="nissa", consumer="n1"))
    await bus.ack(second)
    assert await telemetry(bus, 11) is PublishStatus.PUBLISHED
    assert bus.statistics().publish_dropped == 2
    assert not bus.statistics().of(Topic.TELEMETRY).shedding


async def test_state_packets_for_observers_are_shed_not_waited_for_when_nobody_reads_them(make_bus: MakeBus) -> None:
    """The publisher's copies of state packets go to observers; on a topic no group reads, a full topic sheds them
    (counted) instead of blocking the publisher for good (a long run wedged the publisher at the topic's capacity)."""
    bus = make_bus(limits=BusLimits(depth_high=3, depth_recovery=1, capacity=4))
    statuses = [
        (await within(bus.publish(Topic.TELEMETRY, Ping(n=n), message_type=BusMessageType.SYSTEM_STATE))).status
        for n in range(10)
    ]
    assert statuses == [PublishStatus.PUBLISHED] * 3 + [PublishStatus.DROPPED] * 7
    assert bus.statistics().of(Topic.TELEMETRY).publish_dropped == 7
    assert bus.statistics().waiting_publishers == 0


async def test_command_publisher_waits_for_space_instead_of_dropping(make_bus: MakeBus) -> None:
    bus = make_bus(limits=BusLimits(depth_high=2, depth_recovery=1, capacity=3))
    for n in range(3):
        await command(bus, n)
    # Prefetch requests on a full topic are shed; commands wait.
    shed = await bus.publish(Topic.NORMAL, Ping(n=99), message_type=BusMessageType.KERNEL_PREFETCH_REQUEST)
    assert shed.status is PublishStatus.DROPPED
    async with asyncio.TaskGroup() as tg:
        waiting = tg.create_task(command(bus, 3))
        await settle(bus)
        assert not waiting.done()
        assert bus.statistics().waiting_publishers == 1
        assert bus.statistics().of(Topic.NORMAL).depth == 3
        envelope = await within(bus.receive(Topic.NORMAL, group="kasmina", consumer="k1"))
        await bus.ack(envelope)
        await within(waiting)
    stats = bus.statistics().of(Topic.NORMAL)
    assert (stats.depth, stats.published, stats.publish_dropped) == (3, 4, 1)
    assert bus.statistics().waiting_publishers == 0


async def test_runs_sharing_a_bus_each_keep_their_signals_past_the_rate(make_bus: MakeBus) -> None:
    """Two runs on one Redis prefix, both Tolaria's: past the rate, the second run's signals (its L4 halt included)
    folded into the first run's pending entry, and its run id never reached the bus."""
    bus = make_bus(limits=BusLimits(emergency_rate_per_min=1.0))

    async def emit(run_id: str, level: EmergencyLevel) -> PublishStatus:
        halt = msgspec.structs.replace(signal("tolaria", level), run_id=run_id)
        result = await bus.publish(
            Topic.EMERGENCY, halt, message_type=BusMessageType.EMERGENCY_SIGNAL, priority=MessagePriority.CRITICAL
        )
        return result.status

    assert await emit("run-1", EmergencyLevel.L2_ELEVATED) is PublishStatus.PUBLISHED  # the bucket's one token
    assert await emit("run-2", EmergencyLevel.L4_HALT) is PublishStatus.PUBLISHED  # its own first past the rate
    assert await emit("run-1", EmergencyLevel.L3_CONSERVATIVE) is PublishStatus.COALESCED  # into run-1's own
    received = []
    for _ in range(2):
        envelope = await within(bus.receive(Topic.EMERGENCY, group="weatherlight", consumer="w"))
        assert isinstance(envelope.payload, EmergencySignal)
        received.append((envelope.payload.run_id, envelope.payload.level))
        await bus.ack(envelope)
    assert received == [("run-1", EmergencyLevel.L3_CONSERVATIVE), ("run-2", EmergencyLevel.L4_HALT)]


async def test_emergency_rate_limit_coalesces_to_the_highest_level_per_origin(
    make_bus: MakeBus, clock: ManualClock
) -> None:
    bus = make_bus(limits=BusLimits(emergency_rate_per_min=2.0))

    async def emit(origin: str, level: EmergencyLevel) -> tuple[PublishStatus, str | None]:
        result = await bus.publish(
            Topic.EMERGENCY,
            signal(origin, level),
            message_type=BusMessageType.EMERGENCY_SIGNAL,
            priority=MessagePriority.CRITICAL,
        )
        return result.status, result.message_id

    a_status, a_id = await emit("tamiyo", EmergencyLevel.L2_ELEVATED)
    b_status, _ = await emit("tolaria", EmergencyLevel.L2_ELEVATED)
    assert (a_status, b_status) == (PublishStatus.PUBLISHED, PublishStatus.PUBLISHED)
    # The bucket is empty: further signals from tamiyo fold into its pending one, keeping the highest level.
    assert await emit("tamiyo", EmergencyLevel.L3_CONSERVATIVE) == (PublishStatus.COALESCED, a_id)
    assert await emit("tamiyo", EmergencyLevel.L1_NOTICE) == (PublishStatus.COALESCED, a_id)
    # An origin with nothing pending still gets its one signal through.
    c_status, _ = await emit("kasmina", EmergencyLevel.L1_NOTICE)
    assert c_status is PublishStatus.PUBLISHED
    # Droppable traffic on the emergency lane past the rate is dropped, never queued.
    assert await telemetry(bus, 1, MessagePriority.HIGH) is PublishStatus.DROPPED
    stats = bus.statistics().of(Topic.EMERGENCY)
    assert (stats.depth, stats.emergency_rate_dropped) == (3, 3)

    levels = []
    for _ in range(3):
        envelope = await within(bus.receive(Topic.EMERGENCY, group="weatherlight", consumer="w"))
        assert isinstance(envelope.payload, EmergencySignal)
        levels.append((envelope.payload.origin, envelope.payload.level))
        await bus.ack(envelope)
    assert levels == [
        ("tamiyo", EmergencyLevel.L3_CONSERVATIVE),
        ("tolaria", EmergencyLevel.L2_ELEVATED),
        ("kasmina", EmergencyLevel.L1_NOTICE),
    ]
    # Once delivered, a signal no longer absorbs later ones; and the bucket refills with time.
    assert (await emit("tamiyo", EmergencyLevel.L4_HALT))[0] is PublishStatus.PUBLISHED
    clock.advance(30.0)
    assert await telemetry(bus, 2, MessagePriority.HIGH) is PublishStatus.PUBLISHED
    assert await telemetry(bus, 3, MessagePriority.HIGH) is PublishStatus.DROPPED
    assert bus.statistics().emergency_rate_dropped == 4


async def test_unacked_message_is_redelivered_to_another_consumer_after_idle(
    make_bus: MakeBus, clock: ManualClock
) -> None:
    bus = make_bus()
    message_id = await command(bus, 1)
    first = await within(bus.receive(Topic.NORMAL, group="kasmina", consumer="k1"))
    async with asyncio.TaskGroup() as tg:
        second = tg.create_task(bus.receive(Topic.NORMAL, group="kasmina", consumer="k2"))
        await settle(bus)
        clock.advance(59.0)
        await settle(bus)
        assert not second.done()
        assert bus.statistics().of(Topic.NORMAL).pending == 1
        clock.advance(1.0)
        redelivered = await within(second)
    assert (redelivered.message_id, redelivered.consumer, redelivered.attempts) == (message_id, "k2", 2)
    assert await bus.ack(redelivered) is True
    assert await bus.ack(first) is False  # the stale delivery was already acked by the group
    assert bus.statistics().of(Topic.NORMAL).delivered == 2


async def test_idle_messages_are_claimed_in_batches(make_bus: MakeBus, clock: ManualClock) -> None:
    bus = make_bus(limits=BusLimits(claim_batch=2))
    for n in range(3):
        await command(bus, n)
    for _ in range(3):
        await within(bus.receive(Topic.NORMAL, group="kasmina", consumer="k1"))
    clock.advance(60.0)
    b1 = await within(bus.receive(Topic.NORMAL, group="kasmina", consumer="k2"))
    c1 = await within(bus.receive(Topic.NORMAL, group="kasmina", consumer="k3"))
    b2 = await within(bus.receive(Topic.NORMAL, group="kasmina", consumer="k2"))
    assert [payload_n(b1), payload_n(b2), payload_n(c1)] == [0, 1, 2]
    assert {b1.attempts, b2.attempts, c1.attempts} == {2}


async def test_dead_letter_after_five_failed_attempts_with_the_last_error(
    make_bus: MakeBus, clock: ManualClock
) -> None:
    bus = make_bus()
    message_id = await command(bus, 7)
    for attempt in range(1, 6):
        envelope = await within(bus.receive(Topic.NORMAL, group="kasmina", consumer="k1"))
        assert envelope.attempts == attempt
        assert envelope.last_error == (None if attempt == 1 else f"boom {attempt - 1}")
        await bus.nack(envelope, f"boom {attempt}")
        clock.advance(60.0)
    stats = bus.statistics()
    assert (stats.dead_letter_total, stats.of(Topic.NORMAL).depth) == (1, 0)
    letter = await within(bus.receive(Topic.DEAD_LETTER, group="nissa", consumer="n1"))
    assert letter.payload == Ping(n=7)
    assert letter.last_error == "boom 5"
    assert letter.dead_letter is not None
    assert (letter.dead_letter.topic, letter.dead_letter.group, letter.dead_letter.message_id) == (
        Topic.NORMAL,
        "kasmina",
        message_id,
    )
    assert (letter.dead_letter.attempts, letter.dead_letter.reason) == (5, "boom 5")


async def test_message_never_acked_is_dead_lettered_when_claimed_after_its_last_attempt(
    make_bus: MakeBus, clock: ManualClock
) -> None:
    bus = make_bus(limits=BusLimits(max_attempts=2))
    await command(bus, 1)
    for _ in range(2):
        await within(bus.receive(Topic.NORMAL, group="kasmina", consumer="k1"))
        clock.advance(60.0)
    letter = await within(bus.receive([Topic.NORMAL, Topic.DEAD_LETTER], group="kasmina", consumer="k1"))
    assert letter.topic is Topic.DEAD_LETTER
    assert letter.last_error == "not acked after 2 deliveries"
    assert bus.statistics().of(Topic.NORMAL).dead_letter_total == 1


async def test_expired_message_read_anyway_goes_to_dead_letters_unprocessed(
    make_bus: MakeBus, clock: ManualClock
) -> None:
    bus = make_bus()
    await command(bus, 1)
    clock.advance(15 * 60 + 1)
    letter = await within(bus.receive([Topic.NORMAL, Topic.DEAD_LETTER], group="kasmina", consumer="k1"))
    assert letter.topic is Topic.DEAD_LETTER
    assert letter.dead_letter is not None
    assert letter.dead_letter.reason == "expired: older than ttl_s=900.0"
    assert bus.statistics().of(Topic.NORMAL).delivered == 0


async def test_housekeeping_trims_expired_messages_and_frees_space(make_bus: MakeBus, clock: ManualClock) -> None:
    bus = make_bus(limits=BusLimits(depth_high=1, depth_recovery=0, capacity=2, ttl_s=10.0))
    await command(bus, 1)
    clock.advance(5.0)
    await command(bus, 2)
    async with asyncio.TaskGroup() as tg:
        waiting = tg.create_task(command(bus, 3))
        await settle(bus)
        assert not waiting.done()
        clock.advance(5.5)
        assert await bus.trim_expired() == 1
        await within(waiting)
    stats = bus.statistics().of(Topic.NORMAL)
    assert (stats.depth, stats.expired_trimmed) == (2, 1)
    received = await within(bus.receive(Topic.NORMAL, group="kasmina", consumer="k1"))
    assert payload_n(received) == 2


async def test_every_group_receives_every_message_and_one_consumer_per_group(make_bus: MakeBus) -> None:
    bus = make_bus()
    await bus.subscribe(Topic.NORMAL, group="audit")
    await bus.subscribe([Topic.NORMAL], group="kasmina")
    await bus.subscribe(Topic.NORMAL, group="kasmina")  # idempotent
    await command(bus, 1)
    await command(bus, 2)
    assert bus.statistics().of(Topic.NORMAL).groups == 2
    a1 = await within(bus.receive(Topic.NORMAL, group="audit", consumer="a1"))
    a2 = await within(bus.receive(Topic.NORMAL, group="audit", consumer="a2"))
    assert [payload_n(a1), payload_n(a2)] == [1, 2]
    for envelope in (a1, a2):
        await bus.ack(envelope)
    # Acked by one group only: the messages stay for the other.
    assert bus.statistics().of(Topic.NORMAL).depth == 2
    b = [await within(bus.receive(Topic.NORMAL, group="kasmina", consumer="k1")) for _ in range(2)]
    assert [payload_n(envelope) for envelope in b] == [1, 2]
    for envelope in b:
        await bus.ack(envelope)
    assert bus.statistics().of(Topic.NORMAL).depth == 0


async def test_unknown_topic_is_refused(make_bus: MakeBus) -> None:
    bus = make_bus(topics=[Topic.NORMAL])
    assert bus.topics == {Topic.NORMAL, Topic.DEAD_LETTER}
    with pytest.raises(UnknownTopic):
        await bus.publish(Topic.POLICY, Ping(n=1), message_type=BusMessageType.POLICY_UPDATE)
    with pytest.raises(UnknownTopic):
        await bus.receive([Topic.NORMAL, Topic.TELEMETRY], group="g", consumer="c")
    with pytest.raises(UnknownTopic):  # CRITICAL routes to the emergency topic, which this bus lacks
        await bus.publish(
            Topic.NORMAL, Ping(n=1), message_type=BusMessageType.ADAPTATION_COMMAND, priority=MessagePriority.CRITICAL
        )
    with pytest.raises(UnknownTopic):
        await bus.backlog(Topic.EMERGENCY, "g")
    assert bus.statistics().published == 0


async def test_close_wakes_waiting_consumers_and_publishers(make_bus: MakeBus) -> None:
    bus = make_bus(limits=BusLimits(depth_high=1, depth_recovery=0, capacity=1))
    await command(bus, 1, Topic.POLICY)
    seen: list[int] = []

    async def iterate() -> None:
        async for envelope in bus.consume(Topic.NORMAL, group="g", consumer="c2"):
            seen.append(payload_n(envelope))

    with pytest.raises(ExceptionGroup) as caught:  # noqa: PT012 - the tasks must be started inside the group
        async with asyncio.TaskGroup() as tg:
            receiver = tg.create_task(bus.receive(Topic.NORMAL, group="g", consumer="c1"))
            publisher = tg.create_task(command(bus, 2, Topic.POLICY))
            iterator = tg.create_task(iterate())
            await settle(bus)
            assert bus.statistics().waiting_receivers == 2
            assert bus.statistics().waiting_publishers == 1
            await bus.close()
    assert [type(error) for error in caught.value.exceptions] == [BusClosed, BusClosed]
    assert receiver.exception() is not None
    assert publisher.exception() is not None
    assert iterator.done()
    assert iterator.exception() is None
    assert seen == []
    assert bus.statistics().closed
    with pytest.raises(BusClosed):
        await command(bus, 3)
    with pytest.raises(BusClosed):
        await bus.receive(Topic.NORMAL, group="g", consumer="c1")
    with pytest.raises(BusClosed):
        await anext(bus.consume(Topic.NORMAL, group="g", consumer="c1"))


async def test_cancelled_receive_leaves_the_bus_unchanged(make_bus: MakeBus) -> None:
    bus = make_bus()
    async with asyncio.TaskGroup() as tg:
        waiting = tg.create_task(bus.receive(Topic.NORMAL, group="g", consumer="c1"))
        await settle(bus)
        waiting.cancel()
    await command(bus, 1)
    envelope = await within(bus.receive(Topic.NORMAL, group="g", consumer="c2"))
    assert (envelope.attempts, envelope.consumer) == (1, "c2")
    assert bus.statistics().waiting_receivers == 0


async def test_group_created_later_starts_at_the_oldest_retained_message(make_bus: MakeBus) -> None:
    bus = make_bus()
    await command(bus, 1)
    await command(bus, 2)
    assert await bus.backlog(Topic.NORMAL, "late") == 2
    envelope = await within(bus.receive(Topic.NORMAL, group="late", consumer="l1"))
    assert payload_n(envelope) == 1


async def test_handle_each_acks_successes_and_nacks_failures(make_bus: MakeBus, clock: ManualClock) -> None:
    bus = make_bus()
    await command(bus, 1)
    await command(bus, 2)
    handled: list[int] = []

    async def handler(envelope: Envelope[Message]) -> None:
        if payload_n(envelope) == 2:
            raise RuntimeError("cannot apply")
        handled.append(payload_n(envelope))

    with pytest.raises(RuntimeError, match="cannot apply"):
        await within(handle_each(bus, handler, Topic.NORMAL, group="kasmina", consumer="k1"))
    assert handled == [1]
    assert bus.statistics().of(Topic.NORMAL).acked == 1
    clock.advance(60.0)
    retried = await within(bus.receive(Topic.NORMAL, group="kasmina", consumer="k1"))
    assert (payload_n(retried), retried.attempts, retried.last_error) == (2, 2, "RuntimeError: cannot apply")


async def test_publish_refuses_a_payload_that_is_not_a_message(make_bus: MakeBus) -> None:
    bus = make_bus()
    with pytest.raises(TypeError, match="payload must be"):
        await bus.publish(Topic.NORMAL, b"raw", message_type=BusMessageType.TELEMETRY)  # type: ignore[arg-type]  # the runtime check is under test


async def test_ack_of_an_envelope_never_delivered_is_refused(make_bus: MakeBus) -> None:
    bus = make_bus()
    message_id = await command(bus, 1)
    undelivered = Envelope[Message](
        message_id=message_id,
        topic=Topic.NORMAL,
        priority=MessagePriority.NORMAL,
        message_type=BusMessageType.ADAPTATION_COMMAND,
        payload=Ping(n=1),
        published_at_s=0.0,
    )
    with pytest.raises(ValueError, match="never delivered"):
        await bus.ack(undelivered)


def test_limits_refuse_inconsistent_depths() -> None:
    with pytest.raises(ValueError, match="depth_recovery < depth_high"):
        BusLimits(depth_high=10, depth_recovery=10)
    with pytest.raises(ValueError, match="claim_idle_s"):
        BusLimits(claim_idle_s=0.0)
    assert BusLimits() == BusLimits(
        depth_high=4000,
        depth_recovery=1000,
        emergency_rate_per_min=120.0,
        claim_idle_s=60.0,
        claim_batch=50,
        max_attempts=5,
        ttl_s=900.0,
    )
