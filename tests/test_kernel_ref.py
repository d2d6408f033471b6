"""ActorRef and Actor failure rules, run inside a real ActorSystem started from the test's own event loop."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from esper.runtime.child_spec import ChildSpec, RestartType
from esper.runtime.errors import ActorStopped, MailboxFull, MessageTypeError, ReplyTypeError
from esper.runtime.supervisor import Supervisor
from esper.runtime.system import ActorSystem
from schemas.enums import ActorStatus
from schemas.runtime import ChildFailed, ChildRestarted
from tests.test_kernel_support import Crash, Get, Hold, Inc, ObservedClock, Probe, Recorder, StopSelf, Stranger

if TYPE_CHECKING:
    from esper.runtime.clock import ManualClock
    from esper.runtime.events import RecordingSink

NoneType = type(None)


async def start_one(
    clock: ManualClock,
    sink: RecordingSink,
    recorder: Recorder,
    *,
    restart: RestartType = "permanent",
    capacity: int = 16,
) -> ActorSystem:
    system = ActorSystem(clock=clock, sink=sink)
    spec = ChildSpec("probe", lambda: Probe(recorder, "probe", capacity=capacity), restart=restart)
    await system.start(Supervisor([spec], backoff_initial_s=0.0))
    return system


async def test_system_runs_inside_the_running_loop_and_stops(clock: ManualClock, sink: RecordingSink) -> None:
    recorder = Recorder()
    system = await start_one(clock, sink, recorder)
    assert recorder.log == ["start probe"]
    ref = system.ref("probe", Probe)
    await ref.tell(Inc(by=2))
    ref.tell_nowait(Inc(by=3))
    assert await ref.ask(Get(), int) == 5
    [state] = system.snapshot()
    assert (state.actor, state.status, state.handled, state.restarts) == ("probe", ActorStatus.RUNNING, 3, 0)
    assert state.last_latency_ms is not None
    await system.stop()
    assert not system.running
    assert recorder.log == ["start probe", "stop probe"]
    await system.wait()
    with pytest.raises(ActorStopped):
        await ref.tell(Inc())
    assert system.snapshot()[0].status == ActorStatus.STOPPED


async def test_ref_lookup_checks_path_and_type(clock: ManualClock, sink: RecordingSink) -> None:
    system = await start_one(clock, sink, Recorder())
    with pytest.raises(ValueError, match="nobody"):
        system.ref("nobody", Probe)
    with pytest.raises(TypeError, match="is a Probe, not a Supervisor"):
        system.ref("probe", Supervisor)  # type: ignore[arg-type]  # the point: a class that is not an actor
    await system.stop()


async def test_wrong_message_type_refused_at_the_sender(clock: ManualClock, sink: RecordingSink) -> None:
    system = await start_one(clock, sink, Recorder())
    ref = system.ref("probe", Probe)
    with pytest.raises(MessageTypeError):
        await ref.tell(Stranger())  # type: ignore[arg-type]  # the point: outside the inbox union
    with pytest.raises(MessageTypeError):
        await ref.ask(Stranger(), int)  # type: ignore[arg-type]  # the point: outside the inbox union
    assert await ref.ask(Get(), int) == 0
    await system.stop()


async def test_failed_ask_goes_to_the_asker_and_the_actor_keeps_running(
    clock: ManualClock, sink: RecordingSink
) -> None:
    system = await start_one(clock, sink, Recorder())
    ref = system.ref("probe", Probe)
    await ref.tell(Inc(by=4))
    with pytest.raises(RuntimeError, match="bad ask"):
        await ref.ask(Crash(reason="bad ask"), NoneType)
    assert await ref.ask(Get(), int) == 4  # same incarnation, state kept
    [state] = system.snapshot()
    assert (state.failed, state.restarts) == (1, 0)
    assert sink.of_type(ChildFailed) == []
    await system.stop()


async def test_reply_of_the_wrong_type_is_refused(clock: ManualClock, sink: RecordingSink) -> None:
    system = await start_one(clock, sink, Recorder())
    with pytest.raises(ReplyTypeError, match="expected str"):
        await system.ref("probe", Probe).ask(Get(), str)
    await system.stop()


async def test_failed_tell_crashes_and_the_actor_restarts_fresh(clock: ManualClock, sink: RecordingSink) -> None:
    recorder = Recorder()
    system = await start_one(clock, sink, recorder)
    ref = system.ref("probe", Probe)
    await ref.tell(Inc(by=4))
    await ref.tell(Crash(reason="bad tell"))
    assert await ref.ask(Get(), int) == 0  # queued behind the crash, answered by the fresh incarnation
    [state] = system.snapshot()
    assert state.restarts == 1
    [failed] = sink.of_type(ChildFailed)
    assert (failed.child, failed.error_type, failed.error) == ("probe", "RuntimeError", "bad tell")
    assert recorder.log == ["start probe", "stop probe", "start probe"]
    await system.stop()
    [restarted] = sink.of_type(ChildRestarted)
    assert (restarted.child, restarted.restarts) == ("probe", 1)


async def test_ask_deadline_belongs_to_the_caller(clock: ManualClock, sink: RecordingSink) -> None:
    recorder = Recorder()
    system = await start_one(clock, sink, recorder)
    ref = system.ref("probe", Probe)
    await ref.tell(Hold())
    await recorder.wait_until(lambda: "holding probe" in recorder.log)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0):
            await ref.ask(Get(), int)
    recorder.release.set()
    assert await ref.ask(Get(), int) == 0
    assert system.dead_letters == 1  # the timed-out ask was skipped, not answered
    await system.stop()


async def test_late_reply_is_a_dead_letter(clock: ManualClock, sink: RecordingSink) -> None:
    recorder = Recorder()
    system = await start_one(clock, sink, recorder)
    ref = system.ref("probe", Probe)
    async with asyncio.timeout(1), asyncio.TaskGroup() as tg:
        asker = tg.create_task(ref.ask(Hold(), NoneType))
        await recorder.wait_until(lambda: "holding probe" in recorder.log)
        asker.cancel()
    recorder.release.set()
    assert await ref.ask(Get(), int) == 0
    assert system.dead_letters == 1
    await system.stop()


async def test_queued_asks_fail_at_once_when_the_actor_stops(clock: ManualClock, sink: RecordingSink) -> None:
    recorder = Recorder()
    system = await start_one(clock, sink, recorder, restart="temporary")
    ref = system.ref("probe", Probe)
    await ref.tell(Hold())
    await ref.tell(StopSelf())
    outcomes: list[str] = []

    async def ask() -> None:
        try:
            await ref.ask(Get(), int)
        except ActorStopped:
            outcomes.append("stopped")

    async with asyncio.timeout(1), asyncio.TaskGroup() as tg:
        for _ in range(3):
            tg.create_task(ask())
        await recorder.wait_until(lambda: "holding probe" in recorder.log)
        recorder.release.set()
    assert outcomes == ["stopped"] * 3
    assert system.dead_letters == 3
    await system.stop()


async def test_tell_and_ask_to_a_stopped_actor_raise_at_once(clock: ManualClock, sink: RecordingSink) -> None:
    system = await start_one(clock, sink, Recorder(), restart="temporary")
    assert not system.ref("probe", Probe).stopped
    ref = system.ref("probe", Probe)
    await ref.tell(StopSelf())
    with pytest.raises(ActorStopped):
        await ref.ask(Get(), int)  # queued behind StopSelf, failed when the mailbox closes
    assert ref.stopped  # a sender may look before it sends
    with pytest.raises(ActorStopped):
        await ref.ask(Get(), int)
    with pytest.raises(ActorStopped):
        await ref.tell(Inc())
    with pytest.raises(ActorStopped):
        ref.tell_nowait(Inc())
    assert system.dead_letters == 4
    await system.stop()


async def test_tell_waits_for_space_and_tell_nowait_raises_when_full(clock: ManualClock, sink: RecordingSink) -> None:
    recorder = Recorder()
    system = await start_one(clock, sink, recorder, capacity=1)
    ref = system.ref("probe", Probe)
    await ref.tell(Hold())
    await recorder.wait_until(lambda: "holding probe" in recorder.log)
    ref.tell_nowait(Inc(by=1))
    with pytest.raises(MailboxFull):
        ref.tell_nowait(Inc(by=10))
    entered = asyncio.Event()

    async def tell() -> None:
        entered.set()
        await ref.tell(Inc(by=2))

    async with asyncio.timeout(1), asyncio.TaskGroup() as tg:
        task = tg.create_task(tell())
        await entered.wait()
        assert not task.done()
        recorder.release.set()
    assert await ref.ask(Get(), int) == 3
    await system.stop()


async def test_in_flight_ask_fails_when_a_hung_actor_is_cancelled(sink: RecordingSink) -> None:
    recorder = Recorder()
    clock = ObservedClock(recorder)
    system = ActorSystem(clock=clock, sink=sink)
    spec = ChildSpec("probe", lambda: Probe(recorder, "probe"), shutdown_deadline_s=1.0)
    await system.start(Supervisor([spec]))
    ref = system.ref("probe", Probe)
    outcome: list[str] = []

    async def ask() -> None:
        try:
            await ref.ask(Hold(), NoneType)
        except ActorStopped:
            outcome.append("stopped")

    async with asyncio.timeout(1), asyncio.TaskGroup() as tg:
        tg.create_task(ask())
        await recorder.wait_until(lambda: "holding probe" in recorder.log)
        stopper = tg.create_task(system.stop())
        await recorder.wait_until(lambda: clock.requested == [1.0])
        clock.advance(1.0)
        await stopper
    assert outcome == ["stopped"]
    [failed] = sink.of_type(ChildFailed)
    assert failed.error_type == "ShutdownDeadlineExceeded"
