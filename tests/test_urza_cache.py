"""Urza's ready-module cache: LRU eviction, single-flight loads, independent modules, budgets, quarantine events."""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, TypeVar

import pytest
import torch
from torch import nn

from actors.urza.artifact import (
    ArtifactCorrupt,
    ArtifactMetadata,
    ArtifactNotFound,
    ArtifactQuarantined,
    BlobMissing,
    FetchBudgetExceeded,
    ModuleMismatch,
    UrzaError,
)
from actors.urza.cache import QUARANTINE_EVENT, ReadyCache, clone_module, kernel_reply
from actors.urza.store import UrzaStore
from esper.runtime.lanes import Lane
from schemas.domain_enums import KernelErrorReason, TelemetryLevel
from schemas.kernels import KernelError, KernelPrefetchRequest, KernelReady, KernelRequest
from schemas.telemetry import TelemetryEvent
from tests.test_urza_artifact import GUARD, build_linear, linear_blob, linear_state

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator
    from pathlib import Path

    from esper.runtime.clock import ManualClock
    from esper.runtime.events import RecordingSink

T = TypeVar("T")


class CountingBuilder:
    """The test builder, counting its calls; optionally holds its lane thread until released."""

    def __init__(self, *, gated: bool = False) -> None:
        self.calls = 0
        self.loop = asyncio.get_running_loop()
        self.entered = asyncio.Event()
        self.release = threading.Event()
        if not gated:
            self.release.set()

    def __call__(self, metadata: ArtifactMetadata) -> nn.Module:
        self.calls += 1
        self.loop.call_soon_threadsafe(self.entered.set)
        if not self.release.wait(timeout=5):  # a safety net for a broken test, never the expected path
            raise TimeoutError("builder was never released")
        return build_linear(metadata)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[UrzaStore]:
    with UrzaStore(tmp_path) as opened:
        yield opened


@pytest.fixture
async def lane() -> AsyncIterator[Lane]:
    async with Lane("io") as io_lane:
        yield io_lane


def make_cache(
    store: UrzaStore,
    lane: Lane,
    clock: ManualClock,
    sink: RecordingSink,
    build: Callable[[ArtifactMetadata], nn.Module] = build_linear,
    capacity: int = 32,
) -> ReadyCache:
    return ReadyCache(store, build, lane.run, clock=clock, sink=sink, capacity=capacity)


async def test_fetch_hands_over_the_artifact_weights(
    store: UrzaStore, lane: Lane, clock: ManualClock, sink: RecordingSink
) -> None:
    sha = store.put(linear_blob(seed=4)).sha256
    cache = make_cache(store, lane, clock, sink)
    fetched = await cache.fetch(sha, "cpu")
    assert isinstance(fetched.module, nn.Linear)
    expected = linear_state(4, 3, seed=4)
    for name, tensor in fetched.module.state_dict().items():
        assert torch.equal(tensor, expected[name])
    assert (fetched.artifact, fetched.cache_hit, fetched.device) == (sha, False, torch.device("cpu"))
    assert (await cache.fetch(sha, "cpu")).cache_hit
    stats = cache.statistics()
    assert (stats.hits, stats.misses, stats.loads, stats.size) == (1, 1, 1, 1)


async def test_two_fetches_never_share_parameters(
    store: UrzaStore, lane: Lane, clock: ManualClock, sink: RecordingSink
) -> None:
    sha = store.put(linear_blob()).sha256
    cache = make_cache(store, lane, clock, sink)
    first = (await cache.fetch(sha, "cpu")).module
    second = (await cache.fetch(sha, "cpu")).module
    pointers = {p.data_ptr() for p in first.parameters()}
    assert pointers.isdisjoint(p.data_ptr() for p in second.parameters())

    optimizer = torch.optim.SGD(first.parameters(), lr=0.5)
    first(torch.ones(2, 4)).sum().backward()
    optimizer.step()  # training one seed ...
    expected = linear_state(4, 3, seed=0)
    for name, tensor in second.state_dict().items():
        assert torch.equal(tensor, expected[name])  # ... leaves the other untouched
    assert all(p.grad is None for p in second.parameters())
    third = (await cache.fetch(sha, "cpu")).module
    for name, tensor in third.state_dict().items():
        assert torch.equal(tensor, expected[name])  # and the cached copy is still the verified weights


