"""A Redis server that goes away mid-run, on a real redis-server of the test's own.

Bus calls raise BusUnavailable, the publisher drops events behind its breaker instead of failing (which restarted every
actor after it and ended the run), publishing resumes when the server is back, and housekeeping skips its tick."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from typing import TYPE_CHECKING, final

import pytest
import structlog

from actors.oona.housekeeping import trimmer
from actors.oona.publisher import PUBLISHER, OonaPublisher
from esper.runtime.bus import Topic
from esper.runtime.bus_redis import RedisBus
from esper.runtime.bus_redis_open import open_redis_bus, redis_client
from esper.runtime.child_spec import ChildSpec
from esper.runtime.errors import BusUnavailable
from esper.runtime.system import ActorSystem
from schemas.config import BreakerConfig
from schemas.domain_enums import TelemetryLevel
from schemas.enums import BreakerState, BusMessageType
from schemas.runtime import BreakerTransition
from schemas.telemetry import TelemetryEvent
from tests.test_bus_conformance import under_ci

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

    from esper.runtime.clock import ManualClock
    from esper.runtime.events import RecordingSink


@final
class RedisServer:
    """A private redis-server on a free loopback port, without persistence, that a test can stop and start again."""

    def __init__(self, directory: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._directory = directory
        self._process: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        process = subprocess.Popen(command, cwd=self._directory, stdout=subprocess.PIPE, text=True)
        assert process.stdout is not None
        for line in process.stdout:  # the barrier: the server says when it accepts connections
            if "Ready to accept connections" in line:
                break
        else:
            raise RuntimeError(f"redis-server exited with {process.wait()} before accepting connections")
        self._process = process

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            process.kill()
            process.wait()
            assert process.stdout is not None
            process.stdout.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    pytest.importorskip("redis")
    if shutil.which("redis-server") is None:
        if under_ci():
            pytest.fail("CI installs redis-server (.ci/redis), but it is not on PATH")
        pytest.skip("needs the redis-server binary")
    own = RedisServer(tmp_path)
    own.start()
    try:
        yield own
    finally:
        own.stop()


def event(name: str) -> TelemetryEvent:
    return TelemetryEvent(name=name, level=TelemetryLevel.INFO)


async def test_the_publisher_rides_out_an_outage_and_publishes_again(
    server: RedisServer, clock: ManualClock, sink: RecordingSink
) -> None:
    breaker = BreakerConfig(failure_threshold=2, open_s=5.0, success_threshold=1)
    async with open_redis_bus(server.url, clock, prefix="outage") as bus:
        await bus.subscribe(Topic.TELEMETRY, group="observer")
        system = ActorSystem(clock=clock, sink=sink)
        await system.start(ChildSpec(PUBLISHER, lambda: OonaPublisher(bus, clock=clock, sink=sink, breaker=breaker)))
        publisher = system.ref(PUBLISHER, OonaPublisher)
        with structlog.testing.capture_logs() as logs:
            await publisher.ask(event("before"), type(None))
            assert (await bus.receive(Topic.TELEMETRY, group="observer", consumer="c")).payload == event("before")
            server.stop()
            for name in ("lost-1", "lost-2", "refused-by-the-open-breaker"):
                await publisher.ask(event(name), type(None))  # the barrier; none of them raises
            assert [(t.from_state, t.to_state) for t in sink.of_type(BreakerTransition)] == [
                (BreakerState.CLOSED, BreakerState.OPEN)
            ]
            server.start()
            await bus.subscribe(Topic.TELEMETRY, group="observer")  # a server without persistence forgot the group
            clock.advance(5.0)
            await publisher.ask(event("after"), type(None))
        assert (await bus.receive(Topic.TELEMETRY, group="observer", consumer="c")).payload == event("after")
        transitions = [t.to_state for t in sink.of_type(BreakerTransition)]
        assert transitions[-2:] == [BreakerState.HALF_OPEN, BreakerState.CLOSED]
        outage = [(e["event"], e.get("dropped")) for e in logs if e["event"].startswith("oona_bus")]
        assert outage == [("oona_bus_unavailable", None), ("oona_bus_restored", 3)]
        [state] = system.snapshot()
        assert (state.failed, state.restarts) == (0, 0)
        await system.stop()


async def test_a_run_that_ends_inside_an_outage_says_how_many_events_it_dropped(
    server: RedisServer, clock: ManualClock, sink: RecordingSink
) -> None:
    """The count came only with oona_bus_restored: a run ending before the server was back never said it."""
    breaker = BreakerConfig(failure_threshold=2, open_s=5.0, success_threshold=1)
    async with open_redis_bus(server.url, clock, prefix="outage-end") as bus:
        system = ActorSystem(clock=clock, sink=sink)
        await system.start(ChildSpec(PUBLISHER, lambda: OonaPublisher(bus, clock=clock, sink=sink, breaker=breaker)))
        publisher = system.ref(PUBLISHER, OonaPublisher)
        with structlog.testing.capture_logs() as logs:
            server.stop()
            for name in ("lost-1", "lost-2", "lost-3"):
                await publisher.ask(event(name), type(None))
            await system.stop()
            server.start()
        ended = [(e["event"], e.get("dropped")) for e in logs if e["event"].startswith("oona_bus")]
        assert ended == [("oona_bus_unavailable", None), ("oona_bus_unavailable_at_stop", 3)]


async def test_bus_calls_raise_bus_unavailable_and_housekeeping_skips_its_tick(
    server: RedisServer, clock: ManualClock
) -> None:
    async with open_redis_bus(server.url, clock, prefix="outage") as bus:
        trim = trimmer(bus)
        await trim()
        server.stop()
        with pytest.raises(BusUnavailable, match=r"^the Redis server did not answer: "):
            await bus.publish(Topic.TELEMETRY, event("x"), message_type=BusMessageType.TELEMETRY)
        with structlog.testing.capture_logs() as logs:
            await trim()
            await trim()
        assert [e["event"] for e in logs] == ["oona_trim_skipped"]  # once per outage
        server.start()
        with structlog.testing.capture_logs() as logs:
            await trim()
        assert logs == []
        server.stop()  # closing the bus and its client must not fail on a server that is gone


async def test_a_server_out_of_memory_is_unavailable_not_a_crash(server: RedisServer, clock: ManualClock) -> None:
    """Under noeviction a full Redis refuses writes with OOM: that crashed the publisher (and, restart after restart,
    the run); it is an outage like a server that does not answer."""
    import redis

    admin = redis.Redis.from_url(server.url)
    try:
        async with open_redis_bus(server.url, clock, prefix="oom") as bus:
            await bus.publish(Topic.TELEMETRY, event("before"), message_type=BusMessageType.TELEMETRY)
            admin.config_set("maxmemory", 1)  # the default policy is noeviction: every write is refused
            with pytest.raises(BusUnavailable, match=r"^the Redis server refused the call: .*maxmemory"):
                await bus.publish(Topic.TELEMETRY, event("x"), message_type=BusMessageType.TELEMETRY)
            admin.config_set("maxmemory", 0)
            await bus.publish(Topic.TELEMETRY, event("after"), message_type=BusMessageType.TELEMETRY)
    finally:
        admin.close()


@pytest.fixture
async def hung_url() -> AsyncIterator[str]:
    """A server that accepts connections and never answers, as a Redis server stopped with SIGSTOP does."""
    pytest.importorskip("redis")
    held: list[asyncio.StreamWriter] = []

    async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


def test_a_call_waits_for_the_server_one_second_unless_the_url_says_otherwise() -> None:
    """The client's own default is 5 s, which held the publisher that long per event on a hung server."""
    pytest.importorskip("redis")
    assert redis_client("redis://127.0.0.1:6379/0").connection_pool.connection_kwargs["socket_timeout"] == 1.0
    own = redis_client("redis://127.0.0.1:6379/0?socket_timeout=5").connection_pool.connection_kwargs
    assert (own["socket_timeout"], own["socket_connect_timeout"]) == (5.0, 1.0)


