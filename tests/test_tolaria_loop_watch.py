"""The trainer and the event loop it reports to.

It waits while the loop is stopped, ends without another checkpoint once it has closed, and says when a plan was missed
because the loop ran nothing."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import TYPE_CHECKING, TypeVar

import pytest
import structlog.testing

from actors.tolaria.build import load_data
from actors.tolaria.checkpoints import MANIFEST, read_manifest
from actors.tolaria.loop import TrainingLoop
from actors.tolaria.loop_options import LoopOptions
from actors.tolaria.loop_watch import LoopGone, LoopWatch
from actors.tolaria.plans import PlanInbox
from actors.tolaria.snapshots import SnapshotStore
from schemas.boundary import BoundaryPlan
from schemas.config import TolariaConfig
from tests.test_tolaria_loop import TINY, Box

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from esper.nn.data import DataSplits, TensorPair

pytestmark = pytest.mark.timeout(90)

T = TypeVar("T")

WAIT_S = 30.0  # a bound on a barrier's wait, never a delay


@pytest.fixture(scope="module")
def data() -> DataSplits:
    return load_data(TolariaConfig(**TINY))  # type: ignore[arg-type]


class LoopThread:
    """An event loop run by hand in its own thread: ``start`` runs it until ``stop`` (which returns once it has
    stopped); ``posted`` is set each time another thread posts a callback to it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.posted = threading.Event()
        self._thread: threading.Thread | None = None
        post = self.loop.call_soon_threadsafe

        def posting(callback: Callable[..., object], *args: object) -> asyncio.Handle:
            handle = post(callback, *args)
            self.posted.set()
            return handle

        self.loop.call_soon_threadsafe = posting  # type: ignore[method-assign, assignment]

    def start(self) -> None:
        running = threading.Event()
        self.loop.call_soon(running.set)
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-loop")
        self._thread.start()
        assert running.wait(WAIT_S)

    def stop(self) -> None:
        assert self._thread is not None
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(WAIT_S)
        assert not self._thread.is_alive()
        self.posted.clear()


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    if lt.loop.is_running():
        lt.stop()
    lt.loop.close()


def in_thread(fn: Callable[[], T]) -> concurrent.futures.Future[T]:
    future: concurrent.futures.Future[T] = concurrent.futures.Future()

    def work() -> None:
        try:
            future.set_result(fn())
        except BaseException as err:  # noqa: BLE001 - handed to the test through the future
            future.set_exception(err)

    threading.Thread(target=work, name="test-lane").start()
    return future


def test_hold_returns_at_once_while_the_loop_runs(loop_thread: LoopThread) -> None:
    loop_thread.start()
    assert LoopWatch(loop_thread.loop).hold() is False
    assert LoopWatch(None).hold() is False


def test_hold_waits_for_a_stopped_loop_to_run_again(loop_thread: LoopThread) -> None:
    loop_thread.start()
    loop_thread.stop()
    held = in_thread(LoopWatch(loop_thread.loop).hold)
    assert loop_thread.posted.wait(WAIT_S)  # the wake-up is posted: hold is waiting
    assert not held.done()
    loop_thread.start()
    assert held.result(WAIT_S) is True


def test_hold_raises_once_a_stopped_loop_closes(loop_thread: LoopThread) -> None:
    loop_thread.start()
    loop_thread.stop()
    held = in_thread(LoopWatch(loop_thread.loop).hold)
    assert loop_thread.posted.wait(WAIT_S)
    loop_thread.loop.close()
    with pytest.raises(LoopGone, match="has closed"):
        held.result(WAIT_S)
    with pytest.raises(LoopGone):
        LoopWatch(loop_thread.loop).hold()


def test_silent_s_counts_from_the_oldest_marker_the_loop_has_not_run(loop_thread: LoopThread) -> None:
    now = [100.0]
    watch = LoopWatch(loop_thread.loop, clock=lambda: now[0])
    assert watch.silent_s() == 0.0
    watch.post()
    now[0] += 2.5
    watch.post()  # the older marker still counts
    assert watch.silent_s() == 2.5
    loop_thread.start()
    ran = concurrent.futures.Future[None]()
    loop_thread.loop.call_soon_threadsafe(ran.set_result, None)  # runs after the markers: a barrier
    ran.result(WAIT_S)
    assert watch.silent_s() == 0.0


