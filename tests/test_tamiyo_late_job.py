"""A late inference job (past its decision's deadline, still on the lane) at a stop, a restart and an epoch end."""

from __future__ import annotations

import asyncio
import io
import os
import threading
from typing import TYPE_CHECKING, final

import msgspec
import structlog.testing

from actors.tamiyo.actor import TamiyoActor
from actors.tamiyo.field_reports import FieldReportWal
from actors.tamiyo.gnn_state import GnnPolicyBase, GnnPolicyState, PolicyWorker
from actors.tamiyo.policy import Decision
from actors.tamiyo.spec import tamiyo_spec
from actors.tamiyo.state import TamiyoState
from actors.tamiyo.state_journal import read_entries
from esper.console import Console
from esper.runtime.child_spec import ChildSpec
from esper.runtime.clock import ManualClock
from esper.runtime.lanes import Lane
from esper.runtime.supervisor import Supervisor
from esper.runtime.system import ActorSystem
from schemas.config import BreakerConfig, SimicConfig, TamiyoConfig
from schemas.config_platform import SecurityConfig
from schemas.runtime import ChildFailed
from schemas.tamiyo import GetTamiyoState, GetTamiyoStatistics, TamiyoStatistics
from schemas.telemetry import TelemetryEvent
from tests._tamiyo_harness import BLUEPRINTS, KEY, KEY_ID, RUN_ID, WALL_START_S, packet
from tests.test_kernel_support import Crash, ObservedClock, Probe, Recorder

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from pathlib import Path

    import pytest

    from actors.tamiyo.policy import Observation
    from esper.runtime.events import RecordingSink
    from schemas.boundary import Decision as WireDecision
    from schemas.reports import FieldReport

BUDGET_S = 0.045
DEADLINE_S = 5.0
CONFIG = TamiyoConfig(
    policy="gnn",
    decision_budget_ms=BUDGET_S * 1e3,
    inference_breaker=BreakerConfig(failure_threshold=3, open_s=30.0, success_threshold=2),
)


@final
class GatedWorker(GnnPolicyBase, PolicyWorker):
    """A GNN policy in a worker process, as far as Tamiyo can tell: each decide counts itself in the policy's state,
    then blocks on ``gate`` while ``slow`` (on the lane thread, so the deadline fires on the manual clock); ``entered``
    is set on the loop when a slow call has started. ``closed``: the actor closed the worker."""

    version = "gated-gnn-1"

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.state = GnnPolicyState(
            version=self.version,
            architecture_version="test",
            weights_sha256="0" * 64,
            registry_digests={},
            normaliser_alpha=0.1,
            normaliser_eps=1e-6,
        )
        self.gate = threading.Semaphore(0)
        self.slow = False
        self.entered = asyncio.Event()
        self.closed = False
        self._loop = loop

    def warm_up(self) -> None:
        pass

    def export_state(self) -> GnnPolicyState:
        return self.state

    def import_state(self, state: GnnPolicyState) -> None:
        self.state = state

    def decide(self, observation: Observation) -> Decision:
        self.state = msgspec.structs.replace(self.state, decisions=self.state.decisions + 1)
        if self.slow:
            self._loop.call_soon_threadsafe(self.entered.set)
            self.gate.acquire()
        return Decision(reason="gated")

    def close(self) -> None:
        self.closed = True

    def abort_start(self) -> None:
        pass

    def release(self) -> None:
        """Let a blocked decide return and later ones not block (a failed assertion must not leave the lane blocked
        for the teardown)."""
        self.slow = False
        self.gate.release()


