"""Seed preparation off the training path: deterministic builds, the LRU ready cache (never shared), prefetch."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, final

import pytest
import torch

from actors.kasmina.preparation import (
    CatalogueSource,
    ModuleCache,
    PreparationRequest,
    Preparer,
    cache_key,
    derive_build_seed,
)
from actors.urza.artifact import ArtifactNotFound
from esper.nn.blueprints import SlotShape, SourcedModule
from esper.runtime.handoff import Handoff
from esper.runtime.lanes import Lane
from schemas.config import KasminaConfig
from schemas.domain_enums import TelemetryLevel
from schemas.enums import SeedLifecycleStage as Stage
from schemas.kasmina import PrefetchSeed
from schemas.nissa import SeedStageChanged
from schemas.telemetry import TelemetryEvent
from tests._kasmina_harness import running_kasmina

if TYPE_CHECKING:
    from collections.abc import Mapping

    from torch import nn

    from esper.nn.blueprints import BlueprintDescriptor
    from esper.runtime.clock import ManualClock
    from esper.runtime.events import RecordingSink
    from schemas.boundary import BoundaryPlan

CONV = SlotShape("conv1d", 8)


def request(seed_id: str, *, rank: float = 2.0) -> PreparationRequest:
    return PreparationRequest(
        seed_id=seed_id,
        slot="a",
        blueprint_id="BP002",
        slot_shape=CONV,
        params=(("rank", rank),),
        build_seed=derive_build_seed(7, seed_id),
    )


def shares_storage(a: nn.Module, b: nn.Module) -> bool:
    ptrs = {p.data_ptr() for p in a.parameters()}
    return any(p.data_ptr() in ptrs for p in b.parameters())


def same_values(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_build_seed_is_a_pure_function_of_run_seed_and_seed_id() -> None:
    assert derive_build_seed(7, "s1") == derive_build_seed(7, "s1")
    assert len({derive_build_seed(7, "s1"), derive_build_seed(7, "s2"), derive_build_seed(8, "s1")}) == 3
    assert 0 <= derive_build_seed(7, "s1") < 2**63


def test_cache_evicts_the_least_recently_used_and_hands_out_copies() -> None:
    cache = ModuleCache(capacity=2)
    source = CatalogueSource()
    keys = [cache_key("BP002", CONV, {"rank": 2.0}, seed) for seed in (1, 2, 3)]
    for key in keys[:2]:
        cache.put(key, source.fetch("BP002", CONV, {"rank": 2.0}, key.seed))
    first = cache.get(keys[0])
    assert first is not None
    cache.put(keys[2], source.fetch("BP002", CONV, {"rank": 2.0}, 3))
    assert keys[0] in cache
    assert keys[1] not in cache, "the least recently used entry goes first"
    again = cache.get(keys[0])
    assert again is not None
    assert same_values(first.module, again.module)
    assert not shares_storage(first.module, again.module), "two takers of one entry never share parameters"
    with torch.no_grad():
        next(first.module.parameters()).add_(1.0)
    third = cache.get(keys[0])
    assert third is not None
    assert same_values(third.module, again.module), "training one copy leaves the cached module pristine"
    stats = cache.statistics()
    assert (stats.size, stats.capacity, stats.hits, stats.misses, stats.evictions) == (2, 2, 3, 0, 1)
    assert cache.get(keys[1]) is None
    assert cache.statistics().misses == 1


async def test_preparer_builds_deterministically_and_a_cache_hit_is_a_fresh_copy() -> None:
    handoff: Handoff[nn.Module] = Handoff(capacity=4)
    async with Lane("io") as lane:
        preparer = Preparer(CatalogueSource(), handoff, lane, cache=ModuleCache(4))
        cold = await preparer.prepare(request("s1"))
        warm = await preparer.prepare(request("s1"))
    assert (cold.cache_hit, warm.cache_hit) == (False, True)
    assert cold.interface_ok, cold.probe_failures
    assert cold.probe_grad_norm > 0.0
    assert cold.parameter_count == sum(p.numel() for p in handoff.take(warm.handle).parameters())
    one = handoff.take(cold.handle)
    rebuilt = CatalogueSource().fetch("BP002", CONV, {"rank": 2.0}, derive_build_seed(7, "s1")).module
    assert same_values(one, rebuilt), "a resume rebuilds the same initial weights"
    assert all(p.grad is None for p in one.parameters()), "the probe leaves no gradients behind"
    assert cold.param_names == tuple(name for name, _ in one.named_parameters())


@pytest.mark.parametrize("features", [16, 256, 4096])
async def test_the_g1_probe_passes_a_healthy_seed_on_slots_of_any_width(features: int) -> None:
    """The probe's gradient norm is taken on an output scaled by its size, so the G1 bound (kasmina's default 100)
    judges the seed, not the slot's width (BP007 on a 256-wide flat slot measured 115 unscaled, 1683 at 4096)."""
    handoff: Handoff[nn.Module] = Handoff(capacity=4)
    wide = PreparationRequest(
        seed_id="s1",
        slot="a",
        blueprint_id="BP007",
        slot_shape=SlotShape("flat", features),
        params=(("width", 1.0),),
        build_seed=derive_build_seed(7, "s1"),
    )
    async with Lane("io") as lane:
        prepared = await Preparer(CatalogueSource(), handoff, lane, cache=ModuleCache(4)).prepare(wide)
    assert 0.0 < prepared.probe_grad_norm < KasminaConfig().g2_max_gradient_norm / 4