def _plan(decided: int, effect: int) -> BoundaryPlan:
    return BoundaryPlan(run_id="t", decided_on_step=decided, effect_step=effect, ops=())


def test_a_late_plan_is_not_given_up_while_the_loop_that_sends_it_is_stopped(loop_thread: LoopThread) -> None:
    """A deadline that passed while the planner's loop was stopped missed a plan nobody could send."""
    loop_thread.start()
    loop_thread.stop()
    inbox = PlanInbox()
    inbox.expect(4, 8)
    watch = LoopWatch(loop_thread.loop)
    due = in_thread(lambda: inbox.take_due(8, 0.05, hold=watch.hold))
    assert loop_thread.posted.wait(WAIT_S)  # waiting on the stopped loop, past its deadline
    # The planner's answer, queued while the loop is stopped: it runs in the loop's first pass once started (posted
    # after the start, two cross-thread wake-ups had to land within the deadline, and on a loaded machine did not).
    loop_thread.loop.call_soon_threadsafe(inbox.put, _plan(4, 8))
    loop_thread.start()
    result = due.result(WAIT_S)
    assert [plan.decided_on_step for plan in result.plans] == [4]
    assert result.missed == ()


def test_a_wait_for_a_plan_ends_with_loop_gone_once_the_loop_closes(loop_thread: LoopThread) -> None:
    loop_thread.start()
    loop_thread.stop()
    inbox = PlanInbox()
    inbox.expect(4, 8)
    watch = LoopWatch(loop_thread.loop)
    due = in_thread(lambda: inbox.take_due(8, 60.0, hold=watch.hold))
    assert loop_thread.posted.wait(WAIT_S)
    loop_thread.loop.close()
    with pytest.raises(LoopGone):
        due.result(WAIT_S)


def _training(
    data: DataSplits,
    directory: Path | None,
    loop: asyncio.AbstractEventLoop,
    hook: Callable[[int, TensorPair], TensorPair],
    inbox: PlanInbox | None = None,
    **overrides: object,
) -> TrainingLoop:
    cfg = TolariaConfig(**{**TINY, "epochs": 4, "checkpoint_keep_last": 2, **overrides})  # type: ignore[arg-type]
    return TrainingLoop(
        cfg,
        LoopOptions(run_id="t", checkpoint_dir=directory, batch_hook=hook, event_loop=loop),
        inbox=inbox or PlanInbox(),
        outbox=Box(),
        snapshots=SnapshotStore(int(cfg.snapshot_memory_cap_mb * 2**20)),
        data=data,
    )


def _steps(directory: Path) -> list[int]:
    if not (directory / MANIFEST).exists():
        return []
    return [entry.global_step for entry in read_manifest(directory)]


def test_a_trainer_whose_loop_closed_writes_no_further_checkpoint(
    data: DataSplits, loop_thread: LoopThread, tmp_path: Path
) -> None:
    """The trainer went on training and checkpointing after its loop was gone, and pruning (keep_last) removed the
    checkpoints the planner's journal covered: a resume started over. Here the loop stops and closes in epoch 2."""
    loop_thread.start()

    def stop_in_epoch_2(attempt: int, batch: TensorPair) -> TensorPair:
        if attempt == 16:  # 13 batches an epoch
            loop_thread.stop()
            loop_thread.loop.close()
        return batch

    training = _training(data, tmp_path, loop_thread.loop, stop_in_epoch_2)
    with pytest.raises(LoopGone):
        training.run()
    assert _steps(tmp_path) == [13]  # epoch 1's, written while the loop ran; none after it
    assert training.global_step == 2 * 13  # it stopped at epoch 2's checkpoint, before writing it


