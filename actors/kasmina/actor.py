"""The Kasmina actor: pairs each state packet with its decision, verifies the command, plans the boundary, sends it.

Per packet of step s (REFERENCE.md section 1, schemas/boundary.py): wait until both the packet and Tamiyo's
decision of s are here (either order; with no controller every packet is a NO_OP), verify the command (signature,
replay, freshness), run the planner's boundary for s, prepare any new seed module on the io lane, and send exactly
one BoundaryPlan(decided_on_step=s, effect_step=s + lag). Plans leave in packet order, and a plan never leaves before
the module it attaches is in the handoff store: while a preparation runs this actor waits for it (Tolaria, if it
reaches the effect step first, waits there; a counted stall by design).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, assert_never, final

from esper.runtime.actor import Actor
from esper.runtime.errors import EsperError
from schemas.boundary import BoundaryApplied, BoundaryPlan, Decision
from schemas.domain_enums import TelemetryLevel
from schemas.kasmina import (
    GetKasminaStatistics,
    GetSeedStates,
    KasminaStatistics,
    PrefetchSeed,
    SeedStates,
    SeedValidationReport,
)
from schemas.state import SystemStatePacket
from schemas.telemetry import TelemetryEvent

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from actors.kasmina.planner import BoundaryPlanner
    from actors.kasmina.preparation import Preparer
    from esper.runtime.events import EventSink
    from esper.runtime.signing import CommandVerifier

KasminaMessage = (
    SystemStatePacket
    | Decision
    | BoundaryApplied
    | SeedValidationReport
    | PrefetchSeed
    | GetSeedStates
    | GetKasminaStatistics
)
"""Kasmina's inbox: Tolaria's packets, receipts and validation, Tamiyo's decisions and prefetches, and queries."""

KASMINA_INBOX: tuple[type[KasminaMessage], ...] = (
    SystemStatePacket,
    Decision,
    BoundaryApplied,
    SeedValidationReport,
    PrefetchSeed,
    GetSeedStates,
    GetKasminaStatistics,
)

# Preparation failures a source may raise for one seed; anything else is a bug and crashes the actor.
_PREPARATION_ERRORS = (KeyError, ValueError, RuntimeError, OverflowError, EsperError)
_SEEN_PREFETCHES = 1024