async def test_concurrent_fetches_of_one_key_load_once(
    store: UrzaStore, lane: Lane, clock: ManualClock, sink: RecordingSink
) -> None:
    sha = store.put(linear_blob()).sha256
    builder = CountingBuilder()
    cache = make_cache(store, lane, clock, sink, build=builder)
    async with asyncio.timeout(5), asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(cache.fetch(sha, "cpu")) for _ in range(5)]
    modules = [task.result().module for task in tasks]
    assert builder.calls == 1
    stats = cache.statistics()
    assert (stats.loads, stats.misses, stats.joined, stats.hits, stats.in_flight) == (1, 5, 4, 0, 0)
    assert len({id(m) for m in modules}) == 5


async def test_a_cancelled_leading_fetch_hands_the_load_to_a_waiting_one(
    store: UrzaStore, lane: Lane, clock: ManualClock, sink: RecordingSink
) -> None:
    sha = store.put(linear_blob()).sha256
    builder = CountingBuilder(gated=True)
    cache = make_cache(store, lane, clock, sink, build=builder)
    async with asyncio.timeout(5), asyncio.TaskGroup() as tg:
        leader = tg.create_task(cache.fetch(sha, "cpu"))
        follower = tg.create_task(cache.fetch(sha, "cpu"))
        await builder.entered.wait()
        leader.cancel()
        builder.release.set()
    assert leader.cancelled()
    assert isinstance(follower.result().module, nn.Linear)
    assert builder.calls == 2  # the abandoned load ran to completion on the lane; the follower then led its own
    assert cache.statistics().in_flight == 0
    assert cache.cached(sha, "cpu")


async def test_lru_evicts_the_least_recently_used_module(
    store: UrzaStore, lane: Lane, clock: ManualClock, sink: RecordingSink
) -> None:
    a, b, c = (store.put(linear_blob(seed=seed)).sha256 for seed in (1, 2, 3))
    builder = CountingBuilder()
    cache = make_cache(store, lane, clock, sink, build=builder, capacity=2)
    await cache.fetch(a, "cpu")
    await cache.fetch(b, "cpu")
    await cache.fetch(a, "cpu")  # a is now the most recently used
    await cache.fetch(c, "cpu")
    assert (cache.cached(a, "cpu"), cache.cached(b, "cpu"), cache.cached(c, "cpu")) == (True, False, True)
    stats = cache.statistics()
    assert (stats.size, stats.evictions, stats.loads) == (2, 1, 3)
    assert not (await cache.fetch(b, "cpu")).cache_hit
    assert builder.calls == 4
    assert not cache.cached(a, "cpu")


async def test_prefetch_warms_the_cache(store: UrzaStore, lane: Lane, clock: ManualClock, sink: RecordingSink) -> None:
    entry = store.put(linear_blob()).sha256
    cache = make_cache(store, lane, clock, sink)
    warmed = await cache.prefetch_blueprint("bp-linear", "cpu", signature_key="flat/4/float32")
    assert warmed.sha256 == entry
    assert cache.cached(entry, "cpu")
    assert (await cache.fetch(entry, "cpu")).cache_hit
    assert (await cache.prefetch(entry, "cpu")).sha256 == entry
    stats = cache.statistics()
    assert (stats.prefetches, stats.loads, stats.hits, stats.misses) == (2, 1, 1, 0)
    with pytest.raises(ArtifactNotFound):
        await cache.prefetch_blueprint("bp-unknown", "cpu")


