"""Supervisor: strategies, restart types, restart intensity and escalation, backoff on the clock, ordered shutdown."""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING, final

import pytest

from esper.runtime.actor import Actor
from esper.runtime.child_spec import ChildSpec, RestartType
from esper.runtime.errors import ActorStopped, ChildStartFailed, RepeatedFailure, RestartIntensityExceeded
from esper.runtime.supervisor import Strategy, Supervisor
from esper.runtime.system import ActorSystem
from schemas.enums import ActorStatus
from schemas.runtime import ChildFailed, ChildRestarted, SupervisorEscalated
from tests.test_kernel_support import Crash, Get, Inc, ObservedClock, Probe, Recorder, StopSelf

if TYPE_CHECKING:
    from esper.runtime.clock import ManualClock
    from esper.runtime.events import RecordingSink


def probe_spec(recorder: Recorder, name: str, restart: RestartType = "permanent", **kw: bool) -> ChildSpec:
    return ChildSpec(name, lambda: Probe(recorder, name, **kw), restart=restart)


@pytest.mark.parametrize(
    ("strategy", "expected_counts", "expected_restarts"),
    [
        ("one_for_one", [1, 0, 3], [0, 1, 0]),
        ("one_for_all", [0, 0, 0], [1, 1, 1]),
        ("rest_for_one", [1, 0, 0], [0, 1, 1]),
    ],
)
async def test_strategy_restarts_the_right_children_with_fresh_state(
    clock: ManualClock,
    sink: RecordingSink,
    strategy: Strategy,
    expected_counts: list[int],
    expected_restarts: list[int],
) -> None:
    recorder = Recorder()
    specs = [probe_spec(recorder, name) for name in ("a", "b", "c")]
    system = ActorSystem(clock=clock, sink=sink)
    await system.start(Supervisor(specs, strategy=strategy, backoff_initial_s=0.0))
    refs = [system.ref(name, Probe) for name in ("a", "b", "c")]
    for by, ref in enumerate(refs, start=1):
        await ref.tell(Inc(by=by))
    await refs[1].tell(Crash())
    # Ask the crashing child first: its reply comes from the new incarnation, so every restart has happened.
    crashed = await refs[1].ask(Get(), int)
    counts = [await refs[0].ask(Get(), int), crashed, await refs[2].ask(Get(), int)]
    assert counts == expected_counts
    assert [state.restarts for state in system.snapshot()] == expected_restarts
    await system.stop()
    restarted = sorted(event.child for event in sink.of_type(ChildRestarted))
    assert restarted == [name for name, n in zip("abc", expected_restarts, strict=True) if n]
    [failed] = sink.of_type(ChildFailed)
    assert failed.child == "b"


async def test_one_for_all_stops_siblings_in_reverse_order_then_starts_in_order(
    clock: ManualClock, sink: RecordingSink
) -> None:
    recorder = Recorder()
    specs = [probe_spec(recorder, name) for name in ("a", "b", "c")]
    system = ActorSystem(clock=clock, sink=sink)
    await system.start(Supervisor(specs, strategy="one_for_all", backoff_initial_s=0.0))
    await system.ref("b", Probe).tell(Crash())
    assert await system.ref("b", Probe).ask(Get(), int) == 0
    assert await system.ref("c", Probe).ask(Get(), int) == 0
    assert recorder.log[3:] == ["stop b", "stop c", "stop a", "start a", "start b", "start c"]
    await system.stop()


@pytest.mark.parametrize(
    ("restart", "crash", "restarted"),
    [
        ("permanent", False, True),
        ("permanent", True, True),
        ("transient", False, False),
        ("transient", True, True),
        ("temporary", False, False),
        ("temporary", True, False),
    ],
)
async def test_restart_types(
    clock: ManualClock, sink: RecordingSink, restart: RestartType, crash: bool, restarted: bool
) -> None:
    recorder = Recorder()
    system = ActorSystem(clock=clock, sink=sink)
    # A permanent sibling keeps the supervisor alive when the child under test stays down.
    specs = [probe_spec(recorder, "x", restart), probe_spec(recorder, "keeper")]
    await system.start(Supervisor(specs, backoff_initial_s=0.0))
    ref = system.ref("x", Probe)
    await ref.tell(Inc(by=5))
    await ref.tell(Crash() if crash else StopSelf())
    if restarted:
        assert await ref.ask(Get(), int) == 0
        assert system.snapshot()[0].restarts == 1
    else:
        with pytest.raises(ActorStopped):
            await ref.ask(Get(), int)
        state = system.snapshot()[0]
        assert state.restarts == 0
        assert state.status == (ActorStatus.FAILED if crash else ActorStatus.STOPPED)
    assert len(sink.of_type(ChildFailed)) == int(crash)
    await system.stop()


