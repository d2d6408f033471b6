"""Lanes: ordered work on one dedicated thread, never abandoned on cancel, dropped only if not started."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import TYPE_CHECKING

import pytest
import torch
from torch.cuda._utils import _get_device_index

from esper.runtime.errors import LaneClosed, LaneJobEscaped
from esper.runtime.lanes import Lane, Lanes, resolve_device

if TYPE_CHECKING:
    from collections.abc import Callable

needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only answers")


class Gate:
    """A lane job that reports (to the loop) that it started, then blocks its thread until released."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.started = asyncio.Event()
        self.release = threading.Event()
        self.finished = threading.Event()

    def __call__(self, value: int) -> int:
        self.loop.call_soon_threadsafe(self.started.set)
        if not self.release.wait(timeout=5):  # a safety net for a broken test, never the expected path
            raise TimeoutError("gate was never released")
        self.finished.set()
        return value


async def yield_a_few() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_jobs_run_in_order_on_one_dedicated_thread() -> None:
    order: list[tuple[int, int]] = []

    def job(index: int) -> int:
        order.append((index, threading.get_ident()))
        return index * index

    async with Lane("train", "cpu") as lane, asyncio.timeout(5), asyncio.TaskGroup() as group:
        tasks = [group.create_task(lane.run(job, index)) for index in range(20)]
    assert [task.result() for task in tasks] == [index * index for index in range(20)]
    assert [index for index, _ in order] == list(range(20))
    idents = {ident for _, ident in order}
    assert idents == {lane.thread_id}
    assert lane.thread_id != threading.get_ident()
    assert lane.statistics().completed == 20


async def test_exceptions_propagate_to_the_caller_and_the_lane_carries_on() -> None:
    def fail(message: str) -> int:
        raise ValueError(message)

    async with Lane("io", "cpu") as lane, asyncio.timeout(5):
        with pytest.raises(ValueError, match="broken blob"):
            await lane.run(fail, "broken blob")
        assert await lane.run(len, "abc") == 3
        stats = lane.statistics()
    assert (stats.completed, stats.failed) == (1, 1)


@pytest.mark.parametrize("escape", [KeyboardInterrupt, SystemExit, StopIteration, StopAsyncIteration])
async def test_a_job_raising_an_escaping_exception_fails_only_itself(escape: type[BaseException]) -> None:
    """A user model whose forward raised KeyboardInterrupt (or SystemExit) on the train lane stopped the notebook's
    event loop: asyncio re-raises those two from any task. One raising StopIteration (``next()`` on an exhausted
    iterator) or StopAsyncIteration hung its caller for good, cancellation included: a future refuses them, so the
    job's outcome never arrived. Each is the job's failure instead, with its cause."""

    def escaping() -> int:
        raise escape("user forward boom")

    async with Lane("train", "cpu") as lane, asyncio.timeout(5):
        with pytest.raises(LaneJobEscaped, match=f"the job raised {escape.__name__}: user forward boom") as caught:
            await lane.run(escaping)
        assert isinstance(caught.value.__cause__, escape)
        assert await lane.run(len, "abc") == 3  # the lane and the loop carry on


async def test_a_started_job_outlives_its_cancelled_caller_and_the_next_call_waits() -> None:
    gate = Gate()
    ran: list[str] = []

    def after() -> str:
        ran.append("after")
        return "after"

    async with Lane("train", "cpu") as lane, asyncio.timeout(5), asyncio.TaskGroup() as group:
        first = group.create_task(lane.run(gate, 1))
        await gate.started.wait()
        first.cancel()
        second = group.create_task(lane.run(after))
        await yield_a_few()
        assert not first.done(), "the cancelled caller must wait for its running job"
        assert not gate.finished.is_set()
        assert ran == []
        first.cancel()  # a second cancel does not cut the wait short either
        await yield_a_few()
        assert not first.done()
        gate.release.set()
        assert await second == "after"
        assert gate.finished.is_set()
    assert first.cancelled()
    assert lane.statistics().completed == 2


