"""Weatherlight's root tree, the ticker actor, Oona housekeeping and atomic writes."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, final

import pytest

from actors.oona.housekeeping import housekeeping_interval_s, oona_spec
from actors.tolaria.actor import TolariaTrainer
from actors.weatherlight.tree import build_root, state_reporter
from esper.runtime.actor import Actor
from esper.runtime.atomic_write import atomic_write_bytes, atomic_write_text
from esper.runtime.bus import BusLimits, Topic
from esper.runtime.bus_inproc import InProcessBus
from esper.runtime.child_spec import ChildSpec
from esper.runtime.events import RecordingSink
from esper.runtime.supervisor import Supervisor
from esper.runtime.system import ActorSystem
from esper.runtime.ticker import Tick, Ticker
from schemas.config_platform import WeatherlightConfig
from schemas.domain_enums import TelemetryLevel
from schemas.enums import BusMessageType
from schemas.runtime import ActorState
from schemas.telemetry import TelemetryEvent

if TYPE_CHECKING:
    from pathlib import Path

    from esper.runtime.clock import ManualClock


async def wait_for_sleepers(clock: ManualClock, count: int) -> None:
    """Yield to the loop until ``count`` tasks sleep on the clock (a fact, not a duration)."""
    async with asyncio.timeout(1):
        while clock.sleepers < count:  # noqa: ASYNC110  # the loop only yields; the condition is a fact, not time
            await asyncio.sleep(0)


async def test_ticker_calls_at_start_then_every_interval_and_stops_at_once(clock: ManualClock) -> None:
    calls: list[float] = []

    async def work() -> None:
        calls.append(clock.now())

    system = ActorSystem(clock=clock, sink=RecordingSink())
    await system.start(ChildSpec("tick", lambda: Ticker(work, interval_s=10.0, clock=clock)))
    await wait_for_sleepers(clock, 1)
    assert calls == [0.0]
    clock.advance(9.0)
    await asyncio.sleep(0)
    assert calls == [0.0]
    clock.advance(1.0)
    await wait_for_sleepers(clock, 1)
    assert calls == [0.0, 10.0]
    # A stop interrupts the wait: no need to advance the clock or hit the shutdown deadline.
    async with asyncio.timeout(1):
        await system.stop()
    assert [s.status.value for s in system.snapshot()] == ["stopped"]


async def test_a_failing_ticker_is_restarted_by_its_supervisor(clock: ManualClock, sink: RecordingSink) -> None:
    calls = 0

    async def flaky() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("first call fails")

    system = ActorSystem(clock=clock, sink=sink)
    await system.start(Supervisor([ChildSpec("tick", lambda: Ticker(flaky, interval_s=5.0, clock=clock))]))
    await wait_for_sleepers(clock, 1)  # the restart backoff
    clock.advance(1.0)
    await wait_for_sleepers(clock, 1)  # the new incarnation's interval
    assert calls == 2
    assert [s.restarts for s in system.snapshot()] == [1]
    await system.stop()


async def test_a_tickers_latency_is_its_work_not_the_interval_it_waits(
    clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The --state table showed nissa-tick, weatherlight and oona at their interval (30000 ms), read as a stall."""
    now = [100.0]  # the handling clock (perf_counter), moved by hand: 2 ms of work, then 30 s of waiting
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])

    async def work() -> None:
        now[0] += 0.002

    system = ActorSystem(clock=clock, sink=RecordingSink())
    await system.start(ChildSpec("tick", lambda: Ticker(work, interval_s=30.0, clock=clock)))
    await wait_for_sleepers(clock, 1)  # the first tick's work is done; it waits out the interval
    now[0] += 30.0
    clock.advance(30.0)
    await wait_for_sleepers(clock, 1)  # the first tick was handled; the second waits
    [state] = system.snapshot()
    assert state.handled == 1
    assert state.last_latency_ms == pytest.approx(2.0)
    await system.stop()


