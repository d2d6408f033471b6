"""The Tamiyo actor: one signed decision per state packet.

Each is made under a deadline, a breaker, the risk engine and conservative mode, with a field report for every decision
once its window closes.

Per SystemStatePacket of step s, in packet order (schemas/boundary.py):

1. a packet whose step does not move forward is a rollback: the controller goes back to the state it journaled at the
   trainer's restore point, every open field-report window is closed as ABORTED, and the decisions from there on get
   report ids of their own (their command ids repeat the undone ones', see outcomes.py);
2. the packet becomes an Observation (actors/tamiyo/observe.py); with no seed candidate and no live seed, inference
   is skipped (NO_OP: ``no_free_slot`` or ``no_candidate`` at an epoch end, else ``not_epoch_end``, as a policy says);
3. otherwise, if the inference breaker allows, the configured policy decides on the ``policy`` lane while this
   handler waits on the monotonic clock for ``decision_budget_ms``. A result in time is the proposal (a breaker
   success). An overrun (a breaker failure; 3 in a row open it) or a policy error makes the fallback decide instead
   (the heuristic on the event loop, or NO_OP, per ``deadline_fallback``), as does an open breaker; the Decision's
   ``policy`` then reads ``"heuristic (fallback)"`` and a ``fallback_applied`` event says why, and a germination of
   the fallback's that is carried out counts as the policy's own (its cooldown runs from there; the policy is told
   once a late job of its has ended), as the policy's counts as the fallback's, should the fallback decide next
   (taken back if every-K's packets then show its graft was not made, unless the fallback has decided since);
4. the risk engine judges the proposal (veto, downgrade, conservative-mode triggers); the final decision becomes an
   AdaptationCommand (None for NO_OP) with ``command_id = uuid5(NAMESPACE_URL, f"esper:{run_id}:{s}")`` (deterministic,
   so a resumed run issues the same ids; still unique per run and step), issued at the wall clock, signed with the
   run's key, and exactly one schemas.boundary.Decision(decided_on_step=s) goes to the outlet;
5. epoch-end bookkeeping runs (conservative mode's hysteresis, with the packet's emergency level and the breaker
   state), and field reports of closed windows are appended to the WAL. A late inference job is not waited out here:
   the lane never abandons started work, so it keeps the lane until it returns (its result is discarded), and the
   next packet's decision gives it until its own deadline to end; one still running then is that decision's overrun
   too (``policy_busy``: the fallback decides, the breaker counts it), so a policy slower than an epoch never holds
   the trainer's plans (at most one inference is in flight). While it runs, an epoch end's state is not journaled
   (the policy's state is the lane's until it ends: a resume from there starts from the journal's previous entry;
   one that has returned by then is let go and the state journaled); a rewind and a state query wait it out, a stop
   up to its shutdown deadline (then it hands over the state with the policy's part from before that job began).

An epoch end's Decision (a packet with a validation loss) goes to the outlet last, after its reports are in the WAL
and the state after it is in the state journal: Kasmina journals a boundary only once it has its Decision, and a
resume continues only from a checkpoint whose boundary Kasmina journaled, so a kill at any point leaves the state of
any checkpoint a resume uses in the journal (sent first, a kill between the send and the journal resumed the
controller an epoch behind the lifecycle's commands). If that WAL or journal write fails, the Decision is sent all
the same (``tamiyo_state_not_journaled``, ``journal_error``) before the actor crashes: a resume from that checkpoint
starts from the journal's previous entry, where an unsent Decision lost the trainer its plan and the checkpoint.
Other packets' Decisions go out before the WAL's fsync.

Every hook runs on the event loop; the only blocking work (the policy's decide) runs on the lane. A failure while
handling a packet (a packet of another run, a WAL write error) crashes the actor; the spec's state cell carries the
controller state into the next incarnation.

The controller state (what a TamiyoState holds) lives in controller.py, the steps of one decision in decide.py, and
the WAL, the state journal and the rewind in journaling.py; this module runs them per packet.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING, assert_never, final

import msgspec
import structlog

from actors.tamiyo.controller import Controller, FallbackKind
from actors.tamiyo.decide import Choice, Decider
from actors.tamiyo.decision_log import record_decision
from actors.tamiyo.gnn_state import GnnPolicyBase, PolicyWorker
from actors.tamiyo.journaling import Journaling
from actors.tamiyo.late_job import LateJob
from actors.tamiyo.observe import build_observation, has_candidate, no_candidate_reason
from actors.tamiyo.policy import NO_OP
from actors.tamiyo.warm_up import warm_up
from esper.runtime.actor import Actor
from schemas.domain_enums import PolicyAction, TelemetryLevel
from schemas.state import SystemStatePacket
from schemas.tamiyo import GetTamiyoState, GetTamiyoStatistics, TamiyoStatistics
from schemas.telemetry import TelemetryEvent

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from actors.tamiyo.field_reports import FieldReportWal
    from actors.tamiyo.heuristic import HeuristicPolicy
    from actors.tamiyo.horizon import GrowthCutoff
    from actors.tamiyo.outcomes import OutcomeSettings
    from actors.tamiyo.policy import BlueprintCandidate, Policy
    from actors.tamiyo.risk import RiskThresholds, RiskVerdict
    from actors.tamiyo.state import TamiyoState
    from actors.tamiyo.state_journal import TamiyoStateJournal
    from esper.runtime.clock import Clock
    from esper.runtime.events import EventSink
    from esper.runtime.lanes import Lane
    from schemas.boundary import Decision as WireDecision
    from schemas.config import BreakerConfig
    from schemas.enums import BreakerState
    from schemas.reports import FieldReport

_log = structlog.get_logger("actors.tamiyo")

TamiyoMessage = SystemStatePacket | GetTamiyoStatistics | GetTamiyoState
"""Tamiyo's inbox: Tolaria's state packets, the statistics query, and the state query (answered with TamiyoState)."""

TAMIYO_INBOX: tuple[type[TamiyoMessage], ...] = (SystemStatePacket, GetTamiyoStatistics, GetTamiyoState)

COMMAND_NAMESPACE = uuid.NAMESPACE_URL


def command_id_for(run_id: str, step: int) -> str:
    """The command id (and nonce) of the decision on step ``step`` of ``run_id``: a UUID5, reproducible on resume."""
    return str(uuid.uuid5(COMMAND_NAMESPACE, f"esper:{run_id}:{step}"))


@final
class TamiyoActor(Actor[TamiyoMessage]):
    """The strategic controller of one run; see the module docstring for the per-packet pipeline."""

    def __init__(
        self,
        *,
        run_id: str,
        policy: Policy,
        policy_name: str,
        fallback: HeuristicPolicy,
        lane: Lane,
        clock: Clock,
        wall_clock: Clock,
        sink: EventSink,
        outlet: Callable[[WireDecision], Awaitable[None]],
        signing_key: bytes,
        key_id: str,
        blueprints: tuple[BlueprintCandidate, ...],
        decision_budget_ms: float = 45.0,
        deadline_fallback: FallbackKind = "heuristic",
        breaker: BreakerConfig | None = None,
        risk: RiskThresholds | None = None,
        conservative_exit_clean_epochs: int = 2,
        outcomes: OutcomeSettings | None = None,
        wal: FieldReportWal | None = None,
        state_journal: TamiyoStateJournal | None = None,
        freshness_s: float = 60.0,
        growth_cutoff: GrowthCutoff | None = None,
        state: TamiyoState | None = None,
        on_stop_state: Callable[[TamiyoState], None] | None = None,
        capacity: int = 1024,
    ) -> None:
        """Args:
        run_id: packets of any other run crash the actor.
        policy / policy_name: the configured policy (its decide runs on ``lane``) and its name in Decisions.
        fallback: the heuristic that decides on the event loop when the policy overran, failed or is refused.
        lane: the policy lane (its own thread; its own CUDA stream on CUDA).
        clock: monotonic time for deadlines, the breaker and latencies; wall_clock: commands' issued_at.
        sink: telemetry (risk events, fallbacks, breaker transitions, conservative mode); must not block.
        outlet: receives every Decision, in packet order.
        signing_key / key_id: the run's HMAC key for command signatures.
        blueprints: the candidate blueprints, as Karn describes them.
        decision_budget_ms: the per-decision deadline (TamiyoConfig.decision_budget_ms).
        deadline_fallback: what decides when the policy cannot (TamiyoConfig.deadline_fallback).
        breaker: the inference breaker's settings (TamiyoConfig.inference_breaker).
        risk: the risk engine's thresholds.
        outcomes: field-report window and reward lambdas; wal: where reports go (None: kept only in counters).
        state_journal: receives the exported state after every epoch-end packet (exact resume after a crash).
        freshness_s: the freshness window written into each command's security block.
        growth_cutoff: the growth horizon every germination is held to (the risk engine vetoes one past it,
            ``too_late``, whichever policy proposed it); None: none.
        state: a TamiyoState to start from (a resumed run or a restart).
        on_stop_state: receives the state when the incarnation stops (the spec's cell, for restarts).
        capacity: mailbox capacity.

        Raises:
            ValueError: decision_budget_ms <= 0, or an empty signing key or key id.
        """
        super().__init__(inbox=TAMIYO_INBOX, capacity=capacity)
        if not decision_budget_ms > 0:
            raise ValueError(f"decision_budget_ms must be > 0, got {decision_budget_ms}")
        if not signing_key or not key_id:
            raise ValueError("signing_key and key_id must not be empty")
        self._c = Controller(
            run_id=run_id,
            policy=policy,
            policy_name=policy_name,
            fallback=fallback,
            lane=lane,
            clock=clock,
            wall_clock=wall_clock,
            sink=sink,
            signing_key=signing_key,
            key_id=key_id,
            blueprints=blueprints,
            decision_budget_ms=decision_budget_ms,
            deadline_fallback=deadline_fallback,
            breaker=breaker,
            risk=risk,
            conservative_exit_clean_epochs=conservative_exit_clean_epochs,
            outcomes=outcomes,
            freshness_s=freshness_s,
            growth_cutoff=growth_cutoff,
        )
        self._decider = Decider(self._c)
        self._outlet = outlet
        self._wal = wal
        self._state_journal = state_journal
        # The inference job of an earlier decision, past its deadline and still on the lane (see the module docstring).
        self._late = LateJob(self._c)
        self._journaling = Journaling(self._c, self._late, wal, state_journal)
        # The epoch whose end (its first packet with a validation loss) was last seen: the skipped inference's NO_OP
        # names why only there, as the policies do, and is not_epoch_end elsewhere (the summary counts one per epoch).
        self._epoch_opened: int | None = None
        self._on_stop_state = on_stop_state
        if state is not None:
            self.import_state(state)

    # ------------------------------------------------------------------ hooks

    async def on_start(self) -> None:
        if isinstance(self._c.policy, GnnPolicyBase):
            if isinstance(self._c.policy, PolicyWorker):
                # Its torch import took 6-10 s with nothing on the console: the run looked hung before its first epoch.
                self._c.sink.emit(
                    TelemetryEvent(
                        name="tamiyo_gnn_worker_starting",
                        level=TelemetryLevel.INFO,
                        description="starting the GNN policy worker (it imports torch: a few seconds)",
                    )
                )
            # A worker builds its network (seconds) and any GNN builds its fused weights on its first inference
            # (tens of ms); doing both here keeps them out of the first decision's deadline.
            error = await warm_up(self._c.policy, self._c.lane, self._stopping)
            if error is not None and self.stopping:
                _log.info("tamiyo_gnn_worker_start_stopped", actor=self.name, detail=str(error))
            elif error is not None:
                # Not fatal: every decision then fails into the fallback and the breaker, which telemetry shows.
                _log.error("tamiyo_gnn_worker_failed", error=str(error))
        # What a rewind to before the first journaled epoch end goes back to (a restart of the trainer from step 0).
        self._journaling.start_state = self.export_state()
        if self._wal is not None:
            scan = await self._wal.open()
            if scan.corrupt or scan.torn:
                _log.warning(
                    "field_reports_damaged",
                    file=str(self._wal.path),
                    corrupt_records_skipped=scan.corrupt,
                    torn_tail_bytes_cut=scan.size_bytes - scan.good_end if scan.torn else 0,
                    kept=len(scan.reports),
                )

    async def handle(self, msg: TamiyoMessage) -> TamiyoStatistics | TamiyoState | None:
        match msg:
            case SystemStatePacket():
                await self._on_packet(msg)
            case GetTamiyoStatistics():
                return self.statistics(msg.request_id)
            case GetTamiyoState():
                await self._late.wait_out()
                return self.export_state()
            case _:
                assert_never(msg)
        return None

    def on_abandon(self) -> None:
        """The task is cancelled under a run nobody stopped: close the WAL and stop the GNN worker process (killed
        outright while it is still starting: close would wait for its start-up)."""
        self._late.cancel()
        if self._wal is not None:
            self._wal.abandon()
        if isinstance(self._c.policy, PolicyWorker):
            self._c.policy.abort_start()
            self._c.policy.close()

    async def on_stop(self) -> None:
        """A requested stop after the last epoch ends the run: open windows are reported ABORTED. A stop before it
        (Ctrl-C: the run may be resumed) or a crash keeps them in the state, so a resume judges them.

        A late job is waited out; a cancel (the stop's shutdown deadline) ends that wait, and the state handed over
        is then the current one with the policy's part from before that job began (its result is discarded anyway).
        The state is handed over and the WAL and a worker closed whatever happens first."""
        try:
            await self._late.wait_out()
            if self.stopping and self._c.training_over:
                await self._journaling.append(self._c.tracker.abort_all("end_of_run"))
            elif self.stopping and self._c.tracker.pending:
                _log.info("tamiyo_outcomes_kept", pending=self._c.tracker.pending, detail="reported when resumed")
        finally:
            if self._late.running:
                _log.warning(
                    "tamiyo_stopped_before_late_inference",
                    actor=self.name,
                    detail="the policy's state is kept as it was before that inference began",
                )
                self._late.cancel()
            try:
                if self._on_stop_state is not None:
                    self._on_stop_state(self._c.export_state_before_inference())
            finally:
                try:
                    if self._wal is not None:
                        await self._wal.close()
                finally:
                    if isinstance(self._c.policy, PolicyWorker):
                        # Off the lane (it may be closing too); the policy's lock waits out a decision in flight.
                        await asyncio.to_thread(self._c.policy.close)

    def breaker_state(self) -> BreakerState | None:
        return self._c.breaker.state

    # ------------------------------------------------------------------ state

    def export_state(self) -> TamiyoState:
        """The controller state; event loop, between decisions (see Controller.export_state)."""
        return self._c.export_state()

    def import_state(self, state: TamiyoState) -> None:
        """Restore a state exported by a Tamiyo of the same policy kind (see Controller.import_state)."""
        self._c.import_state(state)

    def statistics(self, request_id: str = "") -> TamiyoStatistics:
        """Counters, breaker, conservative mode and latency percentiles; never blocks."""
        return self._c.statistics(request_id)

    # ------------------------------------------------------------------ the decision pipeline

    async def _on_packet(self, packet: SystemStatePacket) -> None:
        if packet.run_id != self._c.run_id:
            raise ValueError(f"tamiyo of run {self._c.run_id!r} got a packet of run {packet.run_id!r}")
        started_s = self._c.clock.now()
        reports: list[FieldReport] = []
        if self._c.tracker.is_rollback(packet):
            # Tamiyo is not told the trainer's restore point, only that it lies before this packet's step; the state
            # it went back to may be older (that epoch end not journaled: a late policy job; a mid-epoch restore).
            state_step = await self._journaling.rewind(packet)
            state = f" (controller state of step {state_step})" if state_step is not None else ""
            reports.extend(self._c.tracker.rollback(f"rollback before step {packet.global_step}{state}"))
            self._epoch_opened = None  # the restored epoch's end comes again, as it does to the rewound policy
        observation = build_observation(packet, self._c.blueprints)
        opens_epoch = observation.opens_epoch_after(self._epoch_opened)
        if opens_epoch:
            self._epoch_opened = packet.epoch
        async with asyncio.TaskGroup() as tg:
            if not has_candidate(observation):
                self._c.count(inference_skipped=1)
                reason = no_candidate_reason(observation) if opens_epoch else "not_epoch_end"
                choice = Choice(
                    msgspec.structs.replace(NO_OP, reason=reason),
                    self._c.policy_name,
                    self._c.policy.version,
                )
            elif not await self._late.ended_by(started_s + self._c.budget_s, tg):
                choice = self._decider.busy(observation, packet)
            elif not self._c.breaker.allow():
                choice = self._decider.fall_back(observation, "breaker_open", packet)
            else:
                # Not a task of the group: leaving it must not wait out a late job (the next decision waits for it,
                # up to its own deadline).
                job = asyncio.get_running_loop().create_task(self._decider.run_policy(observation))
                self._late.task = job
                choice = await self._decider.await_policy(job, observation, packet, started_s, tg)
                if job.done():
                    self._late.task = None
            verdict = self._decider.judge(choice, observation)
            # Without a late job the policy's state is the event loop's again: before it counts a new germination.
            if self._late.task is None:
                self._c.fallback_uncounts_unmade()
            if verdict.decision.action is PolicyAction.GERMINATE:
                if choice.proposer is self._c.policy:
                    self._c.fallback_counts_germination(packet.epoch)
                else:
                    self._late.count_germination(packet.epoch)
            command_id = command_id_for(self._c.run_id, packet.global_step)
            wire = self._decider.wire(packet, choice, verdict, command_id, started_s)
            # An epoch end's Decision leaves last, once the state after it is journaled (see the module docstring).
            journal = self._state_journal if packet.validation_loss is not None else None
            if journal is None:
                await self._outlet(wire)
            record_decision(self._c, self.name, packet, verdict, wire)
        self._decider.end_of_packet(packet)
        reports.extend(self._c.tracker.observe(packet, critical=_critical(verdict)))
        self._decider.open_window(packet, choice, verdict, command_id)
        if journal is None:
            await self._journaling.append(reports)
            return
        try:
            await self._journaling.journal(journal, packet, reports)
        except Exception as error:
            # Sent all the same, then the crash (the supervisor restarts Tamiyo with this state, which counts the
            # decision): unsent, Kasmina would never journal this boundary, the trainer would miss its plan and its
            # checkpoint could not be resumed from; sent, a resume from there starts from the journal's previous
            # entry (tamiyo_state_behind), as after policy_busy.
            _log.error(
                "tamiyo_state_not_journaled",
                step=packet.global_step,
                reason="journal_error",
                error=f"{type(error).__name__}: {error}",
            )
            await self._outlet(wire)
            raise
        await self._outlet(wire)


def _critical(verdict: RiskVerdict) -> bool:
    return any(event.level is TelemetryLevel.CRITICAL for event in verdict.events)
