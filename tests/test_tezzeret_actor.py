"""The Tezzeret actor: start-up compilation runs in the background, compile requests are answered.

Results and failures are reported as events."""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING

import pytest
import structlog

from actors.tezzeret.actor import COMPILATION_FAILED, COMPILATION_TOTAL, Tezzeret
from actors.tezzeret.spec import tezzeret_spec
from actors.urza.publish import UrzaArtifactSink
from actors.urza.store import UrzaStore
from esper.nn.blueprints import Catalogue, SlotShape, default_catalogue
from esper.runtime.lanes import Lane
from esper.runtime.supervisor import Supervisor
from esper.runtime.system import ActorSystem
from schemas.config import TezzeretConfig
from schemas.domain_enums import TelemetryLevel
from schemas.kernels import CompileRequest, CompileResult, KernelCatalogUpdate, SlotSignature
from schemas.telemetry import TelemetryEvent
from tests.test_tezzeret_compile import BrokenBuilder

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator, Mapping
    from pathlib import Path

    from torch import nn

    from esper.nn.blueprints import BlueprintDescriptor, ProbeReport
    from esper.runtime.clock import ManualClock
    from esper.runtime.events import RecordingSink

SLOTS = (SlotShape("flat", 5), SlotShape("conv2d", 4))


class GatedSink:
    """The real Urza sink, but publish() holds the io lane until the test releases it."""

    def __init__(self, store: UrzaStore) -> None:
        self.inner = UrzaArtifactSink(store)
        self.loop = asyncio.get_running_loop()
        self.entered = asyncio.Event()
        self.release = threading.Event()
        self.published = 0

    def publish(
        self,
        module: nn.Module,
        *,
        descriptor: BlueprintDescriptor,
        slot: SlotShape,
        params: Mapping[str, float],
        report: ProbeReport,
        guard_digest: str,
    ) -> str:
        self.loop.call_soon_threadsafe(self.entered.set)
        if not self.release.wait(timeout=10):  # a safety net for a broken test, never the expected path
            raise TimeoutError("publish was never released")
        self.published += 1
        return self.inner.publish(
            module, descriptor=descriptor, slot=slot, params=params, report=report, guard_digest=guard_digest
        )

    def mark_failed(self, blueprint_id: str, reason: str) -> None:
        self.inner.mark_failed(blueprint_id, reason)

    def clear_failed(self, blueprint_id: str) -> None:
        self.inner.clear_failed(blueprint_id)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[UrzaStore]:
    with UrzaStore(tmp_path / "urza") as opened:
        yield opened


@pytest.fixture
async def lane() -> AsyncIterator[Lane]:
    async with Lane("io") as io_lane:
        yield io_lane


def _small_catalogue() -> Catalogue:
    full = default_catalogue()
    return Catalogue(tuple(full.get(b) for b in ("BP001", "BP002", "BP003", "BP004")))


async def test_start_up_compilation_runs_in_the_background(
    store: UrzaStore, lane: Lane, clock: ManualClock, sink: RecordingSink
) -> None:
    gated = GatedSink(store)
    spec = tezzeret_spec(
        catalogue=_small_catalogue(),
        slots=SLOTS,
        artifacts=gated,
        io_lane=lane,
        clock=clock,
        sink=sink,
        config=TezzeretConfig(),
    )
    system = ActorSystem(clock=clock, sink=sink)
    try:
        async with asyncio.timeout(5):
            await system.start(spec)  # returns once on_start has run ...
            await gated.entered.wait()
        assert gated.published == 0  # ... while the first compile job still holds the io lane
        assert sink.of_type(KernelCatalogUpdate) == []
    finally:
        gated.release.set()
    ref = system.ref("tezzeret", Tezzeret)
    async with asyncio.timeout(30):
        # Queued behind the start-up pass, so its reply is a barrier: the pass has finished when it arrives.
        barrier = await ref.ask(CompileRequest(request_id="after-start", issued_at=0.0), CompileResult)
        await system.stop()
    jobs = 2 + 2 + 1 + 1  # BP001 and BP002 fit both slots, BP003 only flat, BP004 only conv2d
    assert barrier.compiled == jobs
    assert gated.published == 2 * jobs
    assert store.statistics().puts_new == jobs  # the barrier's pass found every artifact already stored
    totals = [e for e in sink.of_type(TelemetryEvent) if e.name == COMPILATION_TOTAL]
    assert [e.attributes["request_id"] for e in totals] == ["tezzeret-start-0", "after-start"]
    assert [e.attributes["compiled"] for e in totals] == [jobs, jobs]
    updates = sink.of_type(KernelCatalogUpdate)
    assert len(updates) == 2 * jobs
    assert len({u.artifact_ref for u in updates}) == jobs
    assert all(u.compile_ms >= 0 and not u.eager_fallback for u in updates)


