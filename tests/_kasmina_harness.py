"""Test harness for the Kasmina actor: a real ActorSystem, a real io lane and blueprints, stand-ins for Tolaria/Tamiyo.

Tolaria's stand-in is a bounded asyncio queue the plans are put into (and receipts the test writes itself); Tamiyo's
is the test, sending Decisions whose commands are signed with esper.runtime.signing.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec

from actors.kasmina.actor import KasminaActor
from actors.kasmina.gates import GateSettings
from actors.kasmina.lifecycle_settings import LifecycleSettings, StageDwell
from actors.kasmina.planner import BoundaryPlanner
from actors.kasmina.preparation import CatalogueSource, PreparedSeed
from actors.kasmina.spec import PlannerArgs, kasmina_spec
from esper.nn.blueprints import SlotShape
from esper.runtime.handoff import Handoff
from esper.runtime.lanes import Lane
from esper.runtime.signing import sign_command
from esper.runtime.system import ActorSystem
from schemas.boundary import BoundaryApplied, BoundaryPlan, Decision, OpOutcome
from schemas.config import BreakerConfig, KasminaConfig
from schemas.config_platform import SecurityConfig
from schemas.control import AdaptationCommand, BlendConfig, CommandSecurity
from schemas.domain_enums import CommandKind
from schemas.enums import SeedLifecycleStage
from schemas.kasmina import GetKasminaStatistics, GetSeedStates, KasminaStatistics, SeedStates
from schemas.state import SeedState, StepTimings, SystemStatePacket

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
    from pathlib import Path

    from torch import nn

    from actors.kasmina.actor import KasminaMessage
    from actors.kasmina.preparation import SeedSource
    from esper.runtime.clock import Clock, ManualClock
    from esper.runtime.events import EventSink, RecordingSink
    from esper.runtime.ref import ActorRef

KEY = b"kasmina-test-key-0123456789abcdef"
KEY_ID = "test"
RUN = "run-kasmina"


def signed_germinate(
    step: int,
    key: bytes = KEY,
    *,
    key_id: str = KEY_ID,
    run_id: str = RUN,
    blueprint_id: str = "BP002",
    params: dict[str, float | int] | None = None,
) -> AdaptationCommand:
    """A GERMINATE into slot a decided on ``step`` of ``run_id``, signed as Tamiyo signs it (issued at time 0)."""
    command_id = str(uuid.uuid4())
    command = AdaptationCommand(
        command_id=command_id,
        issued_at=0.0,
        training_run_id=run_id,
        kind=CommandKind.GERMINATE,
        decision_step=step,
        policy_version="test-1",
        security=CommandSecurity(signature="", key_id="", nonce=command_id, issued_at=0.0),
        target_slot="a",
        blueprint_id=blueprint_id,
        blueprint_params=dict(params or {}),
        blend=BlendConfig(),
    )
    return sign_command(command, key, key_id)


SLOTS: Mapping[str, SlotShape] = {"a": SlotShape("conv1d", 8), "b": SlotShape("flat", 16)}
TIMINGS = StepTimings(
    data_wait_ms=0.0, host_to_device_ms=0.0, forward_ms=1.0, backward_ms=1.0, optimizer_ms=0.1, step_ms=2.1
)


def fast_settings(*, max_active_seeds: int = 4, embargo_epochs: int = 2) -> LifecycleSettings:
    """Short dwells and windows so a seed crosses every stage in a few dozen boundaries."""
    return LifecycleSettings(
        dwell=StageDwell(training=2, shadowing=1, probationary=1),
        gates=GateSettings(
            stability_window_steps=2,
            clamp_window_steps=2,
            validation_window_batches=4,
            min_validation_batches=2,
            max_active_seeds=max_active_seeds,
        ),
        embargo_epochs=embargo_epochs,
    )


@dataclass
class Harness:
    """One running Kasmina and the test's ends of its conversations."""

    ref: ActorRef[KasminaMessage]
    plans: asyncio.Queue[BoundaryPlan]
    handoff: Handoff[nn.Module]
    clock: ManualClock
    sink: RecordingSink
    lag: int
    # Commands built without a decision step, by id, with the key that signs them: ``decision`` signs each for the step
    # it decides, as Tamiyo does.
    unstamped: dict[str, bytes] = field(default_factory=dict)

    def command(
        self,
        kind: CommandKind,
        *,
        slot: str | None = None,
        seed_id: str | None = None,
        blueprint_id: str | None = None,
        params: Mapping[str, float] | None = None,
        blend: BlendConfig | None = None,
        lr_delta: float | None = None,
        key: bytes = KEY,
        issued_at: float | None = None,
        decision_step: int | None = None,
    ) -> AdaptationCommand:
        """A command signed like Tamiyo signs it (GERMINATE gets a default blend); without ``decision_step`` it is
        signed again for the step of the decision that carries it (``decision``)."""
        command_id = str(uuid.uuid4())
        at = self.clock.now() if issued_at is None else issued_at
        if kind is CommandKind.GERMINATE and blend is None:
            blend = BlendConfig()
        cmd = AdaptationCommand(
            command_id=command_id,
            issued_at=at,
            training_run_id=RUN,
            kind=kind,
            decision_step=0 if decision_step is None else decision_step,
            policy_version="test-1",
            security=CommandSecurity(signature="", key_id="", nonce=command_id, issued_at=at),
            target_slot=slot,
            target_seed_id=seed_id,
            blueprint_id=blueprint_id,
            blueprint_params=dict(params or {}),
            blend=blend,
            lr_delta=lr_delta,
        )
        if decision_step is None:
            self.unstamped[command_id] = key
        return sign_command(cmd, key, KEY_ID)

    def germinate(
        self, slot: str = "a", seed_id: str = "s1", blueprint_id: str = "BP002", **kw: float
    ) -> AdaptationCommand:
        return self.command(CommandKind.GERMINATE, slot=slot, seed_id=seed_id, blueprint_id=blueprint_id, params=kw)

    def packet(self, step: int, *, epoch: int = 0, seeds: tuple[SeedState, ...] = ()) -> SystemStatePacket:
        return make_packet(step, epoch=epoch, seeds=seeds, issued_at=self.clock.now())

    def decision(self, step: int, command: AdaptationCommand | None = None) -> Decision:
        if command is not None and (key := self.unstamped.get(command.command_id)) is not None:
            command = sign_command(msgspec.structs.replace(command, decision_step=step), key, KEY_ID)
        return Decision(run_id=RUN, decided_on_step=step, command=command)

    async def next_plan(self) -> BoundaryPlan:
        async with asyncio.timeout(10):
            return await self.plans.get()

    async def boundary(
        self, step: int, command: AdaptationCommand | None = None, *, epoch: int = 0, seeds: tuple[SeedState, ...] = ()
    ) -> BoundaryPlan:
        """Tolaria's packet of ``step`` and Tamiyo's decision on it; returns the plan Kasmina sends."""
        await self.ref.tell(self.packet(step, epoch=epoch, seeds=seeds))
        await self.ref.tell(self.decision(step, command))
        return await self.next_plan()

    async def apply(
        self, plan: BoundaryPlan, *, applied: bool = True, error: str | None = None, level_refused: bool = False
    ) -> None:
        """Tolaria's receipt: every op of ``plan`` applied (or failed, or refused for the emergency level) at its effect
        step; attach handles taken."""
        outcomes = []
        for op in plan.ops:
            if op.kind == "attach" and op.handle is not None and applied:
                self.handoff.take(op.handle)
            outcomes.append(
                OpOutcome(
                    kind=op.kind,
                    slot=op.slot,
                    seed_id=op.seed_id,
                    applied=applied,
                    error=error,
                    level_refused=level_refused,
                )
            )
        await self.ref.tell(
            BoundaryApplied(
                run_id=RUN,
                decided_on_step=plan.decided_on_step,
                effect_step=plan.effect_step,
                applied_step=plan.effect_step,
                outcomes=tuple(outcomes),
            )
        )

    async def states(self) -> dict[str, SeedState]:
        async with asyncio.timeout(10):
            reply = await self.ref.ask(GetSeedStates(), SeedStates)
        return {s.slot: s for s in reply.states}

    async def stage(self, slot: str) -> SeedLifecycleStage:
        return (await self.states())[slot].stage

    async def statistics(self) -> KasminaStatistics:
        async with asyncio.timeout(10):
            return await self.ref.ask(GetKasminaStatistics(), KasminaStatistics)