async def test_prefetch_warms_the_cache_for_the_germinate_that_follows(clock: ManualClock, sink: RecordingSink) -> None:
    async with running_kasmina(clock, sink) as h:
        prefetch = PrefetchSeed(
            request_id="p1", blueprint_id="BP002", slot="a", seed_id="s1", blueprint_params={"rank": 2}
        )
        await h.ref.tell(prefetch)
        await h.ref.tell(prefetch)  # a replay, dropped by request_id
        stats = await h.statistics()
        assert (stats.prefetches, stats.cache_size, stats.cache_hits) == (1, 1, 0)
        plan = await h.boundary(1, h.germinate(rank=2))
        stats = await h.statistics()
        assert (stats.cache_hits, stats.cache_size, stats.preparations) == (1, 1, 1)
        handle = plan.ops[0].handle
        assert handle is not None
        module = h.handoff.take(handle)
        rebuilt = CatalogueSource().fetch("BP002", CONV, {"rank": 2.0}, derive_build_seed(7, "s1")).module
        assert same_values(module, rebuilt)


async def test_actor_cache_evicts_at_capacity_and_seeds_never_share(clock: ManualClock, sink: RecordingSink) -> None:
    slots = {"a": CONV, "c": CONV}
    async with running_kasmina(clock, sink, cache_capacity=1, slots=slots) as h:
        for i, seed_id in enumerate(("s1", "s2")):
            await h.ref.tell(PrefetchSeed(request_id=f"p{i}", blueprint_id="BP001", slot="a", seed_id=seed_id))
        assert (await h.statistics()).cache_evictions == 1
        one = await h.boundary(1, h.germinate(slot="a", seed_id="s2", blueprint_id="BP001"))
        two = await h.boundary(2, h.germinate(slot="c", seed_id="s1", blueprint_id="BP001"))
        handles = [p.ops[0].handle for p in (one, two)]
        assert None not in handles
        modules = [h.handoff.take(str(handle)) for handle in handles]
        assert not shares_storage(modules[0], modules[1])
        stats = await h.statistics()
        assert (stats.cache_hits, stats.cache_misses) == (1, 1), "s2 was still cached, s1 had been evicted"


async def test_prefetch_of_an_unknown_slot_or_blueprint_is_refused(clock: ManualClock, sink: RecordingSink) -> None:
    async with running_kasmina(clock, sink) as h:
        await h.ref.tell(PrefetchSeed(request_id="p1", blueprint_id="BP001", slot="zz", seed_id="s1"))
        await h.ref.tell(PrefetchSeed(request_id="p2", blueprint_id="BP404", slot="a", seed_id="s1"))
        assert (await h.statistics()).prefetches == 0
        refused = [e for e in sink.of_type(TelemetryEvent) if e.name == "prefetch_rejected"]
        assert len(refused) == 2


@final
class BrokenSource:
    """Knows the catalogue but cannot deliver any module."""

    def __init__(self) -> None:
        self._inner = CatalogueSource()

    def describe(self, blueprint_id: str) -> BlueprintDescriptor | None:
        return self._inner.describe(blueprint_id)

    def fetch(self, blueprint_id: str, slot_shape: SlotShape, params: Mapping[str, float], seed: int) -> SourcedModule:
        raise ValueError(f"artifact for {blueprint_id} unreadable")


async def test_a_failed_preparation_is_reported_and_culls_the_seed(clock: ManualClock, sink: RecordingSink) -> None:
    async with running_kasmina(clock, sink, source=BrokenSource()) as h:
        plan = await h.boundary(1, h.germinate(blueprint_id="BP001"))
        assert plan.ops == ()
        assert plan.command_results[0].accepted
        failed = [e for e in sink.of_type(TelemetryEvent) if e.name == "preparation_failed"]
        assert [e.level for e in failed] == [TelemetryLevel.ERROR]
        assert "unreadable" in failed[0].description
        after = await h.boundary(2)
        assert after.ops == (), "nothing was attached, so nothing is detached"
        assert (await h.stage("a")) is Stage.CULLED
        assert (await h.statistics()).preparation_failures == 1
        # No gradient was ever judged: the reason names the preparation, not G1_GRADIENT_HEALTH.
        culls = [e.reason for e in sink.of_type(SeedStageChanged) if e.to_stage is Stage.CULLED]
        assert culls == ["preparation_failed:fetch_error"]