@final
class Rig:
    """A Tamiyo child spec on a gated worker policy, a real policy lane and an observed manual clock; ``decisions``
    is what Kasmina would get."""

    def __init__(
        self,
        run_dir: Path,
        sink: RecordingSink,
        *,
        on_state: Callable[[TamiyoState], None] | None = None,
        state_journal: Path | None = None,
        config: TamiyoConfig = CONFIG,
    ) -> None:
        self.recorder = Recorder()
        self.clock = ObservedClock(self.recorder)
        self.lane = Lane("policy", "cpu", num_threads=1)
        self.policy = GatedWorker(asyncio.get_running_loop())
        self.decisions: asyncio.Queue[WireDecision] = asyncio.Queue(maxsize=256)
        self.spec = tamiyo_spec(
            run_id=RUN_ID,
            config=config,
            security=SecurityConfig(),
            simic=SimicConfig(),
            signing_key=KEY,
            key_id=KEY_ID,
            outlet=self._outlet,
            policy_lane=self.lane,
            clock=self.clock,
            wall_clock=ManualClock(WALL_START_S),
            sink=sink,
            run_dir=run_dir,
            blueprints=BLUEPRINTS,
            policy=self.policy,
            on_state=on_state,
            state_journal=state_journal,
            fsync=False,
            shutdown_deadline_s=DEADLINE_S,
        )
        self.system = ActorSystem(clock=self.clock, sink=sink)

    async def _outlet(self, decision: WireDecision) -> None:
        await self.decisions.put(decision)

    async def decide(self, step: int, *, epoch: int = 0, validation_loss: float | None = None) -> WireDecision:
        await self.system.ref("tamiyo", TamiyoActor).tell(packet(step, epoch, validation_loss=validation_loss))
        async with asyncio.timeout(5):
            return await self.decisions.get()

    async def decide_late(self, step: int) -> WireDecision:
        """The packet of ``step`` while the policy blocks: its deadline passes, the fallback decides."""
        self.policy.slow = True
        await self.system.ref("tamiyo", TamiyoActor).tell(packet(step, 0))
        async with asyncio.timeout(5):
            await self.policy.entered.wait()
        self.clock.advance(BUDGET_S)
        async with asyncio.timeout(5):
            return await self.decisions.get()

    async def stats(self) -> TamiyoStatistics:
        async with asyncio.timeout(5):
            return await self.system.ref("tamiyo", TamiyoActor).ask(
                GetTamiyoStatistics(request_id="q"), TamiyoStatistics
            )

    async def pass_shutdown_deadline(self) -> None:
        """Wait until a stop waits for Tamiyo on the clock, then pass its shutdown deadline (Tamiyo is cancelled)."""
        await self.recorder.wait_until(lambda: DEADLINE_S in self.clock.requested)
        self.clock.advance(DEADLINE_S)