async def test_intensity_exceeded_escalates_to_system_wait(clock: ManualClock, sink: RecordingSink) -> None:
    recorder = Recorder()
    system = ActorSystem(clock=clock, sink=sink)
    await system.start(Supervisor([probe_spec(recorder, "a")], max_restarts=2, window_s=30.0, backoff_initial_s=0.0))
    ref = system.ref("a", Probe)
    for _ in range(2):
        await ref.tell(Crash())
        assert await ref.ask(Get(), int) == 0
    await ref.tell(Crash())
    with pytest.raises(ActorStopped):
        await ref.ask(Get(), int)
    with pytest.raises(RestartIntensityExceeded, match=re.escape("3 restarts within 30.0 s")):
        await system.wait()
    [escalated] = sink.of_type(SupervisorEscalated)
    assert (escalated.supervisor, escalated.child, escalated.restarts) == ("root", "a", 3)
    assert not system.running
    await system.stop()  # idempotent after the root gave up


async def test_a_failure_inside_a_task_group_is_reported_as_itself(clock: ManualClock, sink: RecordingSink) -> None:
    """An actor whose TaskGroup failed: the event and the escalation name the task's error, not the group's
    "unhandled errors in a TaskGroup", which hid a user model's error behind every restart."""
    recorder = Recorder()
    system = ActorSystem(clock=clock, sink=sink)
    await system.start(Supervisor([probe_spec(recorder, "a")], max_restarts=0, window_s=30.0, backoff_initial_s=0.0))
    await system.ref("a", Probe).tell(Crash(reason="element 0 does not require grad", in_task_group=True))
    with pytest.raises(RestartIntensityExceeded) as gave_up:
        await system.wait()
    assert str(gave_up.value).endswith("last failure in a: RuntimeError: element 0 does not require grad")
    [failed] = sink.of_type(ChildFailed)
    assert (failed.error_type, failed.error) == ("RuntimeError", "element 0 does not require grad")
    await system.stop()


async def test_restarts_outside_the_window_do_not_count(clock: ManualClock, sink: RecordingSink) -> None:
    recorder = Recorder()
    system = ActorSystem(clock=clock, sink=sink)
    await system.start(Supervisor([probe_spec(recorder, "a")], max_restarts=2, window_s=30.0, backoff_initial_s=0.0))
    ref = system.ref("a", Probe)
    for round_ in range(3):
        for _ in range(2):
            await ref.tell(Crash())
            assert await ref.ask(Get(), int) == 0
        clock.advance(31.0 if round_ < 2 else 0.0)
    assert system.snapshot()[0].restarts == 6
    assert sink.of_type(SupervisorEscalated) == []
    await system.stop()


async def test_nested_escalation_is_the_parents_child_failure(clock: ManualClock, sink: RecordingSink) -> None:
    recorder = Recorder()
    inner = ChildSpec(
        "sub",
        lambda: Supervisor([probe_spec(recorder, "worker")], max_restarts=1, backoff_initial_s=0.0),
    )
    system = ActorSystem(clock=clock, sink=sink)
    await system.start(Supervisor([inner, probe_spec(recorder, "other")], backoff_initial_s=0.0))
    worker = system.ref("sub/worker", Probe)
    other = system.ref("other", Probe)
    await other.tell(Inc(by=9))
    await worker.tell(Crash())
    assert await worker.ask(Get(), int) == 0
    await worker.tell(Crash())
    await recorder.wait_until(lambda: recorder.count("start worker") == 3)
    assert await worker.ask(Get(), int) == 0  # the ref survived the restart of its supervisor
    assert await other.ask(Get(), int) == 9  # one_for_one at the root: the sibling was untouched
    [escalated] = sink.of_type(SupervisorEscalated)
    assert (escalated.supervisor, escalated.child) == ("sub", "sub/worker")
    assert [(e.supervisor, e.child, e.error_type) for e in sink.of_type(ChildFailed)] == [
        ("sub", "sub/worker", "RuntimeError"),
        ("sub", "sub/worker", "RuntimeError"),
        ("root", "sub", "RestartIntensityExceeded"),
    ]
    states = {state.actor: state for state in system.snapshot()}
    assert states["sub"].restarts == 1
    assert states["sub/worker"].restarts == 1  # counted over the run: the subtree is fresh, its history is not
    await system.stop()