def make_packet(
    step: int, *, epoch: int = 0, seeds: tuple[SeedState, ...] = (), issued_at: float = 0.0
) -> SystemStatePacket:
    """Tolaria's state packet of ``step``, with the given per-seed reports."""
    return SystemStatePacket(
        run_id=RUN,
        epoch=epoch,
        epochs_total=100,
        global_step=step,
        epoch_progress=0.5,
        issued_at=issued_at,
        training_loss=1.0,
        training_accuracy=0.5,
        timings=TIMINGS,
        host_parameters=1000,
        seed_parameters=0,
        samples_per_s=100.0,
        hook_latency_ms=1.0,
        seed_states=seeds,
    )


def seed_report(
    seed_id: str = "s1", slot: str = "a", *, alpha: float = 0.0, grad: float | None = 0.5, violations: int = 0
) -> SeedState:
    """What Tolaria reports about an attached seed in a packet."""
    return SeedState(
        slot=slot,
        stage=SeedLifecycleStage.TRAINING,
        layer_depth=0,
        seed_id=seed_id,
        alpha=alpha,
        gradient_norm=grad,
        isolation_violations=violations,
    )


@contextlib.asynccontextmanager
async def running_kasmina(
    clock: ManualClock,
    sink: RecordingSink,
    *,
    settings: LifecycleSettings | None = None,
    source: SeedSource | None = None,
    cache_capacity: int = 32,
    has_controller: bool = True,
    lag: int = 2,
    slots: Mapping[str, SlotShape] = SLOTS,
    journal_dir: Path | None = None,
    resume_step: int | None = None,
    observer: Callable[[SystemStatePacket], Awaitable[None]] | None = None,
    initial_seeds: Mapping[str, str] | None = None,
    mailbox_capacity: int = 1024,
) -> AsyncIterator[Harness]:
    """A started ActorSystem running Kasmina alone, with a real io lane; stopped (and the lane closed) on exit."""
    async with Lane("io") as lane:
        handoff: Handoff[nn.Module] = Handoff(capacity=16)
        plans: asyncio.Queue[BoundaryPlan] = asyncio.Queue(maxsize=256)
        planner = PlannerArgs(
            run_id=RUN,
            run_seed=7,
            slots=slots,
            config=KasminaConfig(),
            lag_steps=lag,
            lifecycle=settings if settings is not None else fast_settings(),
            initial_seeds=initial_seeds,
        )
        spec = kasmina_spec(
            planner,
            outlet=plans.put,
            handoff=handoff,
            io_lane=lane,
            clock=clock,
            sink=sink,
            keys={KEY_ID: KEY},
            security=SecurityConfig(),
            has_controller=has_controller,
            source=source,
            cache_capacity=cache_capacity,
            journal_dir=journal_dir,
            resume=resume_step is not None,
            resume_step=resume_step,
            observer=observer,
            mailbox_capacity=mailbox_capacity,
        )
        system = ActorSystem(clock=clock, sink=sink)
        await system.start(spec)
        try:
            yield Harness(
                ref=system.ref("kasmina", KasminaActor),
                plans=plans,
                handoff=handoff,
                clock=clock,
                sink=sink,
                lag=lag,
            )
        finally:
            await system.stop()


def bare_planner(clock: Clock, sink: EventSink, *, initial_seeds: Mapping[str, str] | None = None) -> BoundaryPlanner:
    """A BoundaryPlanner on SLOTS with fast settings, lag 2 and run seed 7, for tests that drive it by hand."""
    return BoundaryPlanner(
        run_id=RUN,
        run_seed=7,
        slots=SLOTS,
        settings=fast_settings(),
        lag_steps=2,
        describe=CatalogueSource().describe,
        clock=clock,
        sink=sink,
        breaker=BreakerConfig(),
        initial_seeds=initial_seeds,
    )


def prepared_seed(seed_id: str = "s1", handle: str = "s1-1") -> PreparedSeed:
    """What a preparation of a two-matrix seed (64 parameters) reports."""
    return PreparedSeed(
        seed_id=seed_id,
        handle=handle,
        param_names=("down.weight", "up.weight"),
        parameter_count=64,
        memory_bytes=256,
        probe_grad_norm=1.0,
        probe_failures=(),
        cache_hit=False,
    )
