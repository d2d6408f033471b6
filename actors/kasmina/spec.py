"""The Kasmina child spec the composition root calls: every dependency is an argument, nothing is looked up."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias, final

import msgspec

from actors.kasmina.actor import KasminaActor
from actors.kasmina.gates import GateSettings
from actors.kasmina.journal import JOURNAL_FILENAME, BoundaryJournal
from actors.kasmina.lifecycle_settings import EvidenceCadence, LifecycleSettings, StageDwell
from actors.kasmina.pairing import mailbox_floor, pending_limit
from actors.kasmina.planner import BoundaryPlanner
from actors.kasmina.preparation import DEFAULT_CACHE_CAPACITY, CatalogueSource, ModuleCache, Preparer
from esper.runtime.child_spec import ChildSpec, RestartType
from esper.runtime.ref import ActorRef
from esper.runtime.signing import CommandVerifier
from schemas.boundary import BoundaryPlan

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

    from torch import nn

    from actors.kasmina.preparation import SeedSource
    from esper.nn.blueprints import SlotShape
    from esper.runtime.clock import Clock
    from esper.runtime.events import EventSink
    from esper.runtime.handoff import Handoff
    from esper.runtime.lanes import Lane
    from schemas.config import KasminaConfig
    from schemas.config_platform import SecurityConfig
    from schemas.state import SystemStatePacket

PlanOutlet: TypeAlias = Callable[[BoundaryPlan], Awaitable[None]]
"""Where plans go: Tolaria's ``ref.tell`` (any ref whose inbox includes BoundaryPlan) or a test's queue ``put``."""


def lifecycle_settings(config: KasminaConfig, cadence: EvidenceCadence | None = None) -> LifecycleSettings:
    """The lifecycle timers and gate thresholds of a KasminaConfig, for evidence arriving at ``cadence``.

    Evidence windows count state packets (one sample per packet, ``state_every_steps`` apart), not optimizer steps;
    the TRAINING and PROBATIONARY dwells are ``stage_min_dwell_steps`` optimizer steps. A pending gate times out
    ``gate_patience_steps`` after its evidence could have arrived at that cadence (None: a packet every step, no lag,
    epochs of unknown length).
    """
    dwell = config.stage_min_dwell_steps
    memory = config.seed_memory_budget_mb
    gates = GateSettings(
        max_seed_grad_norm=config.g2_max_gradient_norm,
        stability_window_steps=config.g2_window_steps,
        max_loss_variance=config.g2_max_loss_variance,
        min_benefit=config.g4_min_improvement,
        max_active_seeds=config.max_active_seeds,
        seed_memory_budget_bytes=GateSettings().seed_memory_budget_bytes if memory is None else int(memory * 2**20),
    )
    return LifecycleSettings(
        dwell=StageDwell(training=dwell, probationary=dwell, shadowing=min(StageDwell().shadowing, dwell)),
        gates=gates,
        embargo_epochs=config.embargo_epochs,
        gate_patience_steps=config.gate_patience_steps,
        cadence=cadence if cadence is not None else EvidenceCadence(),
    )


@final
@dataclass(frozen=True, slots=True)
class PlannerArgs:
    """What a run's boundary planner is built from, besides its seed source and clock. Kasmina's spec (every
    incarnation's planner) and a resume's check of the journal's replay (esper.resume_seeds) are given the same one,
    so the replay that judges a resume is the one Kasmina will make.

    Attributes:
        run_id: the run; plans carry it and messages of other runs are refused.
        run_seed: TolariaConfig.seed; with a seed id it fixes each seed module's initial weights.
        slots: slot name (its qualified path in the host) -> SlotShape, in depth order (Tolaria's host).
        config: lifecycle and budgets (see lifecycle_settings), the isolation breaker, the artifact wait.
        lag_steps: TolariaConfig.command_lag_steps; a plan decided on step s takes effect at s + lag_steps.
        cadence: when the trainer's evidence arrives (packets, epoch ends), which the gates' patience waits for; its
            lag is replaced by ``lag_steps``. None: a packet every step, epochs of unknown length.
        lifecycle: overrides the settings ``config`` and ``cadence`` give (tests).
        approved_blueprints: blueprint ids whose ``approval_required`` is satisfied by a recorded approval.
        initial_seeds: slot -> blueprint id of each seed the trainer attaches before step 0
            (``TolariaConfig.initial_seed_blueprints``): those slots are FOSSILIZED from the start.
    """

    run_id: str
    run_seed: int
    slots: Mapping[str, SlotShape]
    config: KasminaConfig
    lag_steps: int
    cadence: EvidenceCadence | None = None
    lifecycle: LifecycleSettings | None = None
    approved_blueprints: frozenset[str] = frozenset()
    initial_seeds: Mapping[str, str] | None = None

    def settings(self) -> LifecycleSettings:
        """The lifecycle timers and gate thresholds the planner runs with."""
        if self.lifecycle is not None:
            return self.lifecycle
        cadence = self.cadence if self.cadence is not None else EvidenceCadence()
        return lifecycle_settings(self.config, msgspec.structs.replace(cadence, lag_steps=self.lag_steps))

    def factory(self, source: SeedSource, clock: Clock) -> Callable[[EventSink], BoundaryPlanner]:
        """What builds a fresh boundary planner for a sink: every Kasmina incarnation's, and a resume's check of the
        journal's replay (actors.kasmina.held_seeds) builds the same one."""
        settings = self.settings()
        slots = dict(self.slots)
        initial = dict(self.initial_seeds or {})

        def make_planner(planner_sink: EventSink) -> BoundaryPlanner:
            return BoundaryPlanner(
                run_id=self.run_id,
                run_seed=self.run_seed,
                slots=slots,
                settings=settings,
                lag_steps=self.lag_steps,
                describe=source.describe,
                clock=clock,
                sink=planner_sink,
                breaker=self.config.breaker,
                approved_blueprints=self.approved_blueprints,
                initial_seeds=initial,
            )

        return make_planner


def kasmina_spec(
    planner: PlannerArgs,
    *,
    outlet: ActorRef[BoundaryPlan] | PlanOutlet,
    handoff: Handoff[nn.Module],
    io_lane: Lane,
    clock: Clock,
    sink: EventSink,
    keys: Mapping[str, bytes],
    security: SecurityConfig,
    has_controller: bool = True,
    source: SeedSource | None = None,
    cache_capacity: int = DEFAULT_CACHE_CAPACITY,
    journal_dir: Path | None = None,
    resume: bool = False,
    resume_step: int | None = None,
    observer: Callable[[SystemStatePacket], Awaitable[None]] | None = None,
    name: str = "kasmina",
    mailbox_capacity: int = 1024,
    restart: RestartType = "permanent",
    shutdown_deadline_s: float = 5.0,
) -> ChildSpec:
    """The child spec of the Kasmina actor.

    The ready-module cache and the command verifier's nonce ledger are built here, once, so they outlive restarts
    (a restarted Kasmina must still refuse a replayed command); each incarnation gets a fresh planner.

    Args:
        planner: what the planner is built from (the run, its slots, the lifecycle's settings, the command lag).
        outlet: Tolaria's ref or any coroutine function taking a BoundaryPlan.
        handoff: where prepared modules wait for Tolaria's train lane.
        io_lane: the lane that builds, copies and probes seed modules.
        clock: the verifier's freshness and the isolation breakers read it.
        sink: telemetry (command results, seed states, gate results, events).
        keys: key id -> HMAC secret for command signatures.
        security: freshness, skew, nonce TTL and ledger size of the verifier.
        has_controller: False when no Tamiyo runs: every packet is a NO_OP decision.
        source: where modules come from (default: the built-in blueprint catalogue).
        cache_capacity: ready modules kept (REFERENCE.md section 1: 32).
        journal_dir: where the boundary journal file lives (``<run dir>/checkpoints``), so ``--resume`` can rebuild
            the lifecycle; None keeps the journal in memory (it still survives restarts within the run).
        resume: read the journal file left by the run being resumed; False starts a fresh one.
        resume_step: the step of the checkpoint a resume continues from (Tolaria's restore will name it): the first
            incarnation replays the journal up to it at start and holds the plans to send again until that restore,
            instead of replaying it all again then.
        observer: receives each packet with Kasmina's view of the seeds (Tamiyo's ``ref.tell``); see KasminaActor.

    Raises:
        ValueError: no slots, a negative lag, a cache capacity < 1, or a security setting out of range.
    """
    if not planner.slots:
        raise ValueError("slots must name at least one seed slot")
    if planner.lag_steps < 0:
        raise ValueError(f"lag_steps must be >= 0, got {planner.lag_steps}")
    seed_source = source if source is not None else CatalogueSource()
    preparer = Preparer(seed_source, handoff, io_lane, cache=ModuleCache(cache_capacity))
    verifier = CommandVerifier(
        keys,
        clock,
        sink=sink,
        name=name,
        freshness_s=security.command_freshness_s,
        future_skew_s=security.future_skew_s,
        nonce_ttl_s=security.nonce_ttl_s,
        ledger_size=security.nonce_ledger_size,
    )
    send: PlanOutlet = outlet.tell if isinstance(outlet, ActorRef) else outlet
    journal = BoundaryJournal(None if journal_dir is None else journal_dir / JOURNAL_FILENAME, fresh=not resume)

    make_planner = planner.factory(seed_source, clock)

    first_restore: list[int | None] = [resume_step]

    def build() -> KasminaActor:
        expected_restore = first_restore.pop() if first_restore else None  # a restart's restore step is unknown
        return KasminaActor(
            run_id=planner.run_id,
            planner=make_planner,
            preparer=preparer,
            verifier=verifier,
            outlet=send,
            sink=sink,
            has_controller=has_controller,
            journal=journal,
            observer=observer,
            # Never below what the lag keeps in flight: a mailbox's size may change memory, never the lifecycle.
            capacity=max(mailbox_capacity, mailbox_floor(planner.lag_steps)),
            pending=pending_limit(planner.lag_steps),
            clock=clock,
            artifact_wait_s=planner.config.artifact_wait_ms / 1e3,
            expected_restore=expected_restore,
        )

    return ChildSpec(name, build, restart=restart, shutdown_deadline_s=shutdown_deadline_s)