async def test_backoff_waits_on_the_clock_and_grows(sink: RecordingSink) -> None:
    recorder = Recorder()
    clock = ObservedClock(recorder)
    system = ActorSystem(clock=clock, sink=sink)
    root = Supervisor([probe_spec(recorder, "a")], backoff_initial_s=1.0, backoff_max_s=3.0, max_restarts=10)
    await system.start(root)
    ref = system.ref("a", Probe)
    for expected in (1.0, 2.0, 3.0):
        await ref.tell(Crash())
        await recorder.wait_until(lambda e=expected: clock.requested[-1:] == [e])  # type: ignore[misc]
        starts = recorder.count("start a")
        assert system.snapshot()[0].status == ActorStatus.RESTARTING
        clock.advance(expected - 0.5)
        assert clock.sleepers == 1  # not yet
        clock.advance(0.5)
        assert await ref.ask(Get(), int) == 0
        assert recorder.count("start a") == starts + 1
    assert [event.backoff_s for event in sink.of_type(ChildRestarted)] == [1.0, 2.0, 3.0]
    await system.stop()


async def test_stop_during_backoff_shuts_down(sink: RecordingSink) -> None:
    recorder = Recorder()
    clock = ObservedClock(recorder)
    system = ActorSystem(clock=clock, sink=sink)
    await system.start(Supervisor([probe_spec(recorder, "a")], backoff_initial_s=10.0, backoff_max_s=10.0))
    await system.ref("a", Probe).tell(Crash())
    await recorder.wait_until(lambda: clock.requested == [10.0])
    async with asyncio.timeout(1):
        await system.stop()
    await system.wait()
    assert recorder.count("start a") == 1


async def test_ordered_shutdown_cancels_a_hung_child_and_carries_on(sink: RecordingSink) -> None:
    recorder = Recorder()
    clock = ObservedClock(recorder)
    specs = [
        probe_spec(recorder, "a"),
        ChildSpec("b", lambda: Probe(recorder, "b", hang_on_stop=True), shutdown_deadline_s=2.0),
        probe_spec(recorder, "c"),
    ]
    system = ActorSystem(clock=clock, sink=sink)
    await system.start(Supervisor(specs))
    assert recorder.log == ["start a", "start b", "start c"]
    async with asyncio.timeout(1), asyncio.TaskGroup() as tg:
        stopper = tg.create_task(system.stop())
        await recorder.wait_until(lambda: "stop b" in recorder.log and 2.0 in clock.requested)
        assert "stop a" not in recorder.log
        clock.advance(2.0)
        await stopper
    assert recorder.log[3:] == ["stop c", "stop b", "stop a"]
    [failed] = sink.of_type(ChildFailed)
    assert (failed.child, failed.error_type) == ("b", "ShutdownDeadlineExceeded")
    # The cancel is b's failure: it read "stopped, failed 0", as if b had done all it was asked.
    states = [(state.actor, state.status, state.failed) for state in system.snapshot()]
    assert states == [("a", ActorStatus.STOPPED, 0), ("b", ActorStatus.FAILED, 1), ("c", ActorStatus.STOPPED, 0)]
    await system.wait()


async def test_supervisor_rejects_bad_specs() -> None:
    recorder = Recorder()
    with pytest.raises(ValueError, match="unique"):
        Supervisor([probe_spec(recorder, "a"), probe_spec(recorder, "a")])
    with pytest.raises(ValueError, match="'/'"):
        probe_spec(recorder, "a/b")
    with pytest.raises(ValueError, match="shutdown_deadline_s"):
        ChildSpec("a", lambda: Probe(recorder, "a"), shutdown_deadline_s=0.0)


def _refuses() -> Probe:
    raise ValueError("key_id must not be empty")


async def test_a_child_that_cannot_be_built_stops_the_tree_and_start_names_it(
    clock: ManualClock, sink: RecordingSink
) -> None:
    """A factory raising at start tore the tree down as an ExceptionGroup: stop() re-raised it, so the caller's
    clean-up never ran and the process could not start another run."""
    recorder = Recorder()
    specs = [probe_spec(recorder, "a"), ChildSpec("b", _refuses), probe_spec(recorder, "c")]
    system = ActorSystem(clock=clock, sink=sink)
    with pytest.raises(ChildStartFailed, match=r"^b could not be built: ValueError: key_id must not be empty"):
        await system.start(Supervisor(specs))
    await system.stop()  # returns: the failure was start()'s to report
    assert recorder.log == ["start a", "stop a"]  # c was never built
    [failed] = sink.of_type(ChildFailed)
    assert (failed.child, failed.error_type) == ("b", "ValueError")
    [escalated] = sink.of_type(SupervisorEscalated)
    assert (escalated.child, escalated.reason) == ("b", "unrecoverable")


