"""README's observer example ("Watching the bus from another process") runs as written.

It runs against the real Redis server, and what the section says of the keys holds: an observer in another process had
only the sweeper's guesswork."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from actors.oona.publisher import route
from esper.runtime.bus_redis_open import open_redis_bus
from esper.runtime.clock import MonotonicClock
from schemas.domain_enums import TelemetryLevel
from schemas.runtime import EmergencySignal
from schemas.telemetry import TelemetryEvent
from tests.test_bus_conformance import REDIS_URL
from tests.test_contracts_wire import EXAMPLES

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from redis.asyncio import Redis

    from tests._redis_fixtures import CancelOnSend

README = Path(__file__).resolve().parent.parent / "README.md"
SECTION = "### Watching the bus from another process"


class _Seen(Exception):
    """Every published message was printed."""


def readme_example() -> str:
    """The first python block of the README's section on watching the bus."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index(SECTION) :]
    found = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert found is not None, f"no python block under {SECTION!r}"
    return found.group(1)


async def test_the_readmes_observer_reads_a_runs_messages_and_the_keys_are_as_it_says(
    client: Redis, prefix: str
) -> None:
    published = [
        TelemetryEvent(name="seed_op_failed", level=TelemetryLevel.WARNING, run_id="run-a"),
        EXAMPLES[EmergencySignal],
    ]
    async with open_redis_bus(REDIS_URL, MonotonicClock(), prefix=prefix) as run_bus:  # the run's side
        for message in published:
            assert isinstance(message, TelemetryEvent | EmergencySignal)
            topic, message_type, priority = route(message)
            await run_bus.publish(topic, message, message_type=message_type, priority=priority)
    # The fields the section names, and no expiry on any key once the run's bus is closed.
    entries = await client.xrange(f"{prefix}:oona.telemetry")
    assert entries is not None
    [(_, fields)] = entries
    assert fields is not None
    assert set(fields) == {b"t", b"p", b"at", b"b"}
    assert await client.exists(f"{prefix}:oona.telemetry:stats") == 1
    assert {await client.ttl(key) async for key in client.scan_iter(match=f"{prefix}:*")} == {-1}

    # The example as printed in the README, its print recorded; the last line it prints ends it (a cancel ends it
    # too: test_the_readmes_observer_ends_when_cancelled_even_as_its_ack_is_sent).
    printed: list[str] = []

    def record(*values: object, flush: bool = False) -> None:
        printed.append(" ".join(str(value) for value in values))
        if len(printed) == len(published):
            raise _Seen

    namespace: dict[str, object] = {"__name__": "readme_example", "print": record}
    exec(compile(readme_example(), str(README), "exec"), namespace)  # the README's own code
    watch = namespace["watch"]
    assert callable(watch)
    start: Callable[[str, str, str], Coroutine[object, object, None]] = watch
    with pytest.raises(_Seen):
        async with asyncio.timeout(10):
            await start(REDIS_URL, prefix, "readme-observer")
    assert sorted(printed) == [
        "oona.emergency EmergencySignal run-20250101-000000",
        "oona.telemetry TelemetryEvent run-a",
    ]
    # The observer has quit: its consumer group stays on the server until the prefix's keys are deleted.
    groups = await client.xinfo_groups(f"{prefix}:oona.telemetry")
    assert [group["name"] for group in groups] == [b"readme-observer"]
    assert groups[0]["pending"] == 1  # the emergency lane is read first: the telemetry entry was never acked
    assert {await client.ttl(key) async for key in client.scan_iter(match=f"{prefix}:*")} == {-1}


async def test_the_readmes_observer_ends_when_cancelled_even_as_its_ack_is_sent(
    client: Redis, prefix: str, cancel_on_send: CancelOnSend
) -> None:
    """redis-py lost a cancel that arrived just after a command was sent (Python 3.11's wait_for): a watcher cancelled
    in its ack went on reading for good. Here the cancel arrives as the ack after its one print is sent; the watcher
    must end cancelled, not send another command (refused: WentOn)."""
    async with open_redis_bus(REDIS_URL, MonotonicClock(), prefix=prefix) as run_bus:
        message = TelemetryEvent(name="seed_op_failed", level=TelemetryLevel.WARNING, run_id="run-a")
        topic, message_type, priority = route(message)
        await run_bus.publish(topic, message, message_type=message_type, priority=priority)
    printed: list[str] = []

    def record(*values: object, flush: bool = False) -> None:
        printed.append(" ".join(str(value) for value in values))
        cancel_on_send.arm(refuse=True)  # the next command is the ack

    namespace: dict[str, object] = {"__name__": "readme_example", "print": record}
    exec(compile(readme_example(), str(README), "exec"), namespace)  # the README's own code
    watch = namespace["watch"]
    assert callable(watch)
    start: Callable[[str, str, str], Coroutine[object, object, None]] = watch
    task = asyncio.create_task(start(REDIS_URL, prefix, "readme-observer"))
    await asyncio.wait((task,))
    assert task.cancelled(), f"the watcher lost its cancel: {task.exception()!r}"
    assert printed == ["oona.telemetry TelemetryEvent run-a"]
    assert cancel_on_send.went_on == 0
    groups = await client.xinfo_groups(f"{prefix}:oona.telemetry")
    assert groups[0]["pending"] == 0  # the ack was sent, and the server took it