def open_files_under(directory: Path) -> list[str]:
    paths = (os.path.realpath(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd"))
    return [path for path in paths if path.startswith(str(directory))]


def failures(sink: RecordingSink) -> list[tuple[str, str]]:
    return [(event.child, event.error_type) for event in sink.of_type(ChildFailed)]


async def test_a_stop_past_its_deadline_hands_over_the_state_before_the_late_job_and_closes_up(
    tmp_path: Path, sink: RecordingSink
) -> None:
    """A stop (Ctrl-C) waits out a late job only up to Tamiyo's shutdown deadline. The cancel then made on_stop's
    export raise (the job still runs): no stop state for --resume, the WAL and the worker left open, and a second,
    misleading failure. Now the state is handed over, with the policy's part as the late job found it, everything
    is closed, and the deadline is the only failure."""
    persisted: list[TamiyoState] = []
    rig = Rig(tmp_path, sink, on_state=persisted.append)
    await rig.system.start(rig.spec)
    try:
        for step in (1, 2):
            assert (await rig.decide(step)).policy == "gnn"
        late = await rig.decide_late(3)
        assert late.policy == "heuristic (fallback)"
        assert rig.policy.state.decisions == 3  # the late job's decide has counted itself
        async with asyncio.timeout(5), asyncio.TaskGroup() as tg:
            stopping = tg.create_task(rig.system.stop())
            await rig.pass_shutdown_deadline()
            await stopping
        assert failures(sink) == [("tamiyo", "ShutdownDeadlineExceeded")]
        [state] = persisted
        assert state.gnn is not None
        assert state.gnn.decisions == 2  # the policy as the late job found it
        assert (state.counters.decisions, state.counters.timeouts, state.last_step) == (3, 1, 3)
        assert rig.policy.closed
        assert not open_files_under(tmp_path), "the field-report WAL was left open"
    finally:
        rig.policy.release()
        await rig.lane.aclose()


async def test_a_restart_past_the_stop_deadline_starts_from_the_state_before_the_late_job(
    tmp_path: Path, sink: RecordingSink
) -> None:
    """A rest_for_one restart of Tamiyo while a late job outlives its shutdown deadline left the spec's state cell
    as it was: the new incarnation started from the run's initial state (its counters, windows, breaker and
    conservative mode gone)."""
    recorder = Recorder()
    handed_over: list[TamiyoState] = []

    def on_state(state: TamiyoState) -> None:
        handed_over.append(state)
        recorder.notify()

    rig = Rig(tmp_path, sink, on_state=on_state)
    tree = Supervisor(
        [ChildSpec("k", lambda: Probe(recorder, "k")), rig.spec], strategy="rest_for_one", backoff_initial_s=0.0
    )
    await rig.system.start(tree)
    try:
        for step in (1, 2, 3):
            await rig.decide(step)
        await rig.decide_late(4)
        before = await rig.stats()
        assert (before.decisions, before.timeouts) == (4, 1)
        await rig.system.ref("k", Probe).tell(Crash())  # Tamiyo comes after k: it is restarted with it
        await rig.pass_shutdown_deadline()
        await recorder.wait_until(lambda: bool(handed_over))
        rig.policy.release()  # the new incarnation's warm-up queued behind the late job on the lane
        after = await rig.stats()
        async with asyncio.timeout(5):
            state = await rig.system.ref("tamiyo", TamiyoActor).ask(GetTamiyoState(), TamiyoState)
    finally:
        rig.policy.release()
        await rig.system.stop()
        await rig.lane.aclose()
    assert (after.decisions, after.timeouts, after.pending_outcomes) == (4, 1, before.pending_outcomes)
    assert state.gnn is not None
    assert state.gnn.decisions == 3  # the policy as the late job found it
    assert failures(sink) == [("k", "RuntimeError"), ("tamiyo", "ShutdownDeadlineExceeded")]


async def test_every_epoch_end_is_journaled_when_an_overrun_has_returned_by_then(
    tmp_path: Path, sink: RecordingSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An epoch-end decision that overran by a hair, whose job had returned by the time the state was journaled
    (here while the epoch end's field reports are written, just before), was not journaled (the late job was let go
    only at the next packet): a kill -9 resume started from an older entry and a rollback rewound too far."""
    journal = tmp_path / "tamiyo_states.jsonl"
    # One-epoch windows: the decision at step 10 is reported at the epoch end of step 20.
    rig = Rig(
        tmp_path, sink, state_journal=journal, config=msgspec.structs.replace(CONFIG, field_report_window_epochs=1)
    )
    append_many = FieldReportWal.append_many

    async def job_returns_while_writing(wal: FieldReportWal, reports: Iterable[FieldReport]) -> None:
        if rig.policy.slow:
            rig.policy.release()
            # A lane job queued after the late one: its reply comes after the late job's (the lane is FIFO).
            await rig.lane.run(lambda: None)
        await append_many(wal, reports)

    monkeypatch.setattr(FieldReportWal, "append_many", job_returns_while_writing)
    await rig.system.start(rig.spec)
    try:
        with structlog.testing.capture_logs() as logs:
            in_time = await rig.decide(10, epoch=0, validation_loss=1.0)
            rig.policy.slow = True
            await rig.system.ref("tamiyo", TamiyoActor).tell(packet(20, 1, validation_loss=1.0))
            async with asyncio.timeout(5):
                await rig.policy.entered.wait()
            rig.clock.advance(BUDGET_S)
            async with asyncio.timeout(5):
                overrun = await rig.decisions.get()
            after = await rig.decide(30, epoch=2, validation_loss=1.0)
            stats = await rig.stats()
    finally:
        rig.policy.release()
        await rig.system.stop()
        await rig.lane.aclose()
    assert [d.policy for d in (in_time, overrun, after)] == ["gnn", "heuristic (fallback)", "gnn"]
    assert stats.timeouts == 1
    assert not [e for e in logs if e["event"] == "tamiyo_state_not_journaled"]
    assert [entry.step for entry in read_entries(journal)[0]] == [10, 20, 30]


async def test_a_worker_policy_says_it_is_starting_before_its_warm_up(tmp_path: Path, sink: RecordingSink) -> None:
    """A GNN worker's start-up (its torch import: 6-10 s) showed nothing on the console after the run's header, as
    if the run hung; a policy on the lane's own thread starts in milliseconds and says nothing."""
    rig = Rig(tmp_path, sink)
    await rig.system.start(rig.spec)
    try:
        [starting] = [event for event in sink.of_type(TelemetryEvent) if event.name == "tamiyo_gnn_worker_starting"]
        assert starting.description == "starting the GNN policy worker (it imports torch: a few seconds)"
        console = io.StringIO()
        Console(console, epochs=3, interactive=False).emit(starting)
        assert console.getvalue() == (
            "  policy       starting the GNN policy worker (it imports torch: a few seconds)\n"
        )
    finally:
        rig.policy.release()
        await rig.system.stop()
        await rig.lane.aclose()