async def test_a_job_not_yet_started_is_dropped_when_its_caller_is_cancelled() -> None:
    gate = Gate()
    ran: list[str] = []

    def dropped() -> None:
        ran.append("dropped")

    async with Lane("policy", "cpu") as lane, asyncio.timeout(5), asyncio.TaskGroup() as group:
        holder = group.create_task(lane.run(gate, 1))
        await gate.started.wait()
        waiting = group.create_task(lane.run(dropped))
        await yield_a_few()
        assert lane.statistics().queued == 1
        waiting.cancel()
        await yield_a_few()
        assert waiting.cancelled(), "a job that never started is dropped at once"
        gate.release.set()
        assert await holder == 1
        assert await lane.run(len, "barrier") == 7
    assert ran == []
    stats = lane.statistics()
    assert (stats.dropped, stats.completed, stats.queued) == (1, 2, 0)


async def test_a_closed_lane_refuses_work() -> None:
    lane = Lane("io", "cpu")
    assert await lane.run(len, "x") == 1
    lane.close()
    with pytest.raises(LaneClosed, match="lane 'io' is closed"):
        await lane.run(len, "x")
    async with asyncio.timeout(5):
        await lane.wait_closed()
    assert lane.statistics().closed


async def test_close_lets_queued_jobs_finish() -> None:
    gate = Gate()
    lane = Lane("io", "cpu")
    async with asyncio.timeout(5), asyncio.TaskGroup() as group:
        holder = group.create_task(lane.run(gate, 1))
        queued = group.create_task(lane.run(len, "ab"))
        await gate.started.wait()
        lane.close()
        gate.release.set()
        await lane.wait_closed()
    assert (holder.result(), queued.result()) == (1, 2)


async def test_a_wait_for_a_never_used_lane_returns_when_it_is_closed() -> None:
    """close() on a lane whose thread never started marked it exited but never answered the wait_closed() calls
    already waiting, so they waited for good."""
    lane = Lane("io", "cpu")
    waiter = asyncio.create_task(lane.wait_closed())
    await yield_a_few()
    assert not waiter.done()
    lane.close()
    async with asyncio.timeout(5):
        await waiter
    assert lane.statistics().closed


async def test_a_never_used_lane_closes_without_a_thread() -> None:
    lane = Lane("io", "cpu")
    async with asyncio.timeout(5):
        await lane.aclose()
    assert lane.thread_id is None


async def test_the_thread_budget_applies_on_the_lane_thread_only() -> None:
    before = torch.get_num_threads()
    async with Lane("policy", "cpu", num_threads=1) as lane, asyncio.timeout(5):
        assert await lane.run(torch.get_num_threads) == 1
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("train_budget", [None, 3])
async def test_each_lane_keeps_its_own_thread_count_whichever_lane_starts_first(train_budget: int | None) -> None:
    """torch's per-thread start-up copies the count any thread set last; the io and policy lanes set 1, so a train
    lane whose thread started after theirs trained on 1 thread, however many it was given or its builder had."""
    before = torch.get_num_threads()
    torch.set_num_threads(3)  # the builder's count (not this machine's cores), what a train lane given None takes
    try:
        async with Lanes("cpu", num_threads={"train": train_budget}) as lanes, asyncio.timeout(5):
            await lanes["train"].run(int)  # its thread starts (and sets its count) before the others set theirs
            assert await lanes["io"].run(torch.get_num_threads) == 1
            assert await lanes.policy.run(torch.get_num_threads) == 1
            assert await lanes["train"].run(torch.get_num_threads) == 3
            assert await lanes["io"].run(torch.get_num_threads) == 1
    finally:
        torch.set_num_threads(before)


