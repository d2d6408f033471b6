"""Tamiyo's controller state: policy, breaker, risk, conservative mode, outcomes, counters; exported and imported."""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Literal, TypeAlias, final

import msgspec

from actors.tamiyo.conservative import ConservativeMode, restored_mode
from actors.tamiyo.every_k import EveryKPolicy
from actors.tamiyo.gnn_state import GnnPolicyBase
from actors.tamiyo.heuristic import HeuristicPolicy
from actors.tamiyo.outcomes import OutcomeSettings, OutcomeTracker
from actors.tamiyo.policy import KnowsUnmade, Withdrawable
from actors.tamiyo.risk import RiskThresholds
from actors.tamiyo.state import TamiyoCounters, TamiyoState
from esper.runtime.breaker import CircuitBreaker
from esper.runtime.events import MutableSink
from esper.runtime.percentiles import nearest_rank
from schemas.tamiyo import TamiyoStatistics
from schemas.telemetry import TelemetryEvent

if TYPE_CHECKING:
    from actors.tamiyo.every_k import EveryKState
    from actors.tamiyo.gnn_state import GnnPolicyState
    from actors.tamiyo.heuristic import HeuristicState
    from actors.tamiyo.horizon import GrowthCutoff
    from actors.tamiyo.policy import BlueprintCandidate, Policy
    from actors.tamiyo.policy import Decision as PolicyDecision
    from esper.runtime.clock import Clock
    from esper.runtime.events import EventSink
    from esper.runtime.lanes import Lane
    from schemas.config import BreakerConfig
    from schemas.domain_enums import TelemetryLevel
    from schemas.state import SystemStatePacket

    # The configured policy's part of a TamiyoState: (heuristic, every_k, gnn), the one of its kind set.
    _PolicyPart: TypeAlias = tuple[HeuristicState | None, EveryKState | None, GnnPolicyState | None]

FallbackKind = Literal["heuristic", "no_op"]
LATENCY_WINDOW = 256


