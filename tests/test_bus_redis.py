"""The Redis Streams bus beyond the conformance suite: the wire format, several bus objects on one prefix, keys."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest
import structlog
import structlog.testing

from esper.runtime.bus import BusLimits, PublishStatus, Topic
from esper.runtime.bus_redis import RedisBus, schema_message_types
from esper.runtime.bus_redis_open import open_redis_bus
from esper.runtime.errors import BusUnavailable, PayloadTooLarge
from schemas.base import Message
from schemas.enums import BusMessageType, EmergencyLevel, MessagePriority
from schemas.runtime import EmergencySignal
from tests.test_bus_conformance import REDIS_URL, Ping, connect_redis, settle, within
from tests.test_contracts_wire import EXAMPLES

if TYPE_CHECKING:
    from collections.abc import Callable

    from redis.asyncio import Redis

    from esper.runtime.clock import ManualClock


@pytest.fixture
def make(clock: ManualClock, client: Redis, prefix: str) -> Callable[..., RedisBus]:
    def build(limits: BusLimits | None = None, *, poll_min_s: float = 0.002, poll_max_s: float = 0.05) -> RedisBus:
        types: tuple[type[Message], ...] = (*schema_message_types(), Ping)
        return RedisBus(
            clock,
            client,
            prefix=prefix,
            limits=limits,
            message_types=types,
            poll_min_s=poll_min_s,
            poll_max_s=poll_max_s,
        )

    return build


def test_schema_message_types_are_the_concrete_messages_of_the_schemas_package() -> None:
    types = schema_message_types()
    assert EmergencySignal in types
    assert Message not in types
    assert all(issubclass(cls, Message) for cls in types)
    assert len({cls.__name__ for cls in types}) == len(types)


async def test_every_schema_message_round_trips_through_redis_as_its_own_type(make: Callable[..., RedisBus]) -> None:
    bus = make()
    examples = [example for cls, example in EXAMPLES.items() if cls in schema_message_types()]
    assert isinstance(examples[0], Message)
    for example in examples:
        assert isinstance(example, Message)
        result = await bus.publish(Topic.NORMAL, example, message_type=BusMessageType.FIELD_REPORT)
        assert result.status is PublishStatus.PUBLISHED
    for example in examples:
        envelope = await within(bus.receive(Topic.NORMAL, group="g", consumer="c"))
        assert type(envelope.payload) is type(example)
        assert envelope.payload == example
        assert await bus.ack(envelope)


async def test_publish_refuses_oversized_payloads_and_unregistered_types(
    clock: ManualClock, client: Redis, prefix: str
) -> None:
    bus = RedisBus(clock, client, prefix=prefix, max_payload_bytes=64)
    with pytest.raises(TypeError, match="Ping is not among"):
        await bus.publish(Topic.NORMAL, Ping(n=1), message_type=BusMessageType.ADAPTATION_COMMAND)
    huge = EmergencySignal(
        level=EmergencyLevel.L2_ELEVATED,
        previous=EmergencyLevel.L1_NOTICE,
        reason="x" * 100,
        origin="tamiyo",
        monotonic_time_ms=0.0,
        run_id="r",
    )
    with pytest.raises(PayloadTooLarge, match="over max_payload_bytes=64"):
        await bus.publish(Topic.NORMAL, huge, message_type=BusMessageType.EMERGENCY_SIGNAL)
    assert (await bus.fetch_statistics()).published == 0


async def test_client_that_decodes_responses_is_refused(clock: ManualClock) -> None:
    await (await connect_redis()).aclose()  # skip without a server, like the other tests
    import redis.asyncio  # here, not at the top: connect_redis() has skipped already if the package is missing

    text_client = redis.asyncio.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        with pytest.raises(ValueError, match="decode_responses=False"):
            RedisBus(clock, text_client, prefix="p")
    finally:
        await text_client.aclose()


async def test_two_bus_objects_on_one_prefix_are_one_bus(make: Callable[..., RedisBus], client: Redis) -> None:
    a, b = make(), make()
    await b.subscribe(Topic.NORMAL, group="kasmina")
    published = await a.publish(Topic.NORMAL, Ping(n=1), message_type=BusMessageType.ADAPTATION_COMMAND)
    assert published.message_id is not None
    assert await client.type(f"{a.prefix}:{Topic.NORMAL.value}") == b"stream"
    envelope = await within(b.receive(Topic.NORMAL, group="kasmina", consumer="k1"))
    assert (envelope.message_id, envelope.payload) == (published.message_id, Ping(n=1))
    assert await a.ack(envelope)
    stats = (await b.fetch_statistics()).of(Topic.NORMAL)
    assert (stats.published, stats.delivered, stats.acked, stats.depth) == (1, 1, 1, 0)


async def test_waiting_receiver_sees_another_objects_publish_by_polling_the_clock(
    make: Callable[..., RedisBus], clock: ManualClock
) -> None:
    a, b = make(), make(poll_min_s=0.5, poll_max_s=0.5)
    async with asyncio.TaskGroup() as tg:
        waiting = tg.create_task(b.receive(Topic.NORMAL, group="g", consumer="c"))
        await settle(b)
        await a.publish(Topic.NORMAL, Ping(n=3), message_type=BusMessageType.ADAPTATION_COMMAND)
        await settle(b)
        assert not waiting.done()  # b learns of a's publish only when its poll comes due
        clock.advance(0.5)
        envelope = await within(waiting)
    assert envelope.payload == Ping(n=3)


async def test_message_taken_by_a_closed_bus_object_is_claimed_by_another(
    make: Callable[..., RedisBus], clock: ManualClock
) -> None:
    crashed, survivor = make(), make()
    await survivor.publish(Topic.NORMAL, Ping(n=9), message_type=BusMessageType.ADAPTATION_COMMAND)
    taken = await within(crashed.receive(Topic.NORMAL, group="kasmina", consumer="old"))
    await crashed.close()
    clock.advance(60.0)
    claimed = await within(survivor.receive(Topic.NORMAL, group="kasmina", consumer="new"))
    assert (claimed.message_id, claimed.attempts, claimed.consumer) == (taken.message_id, 2, "new")
    assert await survivor.ack(claimed)


async def test_emergency_bucket_and_coalescing_are_shared_by_every_bus_object(make: Callable[..., RedisBus]) -> None:
    limits = BusLimits(emergency_rate_per_min=1.0)
    a, b = make(limits), make(limits)

    async def emit(bus: RedisBus, level: EmergencyLevel) -> PublishStatus:
        signal = EmergencySignal(
            level=level,
            previous=EmergencyLevel.L1_NOTICE,
            reason="r",
            origin="tamiyo",
            monotonic_time_ms=0.0,
            run_id="r",
        )
        result = await bus.publish(
            Topic.EMERGENCY, signal, message_type=BusMessageType.EMERGENCY_SIGNAL, priority=MessagePriority.CRITICAL
        )
        return result.status

    assert await emit(a, EmergencyLevel.L2_ELEVATED) is PublishStatus.PUBLISHED
    assert await emit(b, EmergencyLevel.L4_HALT) is PublishStatus.COALESCED
    envelope = await within(a.receive(Topic.EMERGENCY, group="weatherlight", consumer="w"))
    assert isinstance(envelope.payload, EmergencySignal)
    assert envelope.payload.level is EmergencyLevel.L4_HALT
    assert (await a.fetch_statistics()).emergency_rate_dropped == 1


async def test_purge_deletes_every_key_of_the_prefix_and_nothing_else(
    make: Callable[..., RedisBus], client: Redis, prefix: str
) -> None:
    bus = make()
    await bus.publish(Topic.NORMAL, Ping(n=1), message_type=BusMessageType.ADAPTATION_COMMAND)
    envelope = await within(bus.receive(Topic.NORMAL, group="g", consumer="c"))
    await bus.nack(envelope, "boom")
    await client.set(f"{prefix}-other", b"kept")
    try:
        await bus.close()
        assert await bus.purge() > 0
        assert [key async for key in client.scan_iter(match=f"{prefix}:*")] == []
        assert await client.get(f"{prefix}-other") == b"kept"
    finally:
        await client.delete(f"{prefix}-other")


async def test_open_redis_bus_connects_and_closes(clock: ManualClock, prefix: str) -> None:
    async with open_redis_bus(REDIS_URL, clock, prefix=prefix, topics=[Topic.NORMAL]) as bus:
        assert bus.topics == {Topic.NORMAL, Topic.DEAD_LETTER}
        await bus.subscribe(Topic.NORMAL, group="g")
        assert (await bus.fetch_statistics()).of(Topic.NORMAL).groups == 1
    assert bus.statistics().closed


async def test_an_address_that_answers_but_not_as_redis_is_a_value_error(clock: ManualClock, prefix: str) -> None:
    """A server of another protocol there gave the client's InvalidResponse traceback (exit 1) instead of one line."""

    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(http, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(ValueError, match=r"^what answers there is not a Redis server \(InvalidResponse"):
            async with open_redis_bus(f"redis://127.0.0.1:{port}/0", clock, prefix=prefix):
                pass
    finally:
        server.close()
        await server.wait_closed()


async def test_credentials_the_server_refuses_are_said_so_not_that_it_does_not_answer(
    clock: ManualClock, prefix: str
) -> None:
    """A wrong password was reported as 'does not answer' (the client's AuthenticationError is a ConnectionError)."""
    with pytest.raises(ValueError, match=r"^the server refused the credentials: "):
        async with open_redis_bus("redis://nobody:wrong@127.0.0.1:6379/0", clock, prefix=prefix):
            pass


async def test_a_password_the_server_never_asks_for_is_said_once(clock: ManualClock, prefix: str) -> None:
    """The test server requires no password (the client fixture connects without one): a URL that gives one was
    accepted silently, the client's HELLO AUTH succeeding for any password, so a user believed the streams protected."""
    with structlog.testing.capture_logs() as logs:
        async with open_redis_bus("redis://:s3cret@127.0.0.1:6379/0", clock, prefix=prefix):
            pass
        async with open_redis_bus("redis://default:s3cret@127.0.0.1:6379/0", clock, prefix=prefix):
            pass
        async with open_redis_bus(REDIS_URL, clock, prefix=prefix):  # no password: nothing to say
            pass
    warnings = [entry for entry in logs if entry["event"] == "oona_redis_password_unneeded"]
    assert [(entry["log_level"], entry["url"]) for entry in warnings] == [
        ("warning", "redis://:***@127.0.0.1:6379/0"),
        ("warning", "redis://default:***@127.0.0.1:6379/0"),
    ]
    assert "requires none" in warnings[0]["detail"]
    assert "s3cret" not in repr(logs)


async def test_any_client_error_mid_run_is_the_bus_unavailable(
    make: Callable[..., RedisBus], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only connection errors and refusals became BusUnavailable: a protocol error from whatever took over the
    address crashed the publisher, whose restarts restarted the trainer until the run failed. (The real outage, a
    stopped server, is tests/test_bus_outage.py's.)"""
    import redis.exceptions

    bus = make()

    async def garbled(*_args: object, **_kwargs: object) -> object:
        raise redis.exceptions.InvalidResponse("Protocol Error: b'HTTP/1.1 400 Bad Request'")

    for name in list(bus._scripts.by_name):
        monkeypatch.setitem(bus._scripts.by_name, name, garbled)
    with pytest.raises(BusUnavailable, match=r"did not answer: InvalidResponse: Protocol Error"):
        await bus.publish(Topic.NORMAL, Ping(n=1), message_type=BusMessageType.TELEMETRY)
    await bus.close()
