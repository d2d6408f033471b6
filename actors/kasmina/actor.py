"""The Kasmina actor: pairs each state packet with its decision, verifies the command, plans the boundary, sends it.

Per packet of step s (REFERENCE.md section 1, schemas/boundary.py): wait until both the packet and Tamiyo's
decision of s are here (either order; with no controller every packet is a NO_OP), verify the command (signature,
replay, freshness), run the planner's boundary for s, prepare any new seed module on the io lane, and send exactly
one BoundaryPlan(decided_on_step=s, effect_step=s + lag). Plans leave in packet order, and a plan never leaves before
the module it attaches is in the handoff store: while a preparation runs this actor waits for it (Tolaria, if it
reaches the effect step first, waits there; a counted stall by design). The pairing and the observer's view are in
pairing.py, the journal's replay in journal_replay.py, the wait for a seed's artifact in seed_preparing.py.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, assert_never, final

import anyio

from actors.kasmina.journal import (
    BoundaryJournal,
    JournalBoundary,
    JournalReceipt,
    JournalValidation,
    planner_view,
)
from actors.kasmina.journal_replay import HeldReplay, JournalReplay
from actors.kasmina.pairing import PENDING_FLOOR, BoundaryInputs
from actors.kasmina.seed_preparing import PREPARATION_ERRORS, WaitingPreparer
from esper.runtime.actor import Actor
from esper.runtime.events import MutableSink
from schemas.boundary import BoundaryApplied, BoundaryPlan, Decision, TrainingRestored
from schemas.domain_enums import CommandRejectReason, TelemetryLevel
from schemas.kasmina import (
    GetKasminaStatistics,
    GetSeedStates,
    KasminaStatistics,
    PrefetchSeed,
    SeedStates,
    SeedValidationReport,
)
from schemas.nissa import LifecycleRestored
from schemas.state import SystemStatePacket
from schemas.telemetry import MetricPoint, TelemetryEvent, TelemetryPacket

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from actors.kasmina.planner import BoundaryPlanner
    from actors.kasmina.preparation import PreparedSeed, Preparer
    from esper.runtime.clock import Clock
    from esper.runtime.events import EventSink
    from esper.runtime.signing import CommandVerifier
    from schemas.control import AdaptationCommand

KasminaMessage = (
    SystemStatePacket
    | Decision
    | BoundaryApplied
    | SeedValidationReport
    | TrainingRestored
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
    TrainingRestored,
    PrefetchSeed,
    GetSeedStates,
    GetKasminaStatistics,
)

_SEEN_PREFETCHES = 1024


@final
class KasminaActor(Actor[KasminaMessage]):
    """Seed slots' lifecycle, command verification and seed preparation for one run.

    Every hook runs on the event loop. A failure while handling a tell (a packet or decision of another run, more
    pending packets than the mailbox holds, a planner invariant) crashes the actor and the supervisor decides.
    Every planner input goes to the BoundaryJournal (kept by the spec across incarnations): a new incarnation replays
    it at start, and a TrainingRestored from Tolaria (a restart, rollback or resume) cuts it at the restored step,
    replays it and sends again the plans decided up to that step that take effect after it.
    """

    def __init__(
        self,
        *,
        run_id: str,
        planner: Callable[[EventSink], BoundaryPlanner],
        preparer: Preparer,
        verifier: CommandVerifier,
        outlet: Callable[[BoundaryPlan], Awaitable[None]],
        sink: EventSink,
        has_controller: bool = True,
        journal: BoundaryJournal | None = None,
        observer: Callable[[SystemStatePacket], Awaitable[None]] | None = None,
        capacity: int = 1024,
        pending: int = PENDING_FLOOR,
        clock: Clock | None = None,
        artifact_wait_s: float = 0.0,
        expected_restore: int | None = None,
    ) -> None:
        """Args:
        run_id: packets, decisions and receipts of any other run are refused (the actor crashes).
        planner: builds a fresh boundary planner that reports to the given sink.
        preparer: builds seed modules on the io lane and keeps the ready cache.
        verifier: checks each command's signature, nonce and freshness (and reports rejections at CRITICAL).
        outlet: sends a plan to Tolaria (ActorRef.tell or a test queue's put); awaited, in packet order.
        sink: telemetry events (never blocks).
        has_controller: False when no Tamiyo runs: every packet is planned as a NO_OP decision.
        journal: the planner's inputs so far (shared across incarnations); None: a fresh, memory-only one.
        observer: receives each packet, in step order, once every earlier packet has been planned, with the seed
            states replaced by the lifecycle's view (stage, gates, embargo) as of that moment: the controller decides
            on exactly what the lifecycle knew, whatever the thread timing. None: nobody observes.
        capacity: mailbox capacity.
        pending: the most packets, or decisions, kept waiting for their partner (pairing.pending_limit; a full one
            crashes the actor).
        clock / artifact_wait_s: a preparation whose module is NotYetAvailable (Tezzeret has not stored the
            artifact yet) is retried on this clock for up to this long before it fails; None or 0: it fails at once.
        expected_restore: the step Tolaria's coming TrainingRestored will name (a resume's checkpoint): the start's
            replay stops there and keeps the plans to send again for that restore, which then replays nothing.
        """
        super().__init__(inbox=KASMINA_INBOX, capacity=capacity)
        self._run_id = run_id
        self._make_planner = planner
        self._planner_sink = MutableSink(sink)
        self._planner = planner(self._planner_sink)
        self._journal = journal if journal is not None else BoundaryJournal()
        self._preparer = preparer
        self._verifier = verifier
        self._outlet = outlet
        self._sink = sink
        self._has_controller = has_controller
        self._inputs = BoundaryInputs(observer=observer, capacity=pending, event=self._event)
        self._seen_prefetch: deque[str] = deque(maxlen=_SEEN_PREFETCHES)
        self._plans_sent = 0
        self._preparations = 0
        self._preparation_failures = 0
        self._prefetches = 0
        self._replays = 0
        self._clock = clock
        self._preparing = WaitingPreparer(preparer, clock=clock, wait_s=artifact_wait_s, event=self._event)
        self._replay = JournalReplay(
            run_id=run_id, journal=self._journal, verifier=verifier, preparer=preparer, prepare=self._preparing.prepare
        )
        self._expected_restore = expected_restore
        self._held: HeldReplay | None = None

    async def on_start(self) -> None:
        journal = self._journal
        if not journal.loaded:
            await anyio.to_thread.run_sync(journal.load)
        if len(journal):
            # A new incarnation (or a resumed run) picks up where the journal ends; Tolaria's TrainingRestored, which
            # follows when it restarts too, then cuts it back to the step it continues from. Replaying here, before
            # Tolaria starts, is deliberate: it builds the seeds into the ready cache, so the plans Tolaria expects
            # again are ready before it waits for them at their effect steps. A resume knows that step: the replay
            # stops there and holds the plans, and the restore only sends them (one replay instead of two).
            cut = self._expected_restore
            await self._rebuild(cut, preview=cut is not None)

    async def handle(self, msg: KasminaMessage) -> SeedStates | KasminaStatistics | None:
        match msg:
            case SystemStatePacket():
                self._check_run(msg.run_id, "packet", msg.global_step)
                inputs = self._inputs
                if inputs.admit(msg.global_step, inputs.packets, "packet", self._planner.last_step):
                    inputs.packets[msg.global_step] = msg
                    await inputs.forward(self._planner)
                    await self._drain()
            case Decision():
                self._check_run(msg.run_id, "decision", msg.decided_on_step)
                if self._inputs.stale(msg):
                    return None
                inputs = self._inputs
                if inputs.admit(msg.decided_on_step, inputs.decisions, "decision", self._planner.last_step):
                    inputs.decisions[msg.decided_on_step] = msg
                    await self._drain()
            case BoundaryApplied():
                self._check_run(msg.run_id, "receipt", msg.decided_on_step)
                self._planner.record_receipt(msg)
                await self._journal_add(JournalReceipt(receipt=msg))
            case SeedValidationReport():
                self._check_run(msg.run_id, "validation report", msg.step)
                self._planner.record_validation(msg)
                await self._journal_add(JournalValidation(report=msg))
            case TrainingRestored():
                self._check_run(msg.run_id, "restore", msg.step)
                await self._restored(msg.step, frozenset(msg.unapplied))
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
        inputs = self._inputs
        while inputs.packets:
            step = min(inputs.packets)
            command = None
            if self._has_controller:
                decision = inputs.decisions.pop(step, None)
                if decision is None:
                    return
                command = decision.command
            packet = inputs.packets.pop(step)
            inputs.shown.pop(step, None)
            security = self._verify(command, step) if command is not None else None
            draft = self._planner.begin(packet, command, security)
            failed: dict[str, str] = {}
            for request in draft.preparations:
                # Awaited directly, not through until_stopping: a stop cannot abandon a job the lane has started
                # anyway, and the shutdown deadline still cancels this wait.
                try:
                    prepared = await self._preparing.prepare(request)
                except PREPARATION_ERRORS as err:
                    self._preparation_failures += 1
                    failed[request.seed_id] = f"{type(err).__name__}: {err}"
                    self._planner.preparation_failed(request.seed_id, failed[request.seed_id])
                    continue
                self._preparations += 1
                self._planner.prepared(prepared)
                if not prepared.cache_hit:
                    self._fetch_metric(prepared, packet.global_step)
            plan = self._planner.finish(draft)
            mac = None
            if command is not None and self._journal.sealed:
                mac = self._verifier.verdict_mac(self._run_id, packet.global_step, command, security)
            entry = JournalBoundary(
                packet=planner_view(packet), command=command, security=security, failed=failed, verdict_mac=mac
            )
            await self._journal_add(entry)
            await self._outlet(plan)
            self._plans_sent += 1
            await inputs.forward(self._planner)

    def _verify(self, command: AdaptationCommand, step: int) -> CommandRejectReason | None:
        """The verifier's verdict on ``command`` (signature, replay, freshness), once it is known to be signed for this
        run and for the packet of ``step`` it is paired with: a command signed for another step (or run) would act on
        a state it was not decided on. A mismatch is refused before the verifier records its nonce."""
        if command.training_run_id != self._run_id or command.decision_step != step:
            self._sink.emit(
                TelemetryEvent(
                    name="command_rejected",
                    level=TelemetryLevel.CRITICAL,
                    description=(
                        f"command {command.command_id} ({command.kind.value}) rejected: decision_mismatch: signed for"
                        f" run {command.training_run_id!r} step {command.decision_step}, paired with the decision of"
                        f" run {self._run_id!r} step {step}"
                    ),
                    attributes={
                        "reason": CommandRejectReason.DECISION_MISMATCH.value,
                        "command_id": command.command_id,
                        "kind": command.kind.value,
                        "actor": "kasmina",
                    },
                )
            )
            return CommandRejectReason.DECISION_MISMATCH
        return self._verifier.verify(command)

    async def _journal_add(self, entry: JournalBoundary | JournalReceipt | JournalValidation) -> None:
        self._journal.append(entry)
        if self._journal.path is not None:
            await anyio.to_thread.run_sync(self._journal.write_pending)

    async def _restored(self, step: int, unapplied: frozenset[int] = frozenset()) -> None:
        """Tolaria continues from ``step``: the planner goes back there and the plans in flight then are sent again,
        those of ``unapplied`` (decided_on_steps taking effect at ``step`` that the restored state has not applied)
        among them whatever receipt the journal holds. Observers are told which of the transitions they heard are
        undone (LifecycleRestored), in order with them."""
        held, self._held = self._held, None
        # A start's replay that took a receipt at the step for one of ``unapplied`` (lag 0, killed after an epoch
        # end's checkpoint) does not serve: the replay again without that receipt sends its plan again.
        if (
            held is not None
            and (held.step, held.journal_length) == (step, len(self._journal))
            and not (held.applied_at_cut & unapplied)
        ):
            # Nothing was journaled since the start's replay up to this very step: it stands; only the file is cut.
            await anyio.to_thread.run_sync(self._journal.cut, step, unapplied)
            self._sink.emit(LifecycleRestored(run_id=self._run_id, step=step, lag_steps=self._planner.lag_steps))
            self._event(
                "kasmina_restore_ready",
                TelemetryLevel.INFO,
                f"the start's replay up to step {step} serves the restore; {len(held.plans)} plans sent again",
            )
            for plan in held.plans:
                await self._outlet(plan)
            return
        if held is not None:
            for plan in held.plans:
                for op in plan.ops:
                    if op.handle is not None:
                        self._preparer.discard(op.handle)
        await self._rebuild(step, restored=True, unapplied=unapplied)

    async def _rebuild(
        self, cut: int | None, *, preview: bool = False, restored: bool = False, unapplied: frozenset[int] = frozenset()
    ) -> None:
        """Replace the planner by one rebuilt from the journal up to boundary ``cut`` (None: all of it), reporting
        nothing; with a cut, send again the replayed plans that take effect after it, and those of ``unapplied``
        (Tolaria expects them again: their receipts at the cut are dropped with the entries after it).
        ``preview``: leave the file whole and hold those plans for the restore at ``cut`` (see ``_restored``);
        ``restored``: Tolaria restored that step, which LifecycleRestored tells the observers before the plans go."""
        journal = self._journal
        if cut is not None and not preview:
            await anyio.to_thread.run_sync(journal.cut, cut, unapplied)
        sink = MutableSink(self._planner_sink)
        sink.muted = True
        planner = self._make_planner(sink)
        replayed, in_flight, applied_at_cut = await self._replay.replay(
            planner, cut, preview=preview, unapplied=unapplied
        )
        sink.muted = False
        self._planner = planner
        self._inputs.keep_unplanned(cut, planner.last_step)
        if cut is not None:
            # The controller decides the later steps again, under the same reproducible command ids: the verifier
            # (which outlives restarts) refused them as replays, and the commands were lost.
            self._verifier.forget_decided_after(cut)
        self._replays += 1
        self._event(
            "kasmina_rebuilt",
            TelemetryLevel.INFO,
            f"lifecycle rebuilt from {replayed} journal entries up to step {planner.last_step}; "
            f"{len(in_flight)} plans {'held for the restore' if preview else 'sent again'}",
        )
        if preview and cut is not None:
            self._held = HeldReplay(
                step=cut, journal_length=len(journal), plans=tuple(in_flight), applied_at_cut=applied_at_cut
            )
            return
        if restored and cut is not None:
            self._sink.emit(LifecycleRestored(run_id=self._run_id, step=cut, lag_steps=planner.lag_steps))
        for plan in in_flight:
            await self._outlet(plan)

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
        except PREPARATION_ERRORS as err:
            self._event("prefetch_failed", TelemetryLevel.ERROR, f"prefetch {msg.request_id}: {err}")
            return
        self._prefetches += 1

    def _statistics(self, request_id: str) -> KasminaStatistics:
        cache = self._preparer.cache.statistics()
        planner = self._planner
        return KasminaStatistics(
            boundaries=planner.boundaries,
            plans_sent=self._plans_sent,
            pending_packets=len(self._inputs.packets),
            pending_decisions=len(self._inputs.decisions),
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

    def _fetch_metric(self, prepared: PreparedSeed, step: int) -> None:
        # Nissa's kernel-fetch SLO (REFERENCE.md: 10 ms) is fed from this metric.
        point = MetricPoint(name="kasmina.kernel.fetch_latency_ms", value=prepared.fetch_ms, unit="ms")
        self._sink.emit(
            TelemetryPacket(
                packet_id=f"kasmina-fetch-{prepared.handle}",
                source="kasmina",
                issued_at=self._clock.now() if self._clock is not None else 0.0,
                run_id=self._run_id,
                global_step=step,
                metrics=(point,),
            )
        )

    def _event(self, name: str, level: TelemetryLevel, description: str) -> None:
        self._sink.emit(
            TelemetryEvent(name=name, level=level, description=description, attributes={"actor": "kasmina"})
        )
