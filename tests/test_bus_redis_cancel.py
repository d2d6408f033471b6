"""A task cancelled while a Redis bus call is in flight ends cancelled, on the real server.

redis-py lost a cancel that arrived just after a command was sent (Python 3.11's wait_for, CPython gh-86296), and the
call returned as if nothing had happened, so an observer cancelled in its ack went on reading and a publisher cancelled
at a stop's deadline went on publishing."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from esper.runtime.bus import Topic
from esper.runtime.bus_redis_open import open_redis_bus
from schemas.domain_enums import TelemetryLevel
from schemas.enums import BusMessageType
from schemas.telemetry import TelemetryEvent
from tests.test_bus_conformance import REDIS_URL

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from redis.asyncio import Redis

    from esper.runtime.bus_redis import RedisBus
    from esper.runtime.clock import ManualClock
    from tests._redis_fixtures import CancelOnSend

EVENT = TelemetryEvent(name="x", level=TelemetryLevel.INFO)
GROUP = "g"


async def _publish(bus: RedisBus) -> object:
    return await bus.publish(Topic.TELEMETRY, EVENT, message_type=BusMessageType.TELEMETRY)


async def _receive(bus: RedisBus) -> object:
    return await bus.receive(Topic.TELEMETRY, group=GROUP, consumer="c")


CALLS: dict[str, Callable[[RedisBus], Coroutine[object, object, object]]] = {
    "publish": _publish,
    "receive": _receive,
    "subscribe": lambda bus: bus.subscribe(Topic.TELEMETRY, group=GROUP),
    "backlog": lambda bus: bus.backlog(Topic.TELEMETRY, GROUP),
    "trim_expired": lambda bus: bus.trim_expired(),
    "fetch_statistics": lambda bus: bus.fetch_statistics(),
    "purge": lambda bus: bus.purge(),
}


@pytest.mark.parametrize("name", sorted(CALLS))
async def test_a_call_cancelled_just_after_its_command_was_sent_raises_cancelled_error(
    name: str, client: Redis, prefix: str, clock: ManualClock, cancel_on_send: CancelOnSend
) -> None:
    async with open_redis_bus(REDIS_URL, clock, prefix=prefix) as bus:
        await bus.subscribe(Topic.TELEMETRY, group=GROUP)
        await _publish(bus)  # a message for receive, and the connection made before the cancel is armed
        cancel_on_send.arm()
        task: asyncio.Task[object] = asyncio.create_task(CALLS[name](bus))
        await asyncio.wait((task,))
        assert task.cancelled(), f"{name} returned {task.result()!r} although its task was cancelled"
        assert cancel_on_send.victim is task
        assert cancel_on_send.went_on == 0
        assert bus.in_flight == 0


@pytest.mark.parametrize("verdict", ["ack", "nack"])
async def test_an_ack_or_nack_cancelled_just_after_it_was_sent_raises_cancelled_error(
    verdict: str, client: Redis, prefix: str, clock: ManualClock, cancel_on_send: CancelOnSend
) -> None:
    async with open_redis_bus(REDIS_URL, clock, prefix=prefix) as bus:
        await bus.subscribe(Topic.TELEMETRY, group=GROUP)
        await _publish(bus)
        envelope = await bus.receive(Topic.TELEMETRY, group=GROUP, consumer="c")
        cancel_on_send.arm()
        call = bus.ack(envelope) if verdict == "ack" else bus.nack(envelope, "failed")
        task: asyncio.Task[object] = asyncio.create_task(call)
        await asyncio.wait((task,))
        assert task.cancelled(), f"{verdict} returned {task.result()!r} although its task was cancelled"
        assert cancel_on_send.went_on == 0


async def test_opening_the_bus_cancelled_just_after_a_command_was_sent_raises_cancelled_error(
    client: Redis, prefix: str, clock: ManualClock, cancel_on_send: CancelOnSend
) -> None:
    opened: list[RedisBus] = []

    async def start() -> None:
        async with open_redis_bus(REDIS_URL, clock, prefix=prefix) as bus:
            opened.append(bus)

    cancel_on_send.arm()
    task = asyncio.create_task(start())
    await asyncio.wait((task,))
    assert task.cancelled()
    assert opened == []


async def test_the_cancel_of_a_call_that_also_failed_is_a_cancel_not_an_outage(
    client: Redis, prefix: str, clock: ManualClock, cancel_on_send: CancelOnSend
) -> None:
    """A cancel lost in the send of a call whose reply is an error (here the server refusing the script) must not
    come out as BusUnavailable, which the publisher takes for an outage and carries on."""
    async with open_redis_bus(REDIS_URL, clock, prefix=prefix) as bus:
        await client.set(f"{prefix}:oona.telemetry", b"not a stream")  # the publish script's XLEN fails on it
        cancel_on_send.arm()
        task = asyncio.create_task(_publish(bus))
        await asyncio.wait((task,))
        assert task.cancelled()