async def test_fetch_latency_over_budget_is_flagged_or_refused(
    store: UrzaStore, lane: Lane, clock: ManualClock, sink: RecordingSink
) -> None:
    sha = store.put(linear_blob()).sha256

    async def slow_lane(fn: Callable[[], T]) -> T:
        result = await lane.run(fn)
        clock.advance(0.025)  # this load "took" 25 ms on the cache's clock
        return result

    cache = ReadyCache(store, build_linear, slow_lane, clock=clock, sink=sink, budget_ms=10.0)
    with pytest.raises(FetchBudgetExceeded, match=r"took 25\.00 ms") as caught:
        await cache.fetch(sha, "cpu", enforce_budget=True)
    assert caught.value.reason is KernelErrorReason.LATENCY_BUDGET_EXCEEDED
    hit = await cache.fetch(sha, "cpu", enforce_budget=True)  # the load was kept: now it is a hit, in budget
    assert (hit.cache_hit, hit.latency_ms, hit.over_budget) == (True, 0.0, False)
    cache.invalidate(sha)
    flagged = await cache.fetch(sha, "cpu")
    assert flagged.over_budget
    assert flagged.latency_ms == pytest.approx(25.0)
    assert cache.statistics().over_budget == 2


async def test_corrupt_blob_is_quarantined_reported_and_never_handed_over(
    store: UrzaStore, lane: Lane, clock: ManualClock, sink: RecordingSink
) -> None:
    sha = store.put(linear_blob()).sha256
    path = store.blob_path(sha)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    builder = CountingBuilder()
    cache = make_cache(store, lane, clock, sink, build=builder)
    with pytest.raises(ArtifactCorrupt) as caught:
        await cache.fetch(sha, "cpu")
    assert builder.calls == 0  # nothing was built from the bad bytes
    assert store.quarantine_path(sha).exists()
    [event] = sink.of_type(TelemetryEvent)
    assert (event.name, event.level) == (QUARANTINE_EVENT, TelemetryLevel.CRITICAL)
    assert event.attributes == {
        "artifact": sha,
        "blueprint_id": "bp-linear",
        "reason": "sha256 mismatch",
        "quarantine_path": str(store.quarantine_path(sha)),
    }
    stats = cache.statistics()
    assert (stats.integrity_failures, stats.load_failures, stats.size) == (1, 1, 0)
    with pytest.raises(ArtifactQuarantined):
        await cache.fetch(sha, "cpu")
    assert len(sink.events) == 1  # the verdict is reported once, when it is reached

    request = KernelRequest(request_id="r1", blueprint_id="bp-linear", training_run_id="run", issued_at=1.0)
    reply = kernel_reply(request, caught.value, issued_at=2.0)
    assert isinstance(reply, KernelError)
    assert (reply.reason, reply.request_id, reply.issued_at) == (KernelErrorReason.CHECKSUM_MISMATCH, "r1", 2.0)
    assert sha in reply.detail


async def test_missing_blob_and_unknown_artifact_are_typed_errors(
    store: UrzaStore, lane: Lane, clock: ManualClock, sink: RecordingSink
) -> None:
    sha = store.put(linear_blob()).sha256
    store.blob_path(sha).unlink()
    cache = make_cache(store, lane, clock, sink)
    with pytest.raises(BlobMissing) as missing:
        await cache.fetch(sha, "cpu")
    with pytest.raises(ArtifactNotFound) as unknown:
        await cache.fetch("0" * 64, "cpu")
    errors: list[UrzaError] = [missing.value, unknown.value]
    assert [e.reason for e in errors] == [KernelErrorReason.FETCH_ERROR, KernelErrorReason.NOT_FOUND]
    assert sink.events == []
    assert cache.statistics().in_flight == 0


