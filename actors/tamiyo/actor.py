"""The Tamiyo actor: one signed decision per state packet, under a deadline, a breaker, the risk engine and
conservative mode, with a field report for every decision once its window closes.

Per SystemStatePacket of step s, in packet order (schemas/boundary.py):

1. a packet whose step does not move forward is a rollback: every open field-report window is closed as ABORTED;
2. the packet becomes an Observation (actors/tamiyo/observe.py); with no seed candidate and no live seed, inference
   is skipped (NO_OP);
3. otherwise, if the inference breaker allows, the configured policy decides on the ``policy`` lane while this
   handler waits on the monotonic clock for ``decision_budget_ms``. A result in time is the proposal (a breaker
   success). An overrun (a breaker failure; 3 in a row open it) or a policy error makes the fallback decide instead
   (the heuristic on the event loop, or NO_OP, per ``deadline_fallback``), as does an open breaker; the Decision's
   ``policy`` then reads ``"heuristic (fallback)"`` and a ``fallback_applied`` event says why;
4. the risk engine judges the proposal (veto, downgrade, conservative-mode triggers); the final decision becomes an
   AdaptationCommand (None for NO_OP) with ``command_id = uuid5(NAMESPACE_URL, f"esper:{run_id}:{s}")`` (deterministic,
   so a resumed run issues the same ids; still unique per run and step), issued at the wall clock, signed with the
   run's key, and exactly one schemas.boundary.Decision(decided_on_step=s) goes to the outlet;
5. only then: a late inference job is waited out (the lane never abandons started work, and the next packet's
   decision must not overlap it; its result is discarded), epoch-end bookkeeping runs (conservative mode's
   hysteresis, with the packet's emergency level and the breaker state), and field reports of closed windows are
   appended to the WAL.

Every hook runs on the event loop; the only blocking work (the policy's decide) runs on the lane. A failure while
handling a packet (a packet of another run, a WAL write error) crashes the actor; the spec's state cell carries the
controller state into the next incarnation.
"""

from __future__ import annotations

import asyncio
import collections
import uuid
from typing import TYPE_CHECKING, Literal, assert_never, final

import anyio
import msgspec
import structlog

from actors.tamiyo.conservative import ConservativeMode, restored_mode
from actors.tamiyo.gnn_state import GnnPolicyBase, PolicyRestarting, PolicyWorker
from actors.tamiyo.heuristic import EveryKPolicy, HeuristicPolicy
from actors.tamiyo.observe import build_observation, candidate, has_candidate, implicated_seed
from actors.tamiyo.outcomes import OutcomeSettings, OutcomeTracker, OutcomeWindow
from actors.tamiyo.policy import NO_OP, build_command
from actors.tamiyo.risk import RiskContext, RiskEffect, RiskThresholds, RiskVerdict, assess
from actors.tamiyo.state import TamiyoCounters, TamiyoState
from actors.tamiyo.state_journal import state_at
from esper.runtime.actor import Actor
from esper.runtime.breaker import CircuitBreaker
from esper.runtime.events import MutableSink
from esper.runtime.percentiles import nearest_rank
from esper.runtime.signing import sign_command
from schemas.boundary import FALLBACK_SUFFIX
from schemas.boundary import Decision as WireDecision
from schemas.domain_enums import TelemetryLevel
from schemas.enums import BreakerState, EmergencyLevel
from schemas.state import SystemStatePacket
from schemas.tamiyo import GetTamiyoState, GetTamiyoStatistics, TamiyoStatistics
from schemas.telemetry import TelemetryEvent

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from actors.tamiyo.field_reports import FieldReportWal
    from actors.tamiyo.policy import BlueprintCandidate, Observation, Policy
    from actors.tamiyo.policy import Decision as PolicyDecision
    from actors.tamiyo.state_journal import TamiyoStateJournal
    from esper.runtime.clock import Clock
    from esper.runtime.events import EventSink
    from esper.runtime.lanes import Lane
    from schemas.config import BreakerConfig
    from schemas.reports import FieldReport

_log = structlog.get_logger("actors.tamiyo")