@final
class Controller:
    """What Tamiyo decides with and keeps across packets, as one TamiyoState (export, import) and its statistics.

    The actor (actor.py) and its decision steps (decide.py) share one. Event loop only."""

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
        signing_key: bytes,
        key_id: str,
        blueprints: tuple[BlueprintCandidate, ...],
        decision_budget_ms: float,
        deadline_fallback: FallbackKind,
        breaker: BreakerConfig | None,
        risk: RiskThresholds | None,
        conservative_exit_clean_epochs: int,
        outcomes: OutcomeSettings | None,
        freshness_s: float,
        growth_cutoff: GrowthCutoff | None = None,
    ) -> None:
        """Args: as TamiyoActor's, which checks them."""
        self.run_id = run_id
        self.policy = policy
        self.policy_name = policy_name
        self.fallback = fallback
        self.lane = lane
        self.clock = clock
        self.wall_clock = wall_clock
        self.sink = sink
        self.key = signing_key
        self.key_id = key_id
        self.blueprints = blueprints
        self.budget_s = decision_budget_ms / 1e3
        self.deadline_fallback = deadline_fallback
        self.breaker = CircuitBreaker.configured("tamiyo.inference", breaker, clock=clock, sink=sink)
        self.risk = risk if risk is not None else RiskThresholds()
        self.muffle = MutableSink(sink)
        self.exit_clean_epochs = conservative_exit_clean_epochs
        self.conservative = ConservativeMode(sink=self.muffle, exit_clean_epochs=conservative_exit_clean_epochs)
        self.conservative_dirty = False
        self.tracker = OutcomeTracker(outcomes if outcomes is not None else OutcomeSettings())
        self.freshness_s = freshness_s
        self.growth_cutoff = growth_cutoff
        self.counters = TamiyoCounters()
        self.latencies_ms: collections.deque[float] = collections.deque(maxlen=LATENCY_WINDOW)
        self.last_step: int | None = None
        self.training_over = False  # the last packet ended the last epoch
        self.inflight = False
        self._before_inference: _PolicyPart = (None, None, None)  # the policy's state when the inference began
        self.worker_restarting = False  # the policy's worker is being restarted: the fallback decides meanwhile

    def begin_inference(self) -> None:
        """The policy's decide is about to go to the lane: keep its state as it is now (event loop, lane free)."""
        self._before_inference = self._policy_part()
        self.inflight = True

    def export_state(self) -> TamiyoState:
        """The controller state; event loop, between decisions.

        Raises:
            RuntimeError: an inference is running on the lane (its policy state is the lane's until it ends).
        """
        if self.inflight:
            raise RuntimeError("tamiyo: cannot export state while an inference runs on the policy lane")
        return self._export(self._policy_part())

    def export_state_before_inference(self) -> TamiyoState:
        """The controller state, with the policy's part as it was when the inference still running on the lane
        began (the current state when none runs); event loop. For a stop that cannot wait that inference out: its
        result would be discarded, so this is the state of a run in which the fallback decided that packet without
        asking the policy, as with an open breaker."""
        return self._export(self._before_inference if self.inflight else self._policy_part())

    def _policy_part(self) -> _PolicyPart:
        policy = self.policy
        return (
            policy.export_state() if isinstance(policy, HeuristicPolicy) else None,
            policy.export_state() if isinstance(policy, EveryKPolicy) else None,
            policy.export_state() if isinstance(policy, GnnPolicyBase) else None,
        )

    def _export(self, policy_part: _PolicyPart) -> TamiyoState:
        heuristic, every_k, gnn = policy_part
        stats = self.conservative.statistics()
        return TamiyoState(
            policy=self.policy_name,
            policy_version=self.policy.version,
            fallback=self.fallback.export_state(),
            outcomes=self.tracker.export_state(),
            counters=self.counters,
            heuristic=heuristic,
            every_k=every_k,
            gnn=gnn,
            conservative_active=stats.active,
            conservative_dirty=self.conservative_dirty,
            conservative_clean_epochs=stats.clean_epochs,
            conservative_reason=stats.last_reason,
            breaker_state=self.breaker.state,
            breaker_failures=self.breaker.statistics().consecutive_failures,
            last_step=self.last_step,
            blueprints=tuple(dict.fromkeys(candidate.blueprint_id for candidate in self.blueprints)),
        )

    def import_state(self, state: TamiyoState) -> None:
        """Restore a state exported by a Tamiyo of the same policy kind.

        Raises:
            ValueError: the state is of another policy kind (or the GNN's weights / registries differ).
            RuntimeError: an inference is running on the lane.
        """
        if self.inflight:
            raise RuntimeError("tamiyo: cannot import state while an inference runs on the policy lane")
        if state.policy != self.policy_name:
            raise ValueError(f"tamiyo state is for policy {state.policy!r}, this actor runs {self.policy_name!r}")
        policy = self.policy
        if isinstance(policy, GnnPolicyBase) and state.gnn is not None:
            policy.import_state(state.gnn)
        elif isinstance(policy, HeuristicPolicy) and state.heuristic is not None:
            policy.import_state(state.heuristic)
        elif isinstance(policy, EveryKPolicy) and state.every_k is not None:
            policy.import_state(state.every_k)
        self.fallback.import_state(state.fallback)
        self.tracker.import_state(state.outcomes)
        self.counters = state.counters
        self.last_step = state.last_step
        self._restore_conservative(state)
        self.breaker.restore(state.breaker_state, state.breaker_failures, "restored from state")

    def _restore_conservative(self, state: TamiyoState) -> None:
        self.conservative = restored_mode(
            self.muffle,
            exit_clean_epochs=self.exit_clean_epochs,
            active=state.conservative_active,
            reason=state.conservative_reason,
            dirty=state.conservative_dirty,
            clean_epochs=state.conservative_clean_epochs,
        )
        self.conservative_dirty = state.conservative_active and state.conservative_dirty

    def statistics(self, request_id: str = "") -> TamiyoStatistics:
        """Counters, breaker, conservative mode and latency percentiles; never blocks."""
        c = self.counters
        window = sorted(self.latencies_ms)
        return TamiyoStatistics(
            request_id=request_id,
            policy=self.policy_name,
            policy_version=self.policy.version,
            decisions=c.decisions,
            inference_breaker=self.breaker.state,
            decisions_by_action=dict(c.by_action),
            fallbacks=c.fallbacks,
            timeouts=c.timeouts,
            inference_failures=c.inference_failures,
            inference_skipped=c.inference_skipped,
            vetoes=c.vetoes,
            downgrades=c.downgrades,
            breaker_opened=self.breaker.statistics().times_opened,
            conservative=self.conservative.active,
            latency_window=len(window),
            latency_p50_ms=nearest_rank(window, 0.50),
            latency_p95_ms=nearest_rank(window, 0.95),
            field_reports=c.field_reports,
            pending_outcomes=self.tracker.pending,
        )

    def withdraw(self, proposer: Policy | None, decision: PolicyDecision) -> None:
        """``decision``, which ``proposer`` just returned, was not carried out (vetoed, replaced, or discarded as
        late): a policy that keeps account of its decisions forgets it (actors.tamiyo.policy.Withdrawable)."""
        if proposer is not None and isinstance(proposer, Withdrawable):
            proposer.withdraw(decision)

    def count_germination(self, epoch: int) -> None:
        """The fallback's germination was carried out at the end of ``epoch`` in the policy's place: a policy that
        keeps account of its germinations counts it as its own, so its cooldown runs from there (event loop, the
        policy not on the lane)."""
        if isinstance(self.policy, Withdrawable):
            self.policy.count_germination(epoch)

    def fallback_counts_germination(self, epoch: int) -> None:
        """The policy's germination was carried out at the end of ``epoch``: the fallback counts it as its own, so its
        cooldown runs from there should it decide next (the policy's breaker opening, say), rather than letting it
        germinate again at once (event loop; the fallback never runs on the lane)."""
        self.fallback.count_germination(epoch)

    def fallback_uncounts_unmade(self) -> None:
        """A germination of the policy's that the fallback counted and that the policy has since found not made
        (every-K's, which Kasmina refused or withdrew): the fallback's cooldown goes back, as the policy's own schedule
        does (event loop, the policy's decision not on the lane)."""
        if isinstance(self.policy, KnowsUnmade) and self.policy.take_unmade():
            self.fallback.uncount_germination()

    def count(self, **deltas: int) -> None:
        c = self.counters
        self.counters = msgspec.structs.replace(c, **{k: getattr(c, k) + v for k, v in deltas.items()})

    def emit(
        self,
        name: str,
        level: TelemetryLevel,
        description: str,
        packet: SystemStatePacket,
        **attributes: str | int | float | bool,
    ) -> None:
        self.sink.emit(
            TelemetryEvent(
                name=name,
                level=level,
                description=description,
                attributes={"step": packet.global_step, "epoch": packet.epoch, **attributes},
            )
        )