async def test_the_trainer_whose_one_message_is_the_run_reports_no_latency(clock: ManualClock) -> None:
    """Tolaria's trainer showed the whole run's length as its latency; an actor that says so reports none."""

    @final
    class LongJob(Actor[Tick]):
        reports_latency = False

        def __init__(self) -> None:
            super().__init__(inbox=(Tick,))

        async def handle(self, msg: Tick) -> None:
            return None

    assert TolariaTrainer.reports_latency is False
    system = ActorSystem(clock=clock, sink=RecordingSink())
    await system.start(ChildSpec("job", LongJob))
    ref = system.ref("job", LongJob)
    await ref.ask(Tick(seq=0), type(None))  # the barrier: handled
    [state] = system.snapshot()
    assert (state.handled, state.last_latency_ms) == (1, None)
    await system.stop()


def test_ticker_rejects_a_non_positive_interval(clock: ManualClock) -> None:
    async def work() -> None:
        return None

    with pytest.raises(ValueError, match="interval_s must be > 0, got 0"):
        Ticker(work, interval_s=0, clock=clock)


async def test_state_reporter_emits_every_actor_state(clock: ManualClock, sink: RecordingSink) -> None:
    system = ActorSystem(clock=clock, sink=sink)

    async def idle() -> None:
        return None

    children = [
        ChildSpec("oona", lambda: Ticker(idle, interval_s=60.0, clock=clock)),
        state_reporter(system.snapshot, sink, interval_s=5.0, clock=clock, shutdown_deadline_s=1.0),
    ]
    await system.start(build_root(children, WeatherlightConfig()))
    await wait_for_sleepers(clock, 2)
    first = sink.of_type(ActorState)
    assert {state.actor for state in first} == {"oona", "weatherlight"}
    clock.advance(5.0)
    await wait_for_sleepers(clock, 2)
    assert len(sink.of_type(ActorState)) == 4
    await system.stop()


def test_root_refuses_subsystems_out_of_order(clock: ManualClock) -> None:
    async def idle() -> None:
        return None

    def spec(name: str) -> ChildSpec:
        return ChildSpec(name, lambda: Ticker(idle, interval_s=1.0, clock=clock))

    with pytest.raises(ValueError, match="subsystems must start in the order"):
        build_root([spec("tolaria"), spec("oona")], WeatherlightConfig())
    with pytest.raises(ValueError, match="duplicate child names"):
        build_root([spec("oona"), spec("oona")], WeatherlightConfig())
    root = build_root([spec("oona"), spec("kasmina"), spec("tolaria")], WeatherlightConfig())
    assert root.name == "weatherlight"


async def test_oona_housekeeping_trims_expired_messages(clock: ManualClock, sink: RecordingSink) -> None:
    bus = InProcessBus(clock, limits=BusLimits(ttl_s=100.0))
    await bus.subscribe(Topic.TELEMETRY, group="nissa")
    event = TelemetryEvent(name="probe", level=TelemetryLevel.INFO, attributes={})
    await bus.publish(Topic.TELEMETRY, event, message_type=BusMessageType.TELEMETRY)
    assert bus.statistics().of(Topic.TELEMETRY).depth == 1
    system = ActorSystem(clock=clock, sink=sink)
    await system.start(oona_spec(bus, clock=clock, ttl_s=100.0, shutdown_deadline_s=1.0))
    await wait_for_sleepers(clock, 1)
    assert bus.statistics().of(Topic.TELEMETRY).depth == 1, "not expired yet"
    clock.advance(housekeeping_interval_s(100.0) * 11)
    await wait_for_sleepers(clock, 1)
    assert bus.statistics().of(Topic.TELEMETRY).depth == 0
    await system.stop()


def test_housekeeping_interval_is_bounded() -> None:
    assert housekeeping_interval_s(900.0) == 60.0
    assert housekeeping_interval_s(100.0) == 10.0
    assert housekeeping_interval_s(2.0) == 1.0


def test_atomic_write_replaces_whole_files_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "summary.json"
    atomic_write_text(target, "old")
    atomic_write_bytes(target, b"new contents")
    assert target.read_bytes() == b"new contents"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_atomic_write_failure_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "config.toml"
    atomic_write_text(target, "kept")
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]  # the failure under test
    assert target.read_text() == "kept"
    assert [p.name for p in tmp_path.iterdir()] == ["config.toml"]