async def test_a_hung_server_fails_each_call_after_the_timeout_and_opens_the_breaker(
    hung_url: str, clock: ManualClock, sink: RecordingSink
) -> None:
    with pytest.raises(ConnectionError, match="Timeout"):  # the start's check: one line, not a wait of 5 s
        async with open_redis_bus(hung_url, clock, prefix="hung", timeout_s=0.05):
            pass
    client = redis_client(hung_url, timeout_s=0.05)
    bus = RedisBus(clock, client, prefix="hung")
    started_s = time.monotonic()
    with pytest.raises(BusUnavailable, match=r"^the Redis server did not answer: TimeoutError"):
        await bus.publish(Topic.TELEMETRY, event("x"), message_type=BusMessageType.TELEMETRY)
    assert time.monotonic() - started_s < 1.0
    breaker = BreakerConfig(failure_threshold=2, open_s=5.0, success_threshold=1)
    system = ActorSystem(clock=clock, sink=sink)
    await system.start(ChildSpec(PUBLISHER, lambda: OonaPublisher(bus, clock=clock, sink=sink, breaker=breaker)))
    publisher = system.ref(PUBLISHER, OonaPublisher)
    with structlog.testing.capture_logs() as logs:
        for name in ("lost-1", "lost-2", "refused-by-the-open-breaker"):
            await publisher.ask(event(name), type(None))
        [state] = system.snapshot()
        assert state.breaker is BreakerState.OPEN
        await system.stop()
    ended = [(e["event"], e.get("dropped")) for e in logs if e["event"].startswith("oona_bus")]
    assert ended == [("oona_bus_unavailable", None), ("oona_bus_unavailable_at_stop", 3)]
    await bus.close()
    await client.aclose()