async def test_a_nested_child_that_cannot_be_built_is_not_restarted(clock: ManualClock, sink: RecordingSink) -> None:
    recorder = Recorder()
    inner = Supervisor([probe_spec(recorder, "x"), ChildSpec("y", _refuses)])
    system = ActorSystem(clock=clock, sink=sink)
    with pytest.raises(ChildStartFailed, match=r"^inner/y could not be built"):
        await system.start(Supervisor([probe_spec(recorder, "a"), ChildSpec("inner", lambda: inner)]))
    await system.stop()
    assert recorder.log == ["start a", "start x", "stop x", "stop a"]
    assert not sink.of_type(ChildRestarted)


async def test_a_child_whose_rebuild_fails_after_a_crash_escalates_by_name(
    clock: ManualClock, sink: RecordingSink
) -> None:
    recorder = Recorder()
    builds = [lambda: Probe(recorder, "a"), _refuses]
    system = ActorSystem(clock=clock, sink=sink)
    await system.start(Supervisor([ChildSpec("a", lambda: builds.pop(0)())], backoff_initial_s=0.0))
    await system.ref("a", Probe).tell(Crash())
    with pytest.raises(ChildStartFailed, match=r"^a could not be built: ValueError"):
        await system.wait()
    await system.stop()


@final
class GivesUp(Actor[Crash]):
    """Fails with RepeatedFailure: it knows a restart would fail where it failed before (as Tolaria's trainer does)."""

    def __init__(self) -> None:
        super().__init__(inbox=(Crash,), capacity=4)

    async def handle(self, msg: Crash) -> None:
        raise RepeatedFailure(msg.reason)


async def test_a_repeated_failure_is_not_restarted_and_every_supervisor_above_gives_up(
    clock: ManualClock, sink: RecordingSink
) -> None:
    """A trainer failing at the same step after slow replays never filled the restart window: its failures went on
    for good. Its RepeatedFailure is escalated at once, unchanged, through a root that allows many restarts."""
    recorder = Recorder()
    worker = ChildSpec("worker", GivesUp)
    inner = ChildSpec("sub", lambda: Supervisor([worker], max_restarts=100, backoff_initial_s=0.0))
    system = ActorSystem(clock=clock, sink=sink)
    await system.start(Supervisor([probe_spec(recorder, "a"), inner], max_restarts=100, backoff_initial_s=0.0))
    await system.ref("sub/worker", GivesUp).tell(Crash(reason="failed 3 times in a row at step 19"))
    with pytest.raises(RepeatedFailure, match=r"^failed 3 times in a row at step 19$"):
        await system.wait()
    assert not sink.of_type(ChildRestarted)
    assert [(e.supervisor, e.child, e.reason) for e in sink.of_type(SupervisorEscalated)] == [
        ("sub", "sub/worker", "no_progress"),
        ("root", "sub", "no_progress"),
    ]
    assert recorder.log == ["start a", "stop a"]
    await system.stop()


async def test_restart_counts_survive_the_restart_of_their_supervisor(clock: ManualClock, sink: RecordingSink) -> None:
    """A supervisor that gave up and was restarted built its children anew with no restarts: after ten trainer
    restarts the summary said three."""
    recorder = Recorder()

    def inner() -> Supervisor:  # built anew at each restart, as the run's subtrees are
        return Supervisor([probe_spec(recorder, "x")], max_restarts=1, backoff_initial_s=0.0)

    system = ActorSystem(clock=clock, sink=sink)
    await system.start(Supervisor([ChildSpec("inner", inner)], backoff_initial_s=0.0))
    x = system.ref("inner/x", Probe)
    await x.tell(Crash())
    assert await x.ask(Get(), int) == 0  # restarted by inner
    await x.tell(Crash())  # one too many for inner: it gives up and its supervisor restarts it
    await recorder.wait_until(lambda: recorder.count("start x") == 3)
    await x.tell(Crash())  # and the new inner restarts x once more
    await recorder.wait_until(lambda: recorder.count("start x") == 4)
    assert await x.ask(Get(), int) == 0
    restarts = {state.actor: state.restarts for state in system.snapshot()}
    assert restarts == {"inner": 1, "inner/x": 2}
    await system.stop()