@final
class NamedArtifactSource:
    """The catalogue's modules, served as if from a verified Urza artifact with a known SHA-256."""

    SHA256 = "ab" * 32

    def __init__(self) -> None:
        self._inner = CatalogueSource()

    def describe(self, blueprint_id: str) -> BlueprintDescriptor | None:
        return self._inner.describe(blueprint_id)

    def fetch(self, blueprint_id: str, slot_shape: SlotShape, params: Mapping[str, float], seed: int) -> SourcedModule:
        return SourcedModule(self._inner.fetch(blueprint_id, slot_shape, params, seed).module, self.SHA256)


async def test_the_attach_names_the_artifact_its_module_came_from(clock: ManualClock, sink: RecordingSink) -> None:
    """The graft log records the attach op's artifact (REFERENCE.md section 6): it stayed empty, so no checkpoint
    said whether a seed came from a verified artifact or from the catalogue. A cache hit keeps the name."""
    slots = {"a": CONV, "c": CONV}
    async with running_kasmina(clock, sink, source=NamedArtifactSource(), slots=slots) as h:
        await h.ref.tell(PrefetchSeed(request_id="p1", blueprint_id="BP001", slot="c", seed_id="s2"))
        cold = await h.boundary(1, h.germinate(slot="a", seed_id="s1", blueprint_id="BP001"))
        warm = await h.boundary(2, h.germinate(slot="c", seed_id="s2", blueprint_id="BP001"))
        assert (await h.statistics()).cache_hits == 1
    attaches = [op for plan in (cold, warm) for op in plan.ops if op.kind == "attach"]
    assert [op.artifact_sha256 for op in attaches] == [NamedArtifactSource.SHA256] * 2
    async with running_kasmina(clock, sink) as h:
        plan = await h.boundary(1, h.germinate(blueprint_id="BP001"))
    assert [op.artifact_sha256 for op in plan.ops] == [None], "a catalogue build names no artifact"


@final
class LateSource:
    """The catalogue's modules, but the first ``misses`` fetches find no artifact yet (Tezzeret still compiling)."""

    def __init__(self, misses: int) -> None:
        self._inner = CatalogueSource()
        self.misses = misses
        self.fetches = 0

    def describe(self, blueprint_id: str) -> BlueprintDescriptor | None:
        return self._inner.describe(blueprint_id)

    def fetch(self, blueprint_id: str, slot_shape: SlotShape, params: Mapping[str, float], seed: int) -> SourcedModule:
        self.fetches += 1
        if self.fetches <= self.misses:
            raise ArtifactNotFound(blueprint_id, f"no ready artifact for {blueprint_id} yet")
        return self._inner.fetch(blueprint_id, slot_shape, params, seed)


async def _advance_while_waiting(clock: ManualClock, waiting: asyncio.Task[BoundaryPlan], step_s: float) -> int:
    """Advance the clock by ``step_s`` each time the preparation sleeps on it, until the plan is out; returns how
    many sleeps there were."""
    sleeps = 0
    async with asyncio.timeout(5):
        while not waiting.done():
            if clock.sleepers:
                clock.advance(step_s)
                sleeps += 1
            await asyncio.sleep(0)
    return sleeps


async def test_a_preparation_waits_for_an_artifact_still_being_compiled(
    clock: ManualClock, sink: RecordingSink
) -> None:
    source = LateSource(misses=2)
    async with running_kasmina(clock, sink, source=source) as h:
        waiting = asyncio.create_task(h.boundary(1, h.germinate(blueprint_id="BP001")))
        sleeps = await _advance_while_waiting(clock, waiting, 0.1)
        plan = waiting.result()
        assert [op.kind for op in plan.ops] == ["attach"]
        assert (sleeps, source.fetches) == (2, 3)
        assert [e.name for e in sink.of_type(TelemetryEvent) if e.name == "artifact_wait"] == ["artifact_wait"]
        assert (await h.statistics()).preparation_failures == 0


async def test_an_artifact_that_never_comes_fails_the_preparation_after_the_wait(
    clock: ManualClock, sink: RecordingSink
) -> None:
    source = LateSource(misses=10**6)
    async with running_kasmina(clock, sink, source=source) as h:
        waiting = asyncio.create_task(h.boundary(1, h.germinate(blueprint_id="BP001")))
        await _advance_while_waiting(clock, waiting, 0.1)
        plan = waiting.result()
        assert plan.ops == ()
        failed = [e for e in sink.of_type(TelemetryEvent) if e.name == "preparation_failed"]
        assert len(failed) == 1
        assert "no ready artifact" in failed[0].description
        assert clock.now() >= KasminaConfig().artifact_wait_ms / 1e3, "it gave up only once the wait was spent"