def test_a_trainer_waits_while_its_loop_is_stopped_and_trains_on_once_it_runs(
    data: DataSplits, loop_thread: LoopThread, tmp_path: Path
) -> None:
    """A script between two run_until_complete calls: the trainer holds at its next checkpoint, then finishes."""
    loop_thread.start()
    stopped = threading.Event()

    def stop_in_epoch_2(attempt: int, batch: TensorPair) -> TensorPair:
        if attempt == 16:
            loop_thread.stop()
            stopped.set()
        return batch

    training = _training(data, tmp_path, loop_thread.loop, stop_in_epoch_2)
    result = in_thread(training.run)
    assert stopped.wait(WAIT_S)
    assert loop_thread.posted.wait(WAIT_S)  # held at epoch 2's checkpoint (nothing else posts to the stopped loop)
    assert not result.done()
    # Epoch 1's may still be on its way to disk (the writer thread's), epoch 2's is not written.
    assert max(_steps(tmp_path), default=0) <= 13
    loop_thread.start()
    assert result.result(WAIT_S).status == "completed"
    assert _steps(tmp_path) == [39, 52]


def test_a_plan_missed_while_the_loop_ran_nothing_says_so(data: DataSplits, loop_thread: LoopThread) -> None:
    """A notebook cell that blocks (a long computation) holds the loop: the planner never ran, and the warnings say
    so."""
    loop_thread.start()
    release = threading.Event()
    blocking = threading.Event()

    def block() -> None:
        blocking.set()
        release.wait(WAIT_S)  # the notebook cell's blocking call, on the loop

    inbox = PlanInbox()

    def expect_then_block(attempt: int, batch: TensorPair) -> TensorPair:
        if attempt == 2:
            loop_thread.loop.call_soon_threadsafe(block)
            assert blocking.wait(WAIT_S)
            inbox.expect(2, 4)  # never answered
        return batch

    training = _training(data, None, loop_thread.loop, expect_then_block, inbox, epochs=1, decision_deadline_ms=50.0)
    try:
        with structlog.testing.capture_logs() as logs:
            training.run()
    finally:
        release.set()
    missed = [entry for entry in logs if entry["event"] == "plan_missed"]
    assert [entry["decided_on_steps"] for entry in missed] == [[2]]
    assert "the event loop ran nothing for" in missed[0]["detail"]
    assert "a blocking call in the notebook" in missed[0]["detail"]
    failed = [entry for entry in logs if entry["event"] == "epoch_failed"]
    assert [entry["reason"] for entry in failed] == ["decision_timeout"]
    assert "the event loop ran nothing for" in failed[0]["detail"]


def test_a_plan_missed_while_the_loop_ran_says_nothing_of_the_loop(data: DataSplits, loop_thread: LoopThread) -> None:
    loop_thread.start()
    inbox = PlanInbox()

    def expect(attempt: int, batch: TensorPair) -> TensorPair:
        if attempt == 2:
            inbox.expect(2, 4)
        return batch

    training = _training(data, None, loop_thread.loop, expect, inbox, epochs=1, decision_deadline_ms=50.0)
    with structlog.testing.capture_logs() as logs:
        training.run()
    missed = [entry for entry in logs if entry["event"] == "plan_missed"]
    assert [entry["decided_on_steps"] for entry in missed] == [[2]]
    assert "detail" not in missed[0]


def test_a_plan_that_arrives_while_the_wait_lets_go_of_its_lock_is_taken_without_waiting() -> None:
    """hold() runs outside the inbox's lock; a plan the running loop put meanwhile notified nobody, and the wait went
    on to its next poll (up to 100 ms of stall with the plan already in)."""
    inbox = PlanInbox()
    inbox.expect(4, 8)

    def answered_meanwhile() -> bool:
        inbox.put(_plan(4, 8))
        return False  # the loop runs

    waits: list[float | None] = []
    cond = inbox._cond
    real_wait = cond.wait

    def counting(timeout: float | None = None) -> bool:
        waits.append(timeout)
        return real_wait(timeout)

    cond.wait = counting  # type: ignore[method-assign]
    result = inbox.take_due(8, 5.0, hold=answered_meanwhile)
    assert [plan.decided_on_step for plan in result.plans] == [4]
    assert waits == []