async def test_handled_and_failed_counts_carry_over_a_restart(clock: ManualClock, sink: RecordingSink) -> None:
    """They counted each incarnation alone: a crashed actor's state said failed 0 and handled only the messages since
    its restart, next to restarts 1. The counts survive a restart of its supervisor too."""
    recorder = Recorder()

    def inner() -> Supervisor:
        return Supervisor([probe_spec(recorder, "x")], max_restarts=1, backoff_initial_s=0.0)

    system = ActorSystem(clock=clock, sink=sink)
    await system.start(Supervisor([ChildSpec("inner", inner)], backoff_initial_s=0.0))
    x = system.ref("inner/x", Probe)

    def counts() -> tuple[int, int, int]:
        [state] = [state for state in system.snapshot() if state.actor == "inner/x"]
        return state.handled, state.failed, state.restarts

    for _ in range(3):
        await x.tell(Inc())
    await x.tell(Crash())
    assert await x.ask(Get(), int) == 0  # the barrier: answered by the next incarnation
    assert counts() == (4, 1, 1)
    await x.tell(Crash())  # one too many for inner: it gives up and its supervisor builds it anew
    await recorder.wait_until(lambda: recorder.count("start x") == 3)
    assert await x.ask(Get(), int) == 0
    assert counts() == (5, 2, 1)  # rebuilt with inner: its restart, not one of x's
    await system.stop()


@final
class _SlowStart(Actor[Get]):
    """An actor whose on_start waits (a worker process's start-up, say): until a stop if ``heeds_stop``, else for
    good (only the shutdown deadline's cancel ends it)."""

    def __init__(self, recorder: Recorder, label: str, *, heeds_stop: bool) -> None:
        super().__init__(inbox=(Get,))
        self.recorder = recorder
        self.label = label
        self.heeds_stop = heeds_stop

    async def on_start(self) -> None:
        self.recorder.record(f"starting {self.label}")
        if self.heeds_stop:
            await self.until_stopping(asyncio.Event().wait)
            self.recorder.record(f"start of {self.label} ended by the stop")
        else:
            await asyncio.Event().wait()

    async def handle(self, msg: Get) -> int:
        return 0

    async def on_stop(self) -> None:
        self.recorder.record(f"stop {self.label}")

    def on_abandon(self) -> None:
        self.recorder.record(f"abandon {self.label}")


@pytest.mark.parametrize("heeds_stop", [True, False])
async def test_a_stop_during_a_childs_start_reaches_it_and_no_later_child_starts(
    sink: RecordingSink, *, heeds_stop: bool
) -> None:
    """A stop of a tree still starting waited for the starting child's on_start however long it took (a Ctrl-C
    while the GNN worker started waited for its 120 s ready timeout), then started the children after it only to
    stop them. The stop now reaches the starting child at once (cancelled past its shutdown deadline) and the
    children after it never start."""
    recorder = Recorder()
    clock = ObservedClock(recorder)
    specs = [
        probe_spec(recorder, "a"),
        ChildSpec("b", lambda: _SlowStart(recorder, "b", heeds_stop=heeds_stop), shutdown_deadline_s=3.0),
        probe_spec(recorder, "c"),
    ]
    system = ActorSystem(clock=clock, sink=sink)
    async with asyncio.timeout(5), asyncio.TaskGroup() as tg:
        starting = tg.create_task(system.start(Supervisor(specs)))
        await recorder.wait_until(lambda: "starting b" in recorder.log)
        stopping = tg.create_task(system.stop())
        if heeds_stop:
            await recorder.wait_until(lambda: "start of b ended by the stop" in recorder.log)
        else:
            await recorder.wait_until(lambda: 3.0 in clock.requested)
            clock.advance(3.0)
        await stopping
        await starting
    assert "start c" not in recorder.log
    assert recorder.log[-1] == "stop a"
    # A start the stop ended returns and stops as usual; one cancelled past the deadline runs on_abandon (it ran
    # neither hook, so what on_start had taken, a file or a worker process, stayed taken).
    assert [entry for entry in recorder.log if entry.endswith(" b")] == (
        ["starting b", "stop b"] if heeds_stop else ["starting b", "abandon b"]
    )
    failed = [(event.child, event.error_type) for event in sink.of_type(ChildFailed)]
    assert failed == ([] if heeds_stop else [("b", "ShutdownDeadlineExceeded")])
    await system.wait()