@final
class KasminaActor(Actor[KasminaMessage]):
    """Seed slots' lifecycle, command verification and seed preparation for one run.

    Every hook runs on the event loop. A failure while handling a tell (a packet or decision of another run, more
    pending packets than the mailbox holds, a planner invariant) crashes the actor and the supervisor decides; an
    incarnation starts with empty slots (the planner is rebuilt by the spec's factory), so a restart mid-run loses
    the seeds' lifecycle state: resume needs the graft log (not yet wired).
    """

    def __init__(
        self,
        *,
        run_id: str,
        planner: BoundaryPlanner,
        preparer: Preparer,
        verifier: CommandVerifier,
        outlet: Callable[[BoundaryPlan], Awaitable[None]],
        sink: EventSink,
        has_controller: bool = True,
        capacity: int = 1024,
    ) -> None:
        """Args:
        run_id: packets, decisions and receipts of any other run are refused (the actor crashes).
        planner: the boundary planner of this incarnation.
        preparer: builds seed modules on the io lane and keeps the ready cache.
        verifier: checks each command's signature, nonce and freshness (and reports rejections at CRITICAL).
        outlet: sends a plan to Tolaria (ActorRef.tell or a test queue's put); awaited, in packet order.
        sink: telemetry events (never blocks).
        has_controller: False when no Tamiyo runs: every packet is planned as a NO_OP decision.
        capacity: mailbox capacity; also the most packets or decisions kept waiting for their partner.
        """
        super().__init__(inbox=KASMINA_INBOX, capacity=capacity)
        self._run_id = run_id
        self._planner = planner
        self._preparer = preparer
        self._verifier = verifier
        self._outlet = outlet
        self._sink = sink
        self._has_controller = has_controller
        self._max_pending = capacity
        self._packets: dict[int, SystemStatePacket] = {}
        self._decisions: dict[int, Decision] = {}
        self._seen_prefetch: deque[str] = deque(maxlen=_SEEN_PREFETCHES)
        self._plans_sent = 0
        self._preparations = 0
        self._preparation_failures = 0
        self._prefetches = 0

    async def handle(self, msg: KasminaMessage) -> SeedStates | KasminaStatistics | None:
        match msg:
            case SystemStatePacket():
                self._check_run(msg.run_id, "packet", msg.global_step)
                if self._admit(msg.global_step, self._packets, "packet"):
                    self._packets[msg.global_step] = msg
                    await self._drain()
            case Decision():
                self._check_run(msg.run_id, "decision", msg.decided_on_step)
                if self._admit(msg.decided_on_step, self._decisions, "decision"):
                    self._decisions[msg.decided_on_step] = msg
                    await self._drain()
            case BoundaryApplied():
                self._check_run(msg.run_id, "receipt", msg.decided_on_step)
                self._planner.record_receipt(msg)
            case SeedValidationReport():
                self._check_run(msg.run_id, "validation report", msg.step)
                self._planner.record_validation(msg)
            case PrefetchSeed():
                await self._prefetch(msg)
            case GetSeedStates():
                states = self._planner.seed_states()
                if msg.slots:
                    states = tuple(s for s in states if s.slot in msg.slots)
                return SeedStates(states=states, step=self._planner.last_step)
            case GetKasminaStatistics():
                return self._statistics(msg.request_id)
            case _:
                assert_never(msg)
        return None

    # ------------------------------------------------------------ boundaries

    async def _drain(self) -> None:
        """Plan every packet whose decision is here, lowest step first; stop at the first one still waiting."""
        while self._packets:
            step = min(self._packets)
            command = None
            if self._has_controller:
                decision = self._decisions.pop(step, None)
                if decision is None:
                    return
                command = decision.command
            packet = self._packets.pop(step)
            security = self._verifier.verify(command) if command is not None else None
            draft = self._planner.begin(packet, command, security)
            for request in draft.preparations:
                # Awaited directly, not through until_stopping: a stop cannot abandon a job the lane has started
                # anyway, and the shutdown deadline still cancels this wait.
                try:
                    prepared = await self._preparer.prepare(request)
                except _PREPARATION_ERRORS as err:
                    self._preparation_failures += 1
                    self._planner.preparation_failed(request.seed_id, f"{type(err).__name__}: {err}")
                    continue
                self._preparations += 1
                self._planner.prepared(prepared)
            await self._outlet(self._planner.finish(draft))
            self._plans_sent += 1

    def _admit(self, step: int, pending: dict[int, SystemStatePacket] | dict[int, Decision], what: str) -> bool:
        last = self._planner.last_step
        if (last is not None and step <= last) or step in pending:
            why = "a duplicate" if step in pending else f"not after the last boundary {last}"
            self._event("boundary_input_dropped", TelemetryLevel.ERROR, f"{what} of step {step} dropped: {why}")
            return False
        if len(pending) >= self._max_pending:
            raise OverflowError(f"kasmina: {len(pending)} {what}s wait for their partner; refusing step {step}")
        return True

    def _check_run(self, run_id: str, what: str, step: int) -> None:
        if run_id != self._run_id:
            raise ValueError(f"kasmina of run {self._run_id!r} got a {what} of run {run_id!r} (step {step})")

    # ------------------------------------------------------------ prefetch and statistics

    async def _prefetch(self, msg: PrefetchSeed) -> None:
        if msg.request_id in self._seen_prefetch:
            return
        self._seen_prefetch.append(msg.request_id)
        request = self._planner.prefetch_request(msg)
        if isinstance(request, str):
            self._event("prefetch_rejected", TelemetryLevel.WARNING, f"prefetch {msg.request_id}: {request}")
            return
        try:
            await self._preparer.prefetch(request)
        except _PREPARATION_ERRORS as err:
            self._event("prefetch_failed", TelemetryLevel.ERROR, f"prefetch {msg.request_id}: {err}")
            return
        self._prefetches += 1

    def _statistics(self, request_id: str) -> KasminaStatistics:
        cache = self._preparer.cache.statistics()
        planner = self._planner
        return KasminaStatistics(
            boundaries=planner.boundaries,
            plans_sent=self._plans_sent,
            pending_packets=len(self._packets),
            pending_decisions=len(self._decisions),
            accepted=planner.accepted,
            request_id=request_id,
            rejected=dict(planner.rejected),
            preparations=self._preparations,
            preparation_failures=self._preparation_failures,
            prefetches=self._prefetches,
            cache_hits=cache.hits,
            cache_misses=cache.misses,
            cache_evictions=cache.evictions,
            cache_size=cache.size,
            cache_capacity=cache.capacity,
            isolation_culls=planner.isolation_culls,
            illegal_transitions=planner.illegal_transitions,
        )

    def _event(self, name: str, level: TelemetryLevel, description: str) -> None:
        self._sink.emit(
            TelemetryEvent(name=name, level=level, description=description, attributes={"actor": "kasmina"})
        )
