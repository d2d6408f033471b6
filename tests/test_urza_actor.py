"""The Urza actor: KernelReady for a compiled blueprint, precise KernelErrors, replies, replays, fetch budget.

Precise KernelErrors (a flipped byte is checksum_mismatch and its blob is quarantined), replies to a reply-to ref,
replays dropped, the fetch budget enforced."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, assert_never, final

import msgspec
import pytest

from actors.tezzeret.compile import compile_all
from actors.urza.actor import OVER_BUDGET_EVENT, Urza, UrzaReply
from actors.urza.builders import signature_key, slot_signature
from actors.urza.cache import QUARANTINE_EVENT
from actors.urza.publish import UrzaArtifactSink
from actors.urza.spec import urza_spec
from actors.urza.store import UrzaStore
from esper.nn.blueprints import SlotShape, default_catalogue
from esper.runtime.actor import Actor
from esper.runtime.child_spec import ChildSpec
from esper.runtime.lanes import Lane
from esper.runtime.supervisor import Supervisor
from esper.runtime.system import ActorSystem
from schemas.config import UrzaConfig
from schemas.domain_enums import KernelErrorReason, TelemetryLevel
from schemas.kernels import KernelError, KernelPrefetchRequest, KernelReady, KernelRequest, SlotSignature
from schemas.telemetry import TelemetryEvent

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

    from esper.runtime.clock import ManualClock
    from esper.runtime.events import RecordingSink

FLAT = SlotShape("flat", 5)
CONV = SlotShape("conv2d", 4)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[UrzaStore]:
    with UrzaStore(tmp_path / "urza") as opened:
        compile_all(default_catalogue(), (FLAT, CONV), UrzaArtifactSink(opened))
        yield opened


@pytest.fixture
async def lane() -> AsyncIterator[Lane]:
    async with Lane("io") as io_lane:
        yield io_lane


def request(request_id: str, blueprint_id: str = "BP002", slot: SlotShape | None = FLAT) -> KernelRequest:
    return KernelRequest(
        request_id=request_id,
        blueprint_id=blueprint_id,
        training_run_id="run-1",
        issued_at=0.0,
        signature=None if slot is None else slot_signature(slot),
    )


async def started(store: UrzaStore, lane: Lane, clock: ManualClock, sink: RecordingSink) -> ActorSystem:
    spec = urza_spec(
        store=store, catalogue=default_catalogue(), io_lane=lane, clock=clock, sink=sink, config=UrzaConfig()
    )
    system = ActorSystem(clock=clock, sink=sink)
    await system.start(spec)
    return system


async def ask(system: ActorSystem, msg: KernelRequest | KernelPrefetchRequest) -> UrzaReply:
    reply = await system.ref("urza", Urza).ask(msg, object)
    assert isinstance(reply, KernelReady | KernelError)
    return reply


async def test_a_compiled_blueprint_is_answered_with_kernel_ready(
    store: UrzaStore, lane: Lane, clock: ManualClock, sink: RecordingSink
) -> None:
    system = await started(store, lane, clock, sink)
    async with asyncio.timeout(10):
        reply = await ask(system, request("r1"))
        again = await ask(system, request("r2"))
        other = await ask(system, request("r3", slot=CONV))
        await system.stop()
    expected = store.resolve("BP002", signature_key(FLAT))
    assert isinstance(reply, KernelReady)
    assert (reply.request_id, reply.artifact_ref, reply.checksum) == ("r1", expected.sha256, expected.sha256)
    assert reply.guard_digest == expected.metadata.guard_digest
    assert isinstance(again, KernelReady)
    assert again.artifact_ref == expected.sha256
    assert isinstance(other, KernelReady)
    assert other.artifact_ref == store.resolve("BP002", signature_key(CONV)).sha256
    assert store.statistics().loads == 2  # one verified load per artifact; the repeat was a cache hit


async def test_a_flipped_byte_is_a_checksum_mismatch_and_the_blob_is_quarantined(
    store: UrzaStore, lane: Lane, clock: ManualClock, sink: RecordingSink
) -> None:
    entry = store.resolve("BP001", signature_key(FLAT))
    blob = store.blob_path(entry.sha256)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(bytes(data))

    system = await started(store, lane, clock, sink)
    async with asyncio.timeout(10):
        reply = await ask(system, request("r1", blueprint_id="BP001"))
        retry = await ask(system, request("r2", blueprint_id="BP001"))
        await system.stop()
    assert isinstance(reply, KernelError)
    assert reply.reason is KernelErrorReason.CHECKSUM_MISMATCH
    assert entry.sha256 in reply.detail
    assert not blob.exists()
    assert store.quarantine_path(entry.sha256).read_bytes() == bytes(data)
    quarantined = store.entry(entry.sha256)
    assert quarantined is not None
    assert quarantined.status == "quarantined"
    events = [e for e in sink.of_type(TelemetryEvent) if e.name == QUARANTINE_EVENT]
    assert [(e.level, e.attributes["artifact"]) for e in events] == [(TelemetryLevel.CRITICAL, entry.sha256)]
    assert isinstance(retry, KernelError)  # never a fallback to another kernel: nothing ready is left for the slot
    assert retry.reason is KernelErrorReason.NOT_FOUND


async def test_errors_name_their_reason(store: UrzaStore, lane: Lane, clock: ManualClock, sink: RecordingSink) -> None:
    store.set_blueprint_status("BP004", "quarantined", "operator decision")
    system = await started(store, lane, clock, sink)
    async with asyncio.timeout(10):
        unknown = await ask(system, request("r1", blueprint_id="BP404"))
        no_slot = await ask(system, request("r2", slot=SlotShape("flat", 7)))
        quarantined = await ask(system, request("r3", blueprint_id="BP004", slot=CONV))
        vague = await ask(system, msgspec.structs.replace(request("r4"), signature=SlotSignature(rank=2)))
        await system.stop()
    assert isinstance(unknown, KernelError)
    assert unknown.reason is KernelErrorReason.NOT_FOUND
    assert isinstance(no_slot, KernelError)
    assert (no_slot.reason, "flat/7/float32" in no_slot.detail) == (KernelErrorReason.NOT_FOUND, True)
    assert isinstance(quarantined, KernelError)
    assert "operator decision" in quarantined.detail
    assert isinstance(vague, KernelError)
    assert "kind and features are required" in vague.detail


async def test_a_replayed_request_id_is_dropped(
    store: UrzaStore, lane: Lane, clock: ManualClock, sink: RecordingSink
) -> None:
    system = await started(store, lane, clock, sink)
    prefetch = KernelPrefetchRequest(
        request_id="p1", blueprint_id="BP003", training_run_id="run-1", issued_at=0.0, signature=slot_signature(FLAT)
    )
    async with asyncio.timeout(10):
        first = await ask(system, prefetch)
        replay = await ask(system, prefetch)
        await system.stop()
    assert isinstance(first, KernelReady)
    assert isinstance(replay, KernelError)
    assert replay.reason is KernelErrorReason.STALE_REQUEST


@final
class Collector(Actor[KernelReady | KernelError]):
    """Receives the replies Urza tells its reply-to ref."""

    def __init__(self, replies: list[UrzaReply], arrived: asyncio.Event) -> None:
        super().__init__(inbox=(KernelReady, KernelError))
        self.replies = replies
        self.arrived = arrived

    async def handle(self, msg: KernelReady | KernelError) -> None:
        match msg:
            case KernelReady() | KernelError():
                self.replies.append(msg)
                self.arrived.set()
            case _:
                assert_never(msg)


async def test_replies_also_go_to_the_reply_to_ref(
    store: UrzaStore, lane: Lane, clock: ManualClock, sink: RecordingSink
) -> None:
    replies: list[UrzaReply] = []
    arrived = asyncio.Event()
    system = ActorSystem(clock=clock, sink=sink)

    def urza() -> Urza:
        return Urza(
            store=store,
            catalogue=default_catalogue(),
            lane=lane,
            clock=clock,
            sink=sink,
            config=UrzaConfig(),
            reply_to=system.ref("collector", Collector),
        )

    tree = Supervisor([ChildSpec("collector", lambda: Collector(replies, arrived)), ChildSpec("urza", urza)])
    async with asyncio.timeout(10):
        await system.start(tree)
        await system.ref("urza", Urza).tell(request("told"))
        await arrived.wait()
        await system.stop()
    assert [(type(r), r.request_id) for r in replies] == [(KernelReady, "told")]


class SteppingClock:
    """Every reading is 20 ms after the previous one, so any timed hand-over exceeds a 10 ms budget."""

    def __init__(self) -> None:
        self.now_s = 0.0

    def now(self) -> float:
        self.now_s += 0.020
        return self.now_s

    async def sleep(self, delay_s: float) -> None:
        await asyncio.sleep(0)


@pytest.mark.parametrize("enforce", [True, False])
async def test_a_hand_over_over_budget_is_reported_and_refused_when_enforced(
    store: UrzaStore, lane: Lane, sink: RecordingSink, enforce: bool
) -> None:
    clock = SteppingClock()
    urza = Urza(
        store=store,
        catalogue=default_catalogue(),
        lane=lane,
        clock=clock,
        sink=sink,
        config=UrzaConfig(fetch_budget_ms=10.0),
        enforce_budget=enforce,
    )
    system = ActorSystem(clock=clock, sink=sink)
    async with asyncio.timeout(10):
        await system.start(ChildSpec("urza", lambda: urza))
        reply = await ask(system, request("slow"))
        prefetch = await ask(
            system,
            KernelPrefetchRequest(
                request_id="p", blueprint_id="BP002", training_run_id="run-1", issued_at=0.0, signature=None
            ),
        )
        await system.stop()
    over = [e for e in sink.of_type(TelemetryEvent) if e.name == OVER_BUDGET_EVENT]
    assert len(over) == 1  # the prefetch has no budget
    assert over[0].level is TelemetryLevel.WARNING
    if enforce:
        assert isinstance(reply, KernelError)
        assert reply.reason is KernelErrorReason.LATENCY_BUDGET_EXCEEDED
    else:
        assert isinstance(reply, KernelReady)
    assert isinstance(prefetch, KernelReady)
    assert urza.statistics().over_budget == 1
    assert urza.cache.cached(store.resolve("BP002", signature_key(FLAT)).sha256, "cpu")  # a retry would be a hit
