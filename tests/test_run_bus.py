"""The run's events on Oona: routed by topic and priority, and followed over Redis from another process.

The publisher routes them by topic and priority, and with oona.backend = "redis" an observer in another process (here:
another bus object on the same stream prefix) follows a real run."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING

import msgspec

import esper
from actors.oona.publisher import PUBLISHER, BusSink, OonaPublisher
from esper.runtime.bus import Topic
from esper.runtime.bus_inproc import InProcessBus
from esper.runtime.bus_redis import RedisBus
from esper.runtime.child_spec import ChildSpec
from esper.runtime.clock import MonotonicClock
from esper.runtime.events import RecordingSink
from esper.runtime.system import ActorSystem
from esper.session_events import FanoutSink
from schemas.config import RunConfig
from schemas.domain_enums import TelemetryLevel
from schemas.enums import ActorStatus, EmergencyLevel, MessagePriority, SeedLifecycleStage
from schemas.nissa import SeedStageChanged
from schemas.runtime import ActorState, ChildFailed, EmergencySignal
from schemas.state import SystemStatePacket
from schemas.telemetry import TelemetryEvent, TelemetryPacket
from tests.test_bus_conformance import REDIS_URL, connect_redis

if TYPE_CHECKING:
    from pathlib import Path

    from esper.runtime.clock import ManualClock


async def test_the_publisher_routes_events_by_topic_and_priority(clock: ManualClock) -> None:
    bus = InProcessBus(clock)
    await bus.subscribe([Topic.EMERGENCY, Topic.TELEMETRY], group="observer")
    system = ActorSystem(clock=clock, sink=RecordingSink())
    await system.start(ChildSpec(PUBLISHER, lambda: OonaPublisher(bus, clock=clock, sink=RecordingSink())))
    sink = BusSink(lambda: system.ref(PUBLISHER, OonaPublisher))
    signal = EmergencySignal(
        level=EmergencyLevel.L3_CONSERVATIVE,
        previous=EmergencyLevel.L1_NOTICE,
        reason="breaker_open",
        origin="tolaria",
        monotonic_time_ms=1.0,
        run_id="r",
    )
    event = TelemetryEvent(name="loss_spike", level=TelemetryLevel.WARNING)
    sink.emit(signal)
    sink.emit(event)
    # A Record, not a Message: it stays local.
    sink.emit(
        ActorState(
            actor="a",
            status=ActorStatus.RUNNING,
            mailbox_depth=0,
            mailbox_capacity=1,
            handled=0,
            failed=0,
            restarts=0,
        )
    )
    async with asyncio.timeout(1):
        first = await bus.receive([Topic.EMERGENCY, Topic.TELEMETRY], group="observer", consumer="c")
        second = await bus.receive([Topic.EMERGENCY, Topic.TELEMETRY], group="observer", consumer="c")
    assert (first.topic, first.payload, first.priority) == (Topic.EMERGENCY, signal, MessagePriority.CRITICAL)
    assert (second.topic, second.payload) == (Topic.TELEMETRY, event)
    assert bus.statistics().of(Topic.TELEMETRY).depth == 1, "the actor state record was not published"
    await system.stop()
    await bus.close()


async def test_a_run_on_the_redis_bus_is_followed_from_another_bus_object(tmp_path: Path) -> None:
    client = await connect_redis()
    prefix = f"esper-test-{uuid.uuid4().hex}"
    observer = RedisBus(MonotonicClock(), client, prefix=prefix)
    try:
        # The observer's group exists before the run publishes, so it sees every message.
        await observer.subscribe([Topic.TELEMETRY, Topic.EMERGENCY], group="observer")
        config = msgspec.convert(
            {
                "runs_dir": str(tmp_path / "runs"),
                "logging": {"console": False},
                "urza": {"root": str(tmp_path / "urza")},
                "tolaria": {"epochs": 1, "dataset_samples": 500},
                "oona": {"backend": "redis", "redis_url": REDIS_URL, "stream_prefix": prefix},
            },
            RunConfig,
        )
        system = await esper.start(config, run_dir=tmp_path / "run")
        summary = await system.wait()
        assert summary.status == "completed"
        kinds: set[type] = set()
        runs: set[str | None] = set()
        async with asyncio.timeout(10):
            while SystemStatePacket not in kinds or TelemetryEvent not in kinds:
                envelope = await observer.receive([Topic.TELEMETRY, Topic.EMERGENCY], group="observer", consumer="o")
                kinds.add(type(envelope.payload))
                runs.add(getattr(envelope.payload, "run_id", "no such field"))
                await observer.ack(envelope)
        # Every message names its run: telemetry events did not, so runs sharing a prefix could not be told apart.
        assert runs == {summary.run_id}
    finally:
        await observer.purge()
        await observer.close()
        await client.aclose()


async def test_the_publisher_reports_the_bus_depth_that_nissas_alert_watches(clock: ManualClock) -> None:
    """No code emitted oona.queue.depth, so the oona_queue_depth alert could never fire."""
    bus = InProcessBus(clock)
    await bus.subscribe(Topic.EMERGENCY, group="observer")  # a topic nobody reads keeps messages, but is no backlog
    recorded = RecordingSink()
    system = ActorSystem(clock=clock, sink=RecordingSink())
    await system.start(ChildSpec(PUBLISHER, lambda: OonaPublisher(bus, clock=clock, sink=recorded)))
    publisher = system.ref(PUBLISHER, OonaPublisher)

    def depths() -> list[float]:
        return [p.value for t in recorded.of_type(TelemetryPacket) for p in t.metrics if p.name == "oona.queue.depth"]

    for name in ("a", "b", "c"):
        await publisher.ask(
            TelemetryEvent(name=name, level=TelemetryLevel.INFO), type(None)
        )  # the barrier: each is published
    assert depths() == [0.0]  # reported with the first publish, then at most every 10 s of the run clock
    await bus.subscribe(Topic.TELEMETRY, group="observer")
    clock.advance(10.0)
    await publisher.ask(TelemetryEvent(name="d", level=TelemetryLevel.INFO), type(None))
    assert depths() == [0.0, 4.0]  # the observer has not read a telemetry message yet
    await system.stop()
    await bus.close()


def test_the_run_sink_writes_the_run_id_into_the_events_that_name_none() -> None:
    recorded = RecordingSink()
    sink = FanoutSink(recorded, run_id="run-1")
    stage = SeedStageChanged(
        slot="blocks.0", from_stage=SeedLifecycleStage.DORMANT, to_stage=SeedLifecycleStage.GERMINATED, step=8
    )
    sink.emit(TelemetryEvent(name="loss_spike", level=TelemetryLevel.WARNING))
    sink.emit(stage)
    sink.emit(ChildFailed(supervisor="root", child="tamiyo", error_type="ValueError", error="x"))
    sink.emit(TelemetryEvent(name="other", level=TelemetryLevel.INFO, run_id="run-0"))  # named already: kept
    assert [getattr(event, "run_id", None) for event in recorded.events] == ["run-1", "run-1", "run-1", "run-0"]
    assert recorded.events[1] == msgspec.structs.replace(stage, run_id="run-1")
