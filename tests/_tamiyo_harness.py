"""A Tamiyo actor in a real ActorSystem with a real policy lane, a queue as Kasmina, and packet builders."""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, final

import msgspec

from actors.tamiyo.actor import TamiyoActor
from actors.tamiyo.policy import BlueprintCandidate, Decision, Observation
from actors.tamiyo.spec import GnnSettings, tamiyo_spec
from actors.tamiyo.state import TamiyoState
from esper.runtime.clock import ManualClock
from esper.runtime.lanes import Lane
from esper.runtime.system import ActorSystem
from schemas.config import SimicConfig, TamiyoConfig
from schemas.config_platform import SecurityConfig
from schemas.domain_enums import CostTier
from schemas.enums import EmergencyLevel, SeedLifecycleStage
from schemas.state import LayerSummary, SeedState, StepTimings, SystemStatePacket
from schemas.tamiyo import GetTamiyoState, GetTamiyoStatistics, TamiyoStatistics

if TYPE_CHECKING:
    from pathlib import Path
    from types import TracebackType

    from actors.tamiyo.policy import Policy
    from esper.runtime.events import RecordingSink
    from schemas.boundary import Decision as WireDecision

RUN_ID = "run-t"
KEY = b"k" * 32
KEY_ID = "test-key"
WALL_START_S = 1_700_000_000.0
SLOTS = ("s0", "s1", "s2")
TIMINGS = StepTimings(
    data_wait_ms=0.5, host_to_device_ms=0.0, forward_ms=2.0, backward_ms=3.0, optimizer_ms=1.0, step_ms=7.0
)
BLUEPRINTS = (
    BlueprintCandidate(blueprint_id="bp-small", cost_tier=CostTier.LOW, parameter_count=100, risk=0.1),
    BlueprintCandidate(blueprint_id="bp-wide", cost_tier=CostTier.MEDIUM, parameter_count=500, risk=0.2),
)
LAYERS = tuple(
    LayerSummary(name=f"blocks.{i}", depth=i, layer_type="conv1d", parameter_count=500, activation="relu",
                 gradient_norm=0.5 + i, weight_norm=3.0, latency_ms=0.1)
    for i in range(3)
)  # fmt: skip


def dormant(slot: str) -> SeedState:
    return SeedState(slot=slot, stage=SeedLifecycleStage.DORMANT, layer_depth=SLOTS.index(slot))


def packet(
    step: int,
    epoch: int,
    *,
    validation_loss: float | None = None,
    loss_delta: float | None = None,
    seeds: tuple[SeedState, ...] | None = None,
    hook_latency_ms: float = 1.0,
    seed_parameters: int = 0,
    emergency: EmergencyLevel = EmergencyLevel.L1_NOTICE,
    run_id: str = RUN_ID,
) -> SystemStatePacket:
    """An epoch-end packet when ``validation_loss`` is given, else a mid-epoch one."""
    return SystemStatePacket(
        run_id=run_id,
        epoch=epoch,
        epochs_total=20,
        global_step=step,
        epoch_progress=1.0 if validation_loss is not None else 0.5,
        issued_at=float(step),
        training_loss=1.0,
        training_accuracy=0.5,
        timings=TIMINGS,
        host_parameters=10_000,
        seed_parameters=seed_parameters,
        samples_per_s=1000.0,
        hook_latency_ms=hook_latency_ms,
        validation_loss=validation_loss,
        loss_delta=loss_delta,
        gradient_norm=1.0,
        layers=LAYERS,
        seed_states=seeds if seeds is not None else tuple(dormant(s) for s in SLOTS),
        emergency_level=emergency,
    )


@final
class GatedPolicy:
    """A policy whose decide() blocks on a semaphore while ``slow`` (it runs on the lane thread, so the actor's
    deadline fires on the manual clock); ``entered`` is set on the loop when a slow call has started."""

    version = "gated-1"

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.entered = asyncio.Event()
        self.gate = threading.Semaphore(0)
        self.slow = True
        self.calls = 0
        self._loop = loop

    def decide(self, observation: Observation) -> Decision:
        self.calls += 1
        if self.slow:
            self._loop.call_soon_threadsafe(self.entered.set)
            self.gate.acquire()
        return Decision(reason="gated")


@final
class TamiyoHarness:
    """``async with TamiyoHarness(...) as h``: a started system; ``h.ref`` tells packets, ``h.next()`` reads
    the next decision Kasmina would get, ``h.stats()`` is an ask (a barrier after tells)."""

    def __init__(
        self,
        run_dir: Path,
        sink: RecordingSink,
        *,
        config: TamiyoConfig | None = None,
        policy: Policy | None = None,
        gnn: GnnSettings | None = None,
        state: TamiyoState | None = None,
        simic: SimicConfig | None = None,
        state_journal: Path | None = None,
    ) -> None:
        self.clock = ManualClock()
        self.wall = ManualClock(WALL_START_S)
        self.sink = sink
        self.config = config if config is not None else TamiyoConfig()
        self.lane = Lane("policy", "cpu", num_threads=1)
        self.decisions: asyncio.Queue[WireDecision] = asyncio.Queue(maxsize=256)
        self.system = ActorSystem(clock=self.clock, sink=sink)
        self.spec = tamiyo_spec(
            run_id=RUN_ID,
            config=self.config,
            security=SecurityConfig(),
            simic=simic if simic is not None else SimicConfig(),
            signing_key=KEY,
            key_id=KEY_ID,
            outlet=self.decisions.put,
            policy_lane=self.lane,
            clock=self.clock,
            wall_clock=self.wall,
            sink=sink,
            run_dir=run_dir,
            blueprints=BLUEPRINTS,
            gnn=gnn,
            policy=policy,
            state=state,
            state_journal=state_journal,
            fsync=False,
        )

    async def __aenter__(self) -> TamiyoHarness:
        await self.system.start(self.spec)
        self.ref = self.system.ref("tamiyo", TamiyoActor)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.system.stop()
        await self.lane.aclose()

    async def next(self) -> WireDecision:
        async with asyncio.timeout(5):
            return await self.decisions.get()

    async def decide(self, msg: SystemStatePacket) -> WireDecision:
        await self.ref.tell(msg)
        return await self.next()

    async def run(self, packets: list[SystemStatePacket]) -> list[WireDecision]:
        for p in packets:
            await self.ref.tell(p)
        await self.stats()
        return [self.decisions.get_nowait() for _ in packets]

    async def stats(self) -> TamiyoStatistics:
        async with asyncio.timeout(5):
            return await self.ref.ask(GetTamiyoStatistics(request_id="q"), TamiyoStatistics)

    async def state(self) -> TamiyoState:
        async with asyncio.timeout(5):
            return await self.ref.ask(GetTamiyoState(), TamiyoState)


def plateau_run(start_step: int = 0, epochs: int = 6, loss: float = 1.0) -> list[SystemStatePacket]:
    """Epoch-end packets with a flat validation loss, one mid-epoch packet before each."""
    out: list[SystemStatePacket] = []
    for epoch in range(epochs):
        step = start_step + 10 * epoch
        out.append(packet(step + 5, epoch))
        out.append(packet(step + 10, epoch, validation_loss=loss, loss_delta=0.0 if epoch else None))
    return out


def strip_timing(decision: WireDecision) -> WireDecision:
    """The decision with decision_ms zeroed (it is measured on the monotonic clock)."""
    return msgspec.structs.replace(decision, decision_ms=0.0)