async def test_a_builder_that_does_not_fit_the_weights_is_a_guard_mismatch(
    store: UrzaStore, lane: Lane, clock: ManualClock, sink: RecordingSink
) -> None:
    sha = store.put(linear_blob()).sha256

    def wrong_builder(metadata: ArtifactMetadata) -> nn.Module:
        return nn.Linear(int(metadata.params["in_features"]) + 1, 3)

    cache = make_cache(store, lane, clock, sink, build=wrong_builder)
    with pytest.raises(ModuleMismatch, match="does not take its weights") as caught:
        await cache.fetch(sha, "cpu")
    assert caught.value.reason is KernelErrorReason.GUARD_MISMATCH
    assert "\n" not in str(caught.value)


async def test_prefetch_reply_names_the_artifact(
    store: UrzaStore, lane: Lane, clock: ManualClock, sink: RecordingSink
) -> None:
    sha = store.put(linear_blob()).sha256
    cache = make_cache(store, lane, clock, sink)
    request = KernelPrefetchRequest(request_id="p1", blueprint_id="bp-linear", training_run_id="run", issued_at=0.0)
    reply = kernel_reply(request, await cache.prefetch_blueprint("bp-linear", "cpu"), issued_at=clock.now())
    assert isinstance(reply, KernelReady)
    assert (reply.artifact_ref, reply.checksum, reply.guard_digest) == (sha, sha, GUARD)


def test_cache_arguments_are_checked(store: UrzaStore, clock: ManualClock, sink: RecordingSink) -> None:
    lane = Lane("io")
    with pytest.raises(ValueError, match="capacity"):
        ReadyCache(store, build_linear, lane.run, clock=clock, sink=sink, capacity=0)
    with pytest.raises(ValueError, match="budget_ms"):
        ReadyCache(store, build_linear, lane.run, clock=clock, sink=sink, budget_ms=0.0)
    lane.close()


async def test_warm_fetches_pop_spare_copies_and_refill_tops_the_pool_up(
    store: UrzaStore, lane: Lane, clock: ManualClock, sink: RecordingSink
) -> None:
    sha = store.put(linear_blob()).sha256
    cache = ReadyCache(store, build_linear, lane.run, clock=clock, sink=sink, spares=2)
    modules = [(await cache.fetch(sha, "cpu")).module for _ in range(3)]
    stats = cache.statistics()
    assert (stats.spare_hits, stats.copies_on_fetch) == (2, 1), "two spares made at load, then a copy on the spot"
    assert await cache.refill(sha, "cpu") == 2
    assert await cache.refill(sha, "cpu") == 0, "a full pool makes nothing"
    modules.append((await cache.fetch(sha, "cpu")).module)
    assert cache.statistics().spare_hits == 3
    pointers = [{p.data_ptr() for p in m.parameters()} for m in modules]
    assert all(a.isdisjoint(b) for i, a in enumerate(pointers) for b in pointers[i + 1 :])
    expected = linear_state(4, 3, seed=0)
    for module in modules:
        for name, tensor in module.state_dict().items():
            assert torch.equal(tensor, expected[name])
    assert await cache.refill("0" * 64, "cpu") == 0, "an artifact not in the cache is left alone"


def test_a_clone_has_its_own_hooks_and_non_persistent_buffers() -> None:
    cached = nn.Sequential(nn.Linear(4, 4))
    a, b = clone_module(cached), clone_module(cached)
    seen: list[str] = []
    a.register_forward_hook(lambda _m, _i, _o: seen.append("a"))
    a.get_submodule("0").register_forward_pre_hook(lambda _m, _i: seen.append("a.0"))
    a.register_buffer("scratch", torch.zeros(1), persistent=False)
    b(torch.zeros(1, 4))
    cached(torch.zeros(1, 4))
    assert seen == []
    a(torch.zeros(1, 4))
    assert seen == ["a.0", "a"]
    assert "scratch" not in cached._non_persistent_buffers_set
    assert "scratch" not in b._non_persistent_buffers_set