async def test_a_compile_request_reports_failures_and_unknown_blueprints(
    store: UrzaStore, lane: Lane, clock: ManualClock, sink: RecordingSink
) -> None:
    spec = tezzeret_spec(
        catalogue=_small_catalogue(),
        slots=SLOTS,
        artifacts=UrzaArtifactSink(store),
        io_lane=lane,
        clock=clock,
        sink=sink,
        config=TezzeretConfig(compile_at_start=False),
        build=BrokenBuilder(raises="BP002", not_zero="BP999"),
    )
    system = ActorSystem(clock=clock, sink=sink)
    async with asyncio.timeout(30):
        await system.start(spec)
        ref = system.ref("tezzeret", Tezzeret)
        request = CompileRequest(
            request_id="r1",
            issued_at=0.0,
            blueprint_ids=("BP001", "BP002", "BP404"),
            signatures=(SlotSignature(rank=2, kind="flat", features=5),),
        )
        result = await ref.ask(request, CompileResult)
        await system.stop()
    assert (result.request_id, result.compiled, result.failed) == ("r1", 1, 2)
    assert len(result.artifacts) == 1
    assert set(result.failures) == {"BP002", "BP404"}
    assert "builder exploded" in result.failures["BP002"]
    assert "not in the catalogue" in result.failures["BP404"]
    status = store.blueprint_status("BP002")
    assert status is not None
    assert status.state == "failed"
    assert store.blueprint_status("BP404") is None  # an unknown id is reported, never marked
    failed = [e for e in sink.of_type(TelemetryEvent) if e.name == COMPILATION_FAILED]
    assert [(e.level, e.attributes["blueprint_id"], e.attributes["slot"]) for e in failed] == [
        (TelemetryLevel.ERROR, "BP002", "flat/5")
    ]
    total = next(e for e in sink.of_type(TelemetryEvent) if e.name == COMPILATION_TOTAL)
    assert total.level is TelemetryLevel.WARNING
    assert not any(e.attributes.get("request_id") == "tezzeret-start-0" for e in sink.of_type(TelemetryEvent))


async def test_a_signature_without_kind_is_refused_in_the_result(
    store: UrzaStore, lane: Lane, clock: ManualClock, sink: RecordingSink
) -> None:
    spec = tezzeret_spec(
        catalogue=_small_catalogue(),
        slots=SLOTS,
        artifacts=UrzaArtifactSink(store),
        io_lane=lane,
        clock=clock,
        sink=sink,
        config=TezzeretConfig(compile_at_start=False),
    )
    system = ActorSystem(clock=clock, sink=sink)
    async with asyncio.timeout(10):
        await system.start(spec)
        ref = system.ref("tezzeret", Tezzeret)
        request = CompileRequest(request_id="r2", issued_at=0.0, signatures=(SlotSignature(rank=2),))
        result = await ref.ask(request, CompileResult)
        await system.stop()
    assert (result.compiled, result.failed) == (0, 1)
    assert "must name its kind and features" in result.failures["<signatures>"]
    assert store.entries() == ()


class CrashingSink:
    """An artifact sink whose publish raises what no compile outcome covers: every compile crashes Tezzeret."""

    def __init__(self) -> None:
        self.calls = 0

    def publish(
        self,
        module: nn.Module,
        *,
        descriptor: BlueprintDescriptor,
        slot: SlotShape,
        params: Mapping[str, float],
        report: ProbeReport,
        guard_digest: str,
    ) -> str:
        self.calls += 1
        raise RuntimeError("chaos: the compile crashed")

    def mark_failed(self, blueprint_id: str, reason: str) -> None:
        return None

    def clear_failed(self, blueprint_id: str) -> None:
        return None


async def test_a_start_pass_that_crashed_tezzeret_is_not_queued_again_by_its_restarts(
    lane: Lane, clock: ManualClock, sink: RecordingSink
) -> None:
    """Every restart re-queued the start pass, so a compile that crashes every time crashed every incarnation, and the
    restarts ended the run (with no epoch trained), although seeds are built from the catalogue without Tezzeret."""
    crashing = CrashingSink()
    spec = tezzeret_spec(
        catalogue=_small_catalogue(),
        slots=SLOTS,
        artifacts=crashing,
        io_lane=lane,
        clock=clock,
        sink=sink,
        config=TezzeretConfig(),
    )
    system = ActorSystem(clock=clock, sink=sink)
    unknown = CompileRequest(request_id="after-crash", issued_at=0.0, blueprint_ids=("BP404",))  # no compile job
    with structlog.testing.capture_logs() as logs:
        async with asyncio.timeout(30):
            await system.start(Supervisor([spec], backoff_initial_s=0.0, backoff_max_s=0.0))
            ref = system.ref("tezzeret", Tezzeret)
            # Each ask is a barrier: queued behind the start pass (and, were it queued again, behind the next one).
            first = await ref.ask(unknown, CompileResult)
            second = await ref.ask(unknown, CompileResult)
            await system.stop()
    assert (first.failed, second.failed) == (1, 1)
    assert crashing.calls == 1  # the start pass's first job crashed it, once
    [state] = system.snapshot()
    assert state.restarts == 1
    skipped = [e for e in logs if e["event"] == "tezzeret_start_pass_skipped"]
    assert len(skipped) == 1
    assert skipped[0]["log_level"] == "warning"
    assert "catalogue" in skipped[0]["detail"]