async def test_lanes_builds_train_policy_and_io_on_cpu() -> None:
    async with Lanes("cpu", num_threads={"io": 2}) as lanes, asyncio.timeout(5):
        assert lanes.device == torch.device("cpu")
        assert [lane.name for lane in (lanes.train, lanes.policy, lanes.io)] == ["train", "policy", "io"]
        assert lanes["io"].num_threads == 2
        assert lanes.policy.num_threads == 1
        assert all(lane.stream is None for lane in (lanes.train, lanes.policy, lanes.io))
        total = await lanes.train.run(lambda: torch.ones(3).sum().item())
        assert total == 3.0
        await lanes.policy.run(len, "warm")
        assert lanes.train.thread_id != lanes.policy.thread_id
    assert [stats.closed for stats in lanes.statistics()] == [True, True, True]


def test_lanes_refuses_an_unknown_lane_name() -> None:
    with pytest.raises(ValueError, match="unknown lane 'gpu'"):
        Lanes("cpu", num_threads={"gpu": 1})  # type: ignore[dict-item]  # proving the runtime check


@needs_no_cuda
def test_device_resolution_without_cuda() -> None:
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="needs CUDA, which torch reports as not available"):
        resolve_device("cuda:0")


def test_device_resolution_refuses_other_devices() -> None:
    with pytest.raises(ValueError, match="got 'tpu'"):
        resolve_device("tpu")
    with pytest.raises(ValueError, match="got 'meta'"):
        resolve_device("meta")


class FakeStream:
    def __init__(self, device: torch.device) -> None:
        self.device = device


class FakeEvent:
    def record(self, stream: FakeStream) -> None:
        pass

    def synchronize(self) -> None:
        pass


def fake_two_gpus(monkeypatch: pytest.MonkeyPatch, set_device: Callable[[torch.device], None]) -> None:
    """A machine with two CUDA devices, the current one cuda:1 (no GPU here: torch.cuda's calls are faked)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "Stream", FakeStream)
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "set_device", set_device)


async def test_a_lane_given_an_unindexed_cuda_device_runs_on_the_current_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lane resolved only string specs: torch.device("cuda") reached torch.cuda.set_device on the worker thread,
    which refuses a device without an index, and every job failed with a bare "worker exited"."""
    chosen: list[torch.device] = []

    def set_device(device: torch.device) -> None:
        _get_device_index(device)  # what torch.cuda.set_device checks before it calls the driver
        chosen.append(device)

    fake_two_gpus(monkeypatch, set_device)
    async with Lane("train", torch.device("cuda")) as lane, asyncio.timeout(5):
        assert lane.device == torch.device("cuda", 1)
        assert await lane.run(len, "xy") == 2
    assert chosen == [torch.device("cuda", 1)]


async def test_a_worker_that_cannot_start_fails_each_job_with_its_error_as_the_cause(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    refusal = RuntimeError("CUDA error: invalid device ordinal")

    def set_device(device: torch.device) -> None:
        raise refusal

    fake_two_gpus(monkeypatch, set_device)
    lane = Lane("train", "cuda:0")
    async with asyncio.timeout(5):
        with pytest.raises(LaneClosed, match="worker exited") as failed:
            await lane.run(len, "x")
        assert failed.value.__cause__ is refusal
        assert str(failed.value).endswith(
            "(its worker failed to start: RuntimeError: CUDA error: invalid device ordinal)"
        )
        await lane.wait_closed()
        with pytest.raises(LaneClosed) as refused:
            await lane.run(len, "x")
        assert str(refused.value).startswith("lane 'train' is closed (its worker failed to start: RuntimeError")
        assert refused.value.__cause__ is refusal


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
async def test_cuda_lane_runs_on_its_own_stream_and_returns_finished_work() -> None:
    async with Lanes("cuda") as lanes, asyncio.timeout(30):
        lane = lanes.train
        assert lane.stream is not None

        def work() -> tuple[bool, torch.Tensor]:
            on_lane_stream = torch.cuda.current_stream() == lane.stream
            x = torch.randn(512, 512, device=lanes.device)
            return on_lane_stream, x @ x

        on_lane_stream, product = await lane.run(work)
        assert on_lane_stream
        assert lane.stream.query(), "the lane's stream must be idle when run() returns"
        assert product.shape == (512, 512)
        assert lanes.policy.stream is not None
        assert lanes.policy.stream != lane.stream