TamiyoMessage = SystemStatePacket | GetTamiyoStatistics | GetTamiyoState
"""Tamiyo's inbox: Tolaria's state packets, the statistics query, and the state query (answered with TamiyoState)."""

TAMIYO_INBOX: tuple[type[TamiyoMessage], ...] = (SystemStatePacket, GetTamiyoStatistics, GetTamiyoState)

FallbackKind = Literal["heuristic", "no_op"]
COMMAND_NAMESPACE = uuid.NAMESPACE_URL
LATENCY_WINDOW = 256


def command_id_for(run_id: str, step: int) -> str:
    """The command id (and nonce) of the decision on step ``step`` of ``run_id``: a UUID5, reproducible on resume."""
    return str(uuid.uuid5(COMMAND_NAMESPACE, f"esper:{run_id}:{step}"))


# REFERENCE.md: the GNN's input coverage raises degraded_inputs as a WARNING below 0.3 and as CRITICAL below 0.1.
DEGRADED_INPUTS_BELOW = 0.3
CRITICAL_INPUTS_BELOW = 0.1


@final
class _Choice:
    __slots__ = ("decision", "label", "missed", "version")

    def __init__(self, decision: PolicyDecision, label: str, version: str, *, missed: bool = False) -> None:
        self.decision = decision
        self.label = label
        self.version = version
        self.missed = missed


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
        self._run_id = run_id
        self._policy = policy
        self._policy_name = policy_name
        self._fallback = fallback
        self._lane = lane
        self._clock = clock
        self._wall_clock = wall_clock
        self._sink = sink
        self._outlet = outlet
        self._key = signing_key
        self._key_id = key_id
        self._blueprints = blueprints
        self._budget_s = decision_budget_ms / 1e3
        self._deadline_fallback = deadline_fallback
        self._breaker = CircuitBreaker.configured("tamiyo.inference", breaker, clock=clock, sink=sink)
        self._risk = risk if risk is not None else RiskThresholds()
        self._muffle = MutableSink(sink)
        self._exit_clean_epochs = conservative_exit_clean_epochs
        self._conservative = ConservativeMode(sink=self._muffle, exit_clean_epochs=conservative_exit_clean_epochs)
        self._conservative_dirty = False
        self._tracker = OutcomeTracker(outcomes if outcomes is not None else OutcomeSettings())
        self._wal = wal
        self._state_journal = state_journal
        self._start_state: TamiyoState | None = None
        self._freshness_s = freshness_s
        self._on_stop_state = on_stop_state
        self._counters = TamiyoCounters()
        self._latencies_ms: collections.deque[float] = collections.deque(maxlen=LATENCY_WINDOW)
        self._last_step: int | None = None
        self._training_over = False  # the last packet ended the last epoch
        self._inflight = False
        if state is not None:
            self.import_state(state)

    # ------------------------------------------------------------------ hooks

    async def on_start(self) -> None:
        if isinstance(self._policy, GnnPolicyBase):
            # A worker builds its network (seconds) and any GNN builds its fused weights on its first inference
            # (tens of ms); doing both here keeps them out of the first decision's deadline.
            try:
                await self._lane.run(self._policy.warm_up)
            except (RuntimeError, ArithmeticError) as err:
                # Not fatal: every decision then fails into the fallback and the breaker, which telemetry shows.
                _log.error("tamiyo_gnn_worker_failed", error=str(err))
        # What a rewind to before the first journaled epoch end goes back to (a restart of the trainer from step 0).
        self._start_state = self.export_state()
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
                return self.export_state()
            case _:
                assert_never(msg)
        return None

    def on_abandon(self) -> None:
        """The task is cancelled under a run nobody stopped: close the WAL and stop the GNN worker process."""
        if self._wal is not None:
            self._wal.abandon()
        if isinstance(self._policy, PolicyWorker):
            self._policy.close()

    async def on_stop(self) -> None:
        """A requested stop after the last epoch ends the run: open windows are reported ABORTED. A stop before it
        (Ctrl-C: the run may be resumed) or a crash keeps them in the state, so a resume judges them."""
        try:
            if self.stopping and self._training_over:
                await self._append(self._tracker.abort_all("end_of_run"))
            elif self.stopping and self._tracker.pending:
                _log.info("tamiyo_outcomes_kept", pending=self._tracker.pending, detail="reported when resumed")
        finally:
            if self._on_stop_state is not None:
                self._on_stop_state(self.export_state())
            try:
                if self._wal is not None:
                    await self._wal.close()
            finally:
                if isinstance(self._policy, PolicyWorker):
                    # Off the lane (it may be closing too); the policy's lock waits out a decision in flight.
                    await asyncio.to_thread(self._policy.close)

    def breaker_state(self) -> BreakerState | None:
        return self._breaker.state

    # ------------------------------------------------------------------ state

    def export_state(self) -> TamiyoState:
        """The controller state; event loop, between decisions.

        Raises:
            RuntimeError: an inference is running on the lane (its policy state is the lane's until it ends).
        """
        if self._inflight:
            raise RuntimeError("tamiyo: cannot export state while an inference runs on the policy lane")
        policy = self._policy
        stats = self._conservative.statistics()
        return TamiyoState(
            policy=self._policy_name,
            policy_version=policy.version,
            fallback=self._fallback.export_state(),
            outcomes=self._tracker.export_state(),
            counters=self._counters,
            heuristic=policy.export_state() if isinstance(policy, HeuristicPolicy) else None,
            every_k=policy.export_state() if isinstance(policy, EveryKPolicy) else None,
            gnn=policy.export_state() if isinstance(policy, GnnPolicyBase) else None,
            conservative_active=stats.active,
            conservative_dirty=self._conservative_dirty,
            conservative_clean_epochs=stats.clean_epochs,
            conservative_reason=stats.last_reason,
            breaker_state=self._breaker.state,
            breaker_failures=self._breaker.statistics().consecutive_failures,
            last_step=self._last_step,
            blueprints=tuple(dict.fromkeys(candidate.blueprint_id for candidate in self._blueprints)),
        )

    def import_state(self, state: TamiyoState) -> None:
        """Restore a state exported by a Tamiyo of the same policy kind.

        Raises:
            ValueError: the state is of another policy kind (or the GNN's weights / registries differ).
            RuntimeError: an inference is running on the lane.
        """
        if self._inflight:
            raise RuntimeError("tamiyo: cannot import state while an inference runs on the policy lane")
        if state.policy != self._policy_name:
            raise ValueError(f"tamiyo state is for policy {state.policy!r}, this actor runs {self._policy_name!r}")
        policy = self._policy
        if isinstance(policy, GnnPolicyBase) and state.gnn is not None:
            policy.import_state(state.gnn)
        elif isinstance(policy, HeuristicPolicy) and state.heuristic is not None:
            policy.import_state(state.heuristic)
        elif isinstance(policy, EveryKPolicy) and state.every_k is not None:
            policy.import_state(state.every_k)
        self._fallback.import_state(state.fallback)
        self._tracker.import_state(state.outcomes)
        self._counters = state.counters
        self._last_step = state.last_step
        self._restore_conservative(state)
        if state.breaker_state is not BreakerState.CLOSED:
            self._breaker.force_open("restored from state")
        else:
            self._breaker.reset()
            for _ in range(state.breaker_failures):
                self._breaker.record_failure("restored from state")

    def _restore_conservative(self, state: TamiyoState) -> None:
        self._conservative = restored_mode(
            self._muffle,
            exit_clean_epochs=self._exit_clean_epochs,
            active=state.conservative_active,
            reason=state.conservative_reason,
            dirty=state.conservative_dirty,
            clean_epochs=state.conservative_clean_epochs,
        )
        self._conservative_dirty = state.conservative_active and state.conservative_dirty

    def statistics(self, request_id: str = "") -> TamiyoStatistics:
        """Counters, breaker, conservative mode and latency percentiles; never blocks."""
        c = self._counters
        window = sorted(self._latencies_ms)
        return TamiyoStatistics(
            request_id=request_id,
            policy=self._policy_name,
            policy_version=self._policy.version,
            decisions=c.decisions,
            inference_breaker=self._breaker.state,
            decisions_by_action=dict(c.by_action),
            fallbacks=c.fallbacks,
            timeouts=c.timeouts,
            inference_failures=c.inference_failures,
            inference_skipped=c.inference_skipped,
            vetoes=c.vetoes,
            downgrades=c.downgrades,
            breaker_opened=self._breaker.statistics().times_opened,
            conservative=self._conservative.active,
            latency_window=len(window),
            latency_p50_ms=nearest_rank(window, 0.50),
            latency_p95_ms=nearest_rank(window, 0.95),
            field_reports=c.field_reports,
            pending_outcomes=self._tracker.pending,
        )

    # ------------------------------------------------------------------ the decision pipeline

    async def _on_packet(self, packet: SystemStatePacket) -> None:
        if packet.run_id != self._run_id:
            raise ValueError(f"tamiyo of run {self._run_id!r} got a packet of run {packet.run_id!r}")
        started_s = self._clock.now()
        reports: list[FieldReport] = []
        if self._tracker.is_rollback(packet):
            reports.extend(self._tracker.abort_all(f"rollback to step {packet.global_step}"))
            await self._rewind(packet)
        observation = build_observation(packet, self._blueprints)
        async with asyncio.TaskGroup() as tg:
            job: asyncio.Task[PolicyDecision | Exception] | None = None
            if not has_candidate(observation):
                self._count(inference_skipped=1)
                choice = _Choice(
                    msgspec.structs.replace(NO_OP, reason="no_candidate"), self._policy_name, self._policy.version
                )
            elif not self._breaker.allow():
                choice = self._fall_back(observation, "breaker_open", packet)
            else:
                job = tg.create_task(self._run_policy(observation))
                choice = await self._await_policy(job, observation, packet, started_s, tg)
            verdict = self._judge(choice, observation)
            command_id = command_id_for(self._run_id, packet.global_step)
            wire = self._wire(packet, choice, verdict, command_id, started_s)
            await self._outlet(wire)
            self._record(packet, verdict, wire)
            # Leaving the group waits out a late job: started lane work is never abandoned, and it must end before
            # the next decision starts (at most one inference in flight). Its result is discarded.
        self._inflight = False
        self._end_of_packet(packet)
        reports.extend(self._tracker.observe(packet, critical=_critical(verdict)))
        self._open_window(packet, choice, verdict, command_id)
        await self._append(reports)
        if self._state_journal is not None and packet.validation_loss is not None:
            # Tolaria checkpoints right after an epoch-end packet: this is the state a resume from there needs.
            await self._state_journal.append(packet.global_step, self.export_state())

    async def _rewind(self, packet: SystemStatePacket) -> None:
        """The trainer went back (a rollback or a restart of it) and the packet of ``step`` is the first after: the
        controller goes back to the newest state it journaled before that step (the restored epoch end's), so it
        decides the retrained epochs as a resume from there would (it decided the rerun's epoch end as already seen
        (not_epoch_end), and its windows and plateau counted the undone attempt). The field reports and counters of
        the undone decisions stay: they happened. Nothing to go back to without a journal (no run directory)."""
        journal = self._state_journal
        if journal is None:
            return
        entry = await anyio.to_thread.run_sync(state_at, journal.path, packet.global_step - 1)
        start = self._start_state
        if entry is not None and entry.state.policy == self._policy_name:
            state, at = entry.state, entry.step
        elif start is not None and (start.last_step is None or start.last_step < packet.global_step):
            state, at = start, start.last_step or 0  # back before the first epoch end journaled: as it started
        else:
            return
        current = self.export_state()
        self.import_state(msgspec.structs.replace(state, outcomes=current.outcomes, counters=current.counters))
        self._emit(
            "tamiyo_rewound",
            TelemetryLevel.INFO,
            f"controller state back to step {at}: the trainer went back there",
            packet,
            state_step=at,
        )

    async def _run_policy(self, observation: Observation) -> PolicyDecision | Exception:
        self._inflight = True
        try:
            return await self._lane.run(self._policy.decide, observation)
        except (ValueError, RuntimeError, KeyError, IndexError, ArithmeticError) as err:  # FloatingPointError too
            # A policy that raises is a failed inference: counted against the breaker, the fallback decides.
            return err
        finally:
            self._inflight = False

    async def _await_policy(
        self,
        job: asyncio.Task[PolicyDecision | Exception],
        observation: Observation,
        packet: SystemStatePacket,
        started_s: float,
        tg: asyncio.TaskGroup,
    ) -> _Choice:
        timer = tg.create_task(self._clock.sleep(started_s + self._budget_s - self._clock.now()))
        await asyncio.wait((job, timer), return_when=asyncio.FIRST_COMPLETED)
        timer.cancel()
        if not job.done():
            self._breaker.record_deadline_overrun()
            self._count(timeouts=1)
            choice = self._fall_back(observation, "timeout_inference", packet)
            choice.missed = True
            return choice
        result = job.result()
        if isinstance(result, PolicyRestarting):
            return self._fall_back(observation, "policy_restarting", packet)
        if isinstance(result, Exception):
            self._breaker.record_failure(type(result).__name__)
            self._count(inference_failures=1)
            self._emit("inference_failed", TelemetryLevel.ERROR, f"policy {self._policy_name} raised: {result}", packet)
            return self._fall_back(observation, "policy_error", packet)
        self._breaker.record_success()
        coverage = result.feature_coverage
        if coverage is not None and coverage < DEGRADED_INPUTS_BELOW:
            level = TelemetryLevel.CRITICAL if coverage < CRITICAL_INPUTS_BELOW else TelemetryLevel.WARNING
            self._emit(
                "degraded_inputs",
                level,
                f"the policy decided on {coverage:.0%} of the inputs the state should carry",
                packet,
                feature_coverage=round(coverage, 4),
            )
        return _Choice(result, self._policy_name, self._policy.version)

    def _fall_back(self, observation: Observation, why: str, packet: SystemStatePacket) -> _Choice:
        self._count(fallbacks=1)
        if self._deadline_fallback == "heuristic":
            decision, label = self._fallback.decide(observation), f"heuristic{FALLBACK_SUFFIX}"
        else:
            decision, label = msgspec.structs.replace(NO_OP, reason=f"fallback_{why}"), f"no_op{FALLBACK_SUFFIX}"
        self._emit(
            "fallback_applied",
            TelemetryLevel.WARNING,
            f"{label} decided step {packet.global_step}: {why}",
            packet,
            reason=why,
            breaker=self._breaker.state.value,
        )
        return _Choice(decision, label, self._fallback.version)

    def _judge(self, choice: _Choice, observation: Observation) -> RiskVerdict:
        proposed = choice.decision
        bp = candidate(observation, proposed.blueprint_id)
        # The packet's own emergency level counts at once: conservative mode from it starts only after this decision
        # (_end_of_packet), and the epoch end that raised L2 germinated a seed the trainer then refused to attach.
        elevated = observation.packet.emergency_level >= EmergencyLevel.L2_ELEVATED
        context = msgspec.structs.replace(
            RiskContext.from_packet(observation.packet, conservative=self._conservative.active or elevated),
            inference_deadline_missed=choice.missed,
            blueprint_risk=bp.risk if bp is not None else None,
            blueprint_quarantine_only=bp.quarantine_only if bp is not None else False,
            implicated_seed_id=implicated_seed(observation),
        )
        verdict = assess(proposed, context, self._risk)
        epoch = observation.epoch
        for event in verdict.events:
            self._emit(
                event.name, event.level, event.detail, observation.packet, rule=event.rule, effect=event.effect.value
            )
        for reason in verdict.conservative_reasons:
            self._conservative.trigger(reason, epoch=epoch)
            self._conservative_dirty = True
        if verdict.effect is RiskEffect.VETO:
            self._count(vetoes=1)
        elif verdict.effect is RiskEffect.DOWNGRADE:
            self._count(downgrades=1)
        return verdict

    def _wire(
        self, packet: SystemStatePacket, choice: _Choice, verdict: RiskVerdict, command_id: str, started_s: float
    ) -> WireDecision:
        unsigned = build_command(
            verdict.decision,
            command_id=command_id,
            issued_at=self._wall_clock.now(),
            training_run_id=self._run_id,
            decision_step=packet.global_step,
            policy_version=choice.version,
            reason=verdict.risk_reason,
            priority=verdict.priority,
        )
        command = None
        if unsigned is not None:
            fresh = msgspec.structs.replace(unsigned.security, freshness_window_s=self._freshness_s)
            command = sign_command(msgspec.structs.replace(unsigned, security=fresh), self._key, self._key_id)
        decision_ms = max(0.0, (self._clock.now() - started_s) * 1e3)
        self._latencies_ms.append(decision_ms)
        return WireDecision(
            run_id=self._run_id,
            decided_on_step=packet.global_step,
            command=command,
            policy=choice.label,
            decision_ms=decision_ms,
            risk_reason=verdict.risk_reason,
            reason=choice.decision.reason,
            feature_coverage=choice.decision.feature_coverage,
            packet_issued_at=packet.issued_at,
        )

    def _record(self, packet: SystemStatePacket, verdict: RiskVerdict, wire: WireDecision) -> None:
        action = verdict.decision.action.value
        # One line per decision: the log tail shows what the controller does, and a resumed run's summary counts the
        # interrupted session's decisions from it.
        _log.info(
            "tamiyo_decision",
            actor=self.name,
            step=packet.global_step,
            action=action,
            command=wire.command is not None,
            policy=wire.policy,
            reason=wire.reason,
            risk_reason=wire.risk_reason,
            decision_ms=round(wire.decision_ms, 3),
        )
        by_action = dict(self._counters.by_action)
        by_action[action] = by_action.get(action, 0) + 1
        self._counters = msgspec.structs.replace(
            self._counters, decisions=self._counters.decisions + 1, by_action=by_action
        )
        self._last_step = packet.global_step
        self._training_over = packet.epoch_progress >= 1.0 and packet.epoch + 1 >= packet.epochs_total

    def _end_of_packet(self, packet: SystemStatePacket) -> None:
        if packet.validation_loss is None:
            return
        self._conservative.end_epoch(
            epoch=packet.epoch,
            emergency_level=packet.emergency_level,
            inference_breaker=self._breaker.state,
            metadata_breaker=BreakerState.CLOSED,
        )
        self._conservative_dirty = False
        self._sink.emit(self._conservative.gauge())

    def _open_window(self, packet: SystemStatePacket, choice: _Choice, verdict: RiskVerdict, command_id: str) -> None:
        final = verdict.decision
        follow_up = ("conservative_mode",) if verdict.enter_conservative else ()
        self._tracker.open(
            OutcomeWindow(
                command_id=command_id,
                training_run_id=self._run_id,
                decided_on_step=packet.global_step,
                start_epoch=packet.epoch,
                issued_at=self._wall_clock.now(),
                policy_version=choice.version,
                action=final.action,
                seed_id=final.target_seed_id,
                blueprint_id=final.blueprint_id,
                log_prob=choice.decision.log_prob if final == choice.decision else None,
                value_estimate=choice.decision.value_estimate,
                notes=f"{choice.label}: proposed {choice.decision.action.value} ({choice.decision.reason}); "
                f"final {final.action.value}; risk: {verdict.risk_reason}",
                follow_up=follow_up,
                start_seed_parameters=packet.seed_parameters,
                host_parameters=packet.host_parameters,
            )
        )

    async def _append(self, reports: list[FieldReport]) -> None:
        if not reports:
            return
        if self._wal is not None:
            await self._wal.append_many(reports)
        self._count(field_reports=len(reports))

    # ------------------------------------------------------------------ helpers

    def _count(self, **deltas: int) -> None:
        c = self._counters
        self._counters = msgspec.structs.replace(c, **{k: getattr(c, k) + v for k, v in deltas.items()})

    def _emit(
        self,
        name: str,
        level: TelemetryLevel,
        description: str,
        packet: SystemStatePacket,
        **attributes: str | int | float | bool,
    ) -> None:
        self._sink.emit(
            TelemetryEvent(
                name=name,
                level=level,
                description=description,
                attributes={"step": packet.global_step, "epoch": packet.epoch, **attributes},
            )
        )


def _critical(verdict: RiskVerdict) -> bool:
    return any(event.level is TelemetryLevel.CRITICAL for event in verdict.events)
