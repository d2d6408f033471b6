"""Tamiyo's decision steps: the policy under deadline and breaker (or the fallback), risk, command, outcome window."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, final

import msgspec

from actors.tamiyo.gnn_state import PolicyRestarting, PolicyWorker
from actors.tamiyo.observe import candidate, implicated_seed
from actors.tamiyo.outcomes import OutcomeWindow
from actors.tamiyo.policy import NO_OP, build_command
from actors.tamiyo.risk import RiskContext, RiskEffect, RiskVerdict, assess
from esper.runtime.signing import sign_command
from schemas.boundary import FALLBACK_SUFFIX
from schemas.boundary import Decision as WireDecision
from schemas.control import germinated_seed_id
from schemas.domain_enums import PolicyAction, TelemetryLevel
from schemas.enums import BreakerState, EmergencyLevel

if TYPE_CHECKING:
    from actors.tamiyo.controller import Controller
    from actors.tamiyo.policy import Decision as PolicyDecision
    from actors.tamiyo.policy import Observation, Policy
    from schemas.state import SystemStatePacket

# REFERENCE.md: the GNN's input coverage raises degraded_inputs as a WARNING below 0.3 and as CRITICAL below 0.1.
DEGRADED_INPUTS_BELOW = 0.3
CRITICAL_INPUTS_BELOW = 0.1


@final
class Choice:
    """A proposal and who made it: the decision, its label in the Decision, the policy version, a missed deadline,
    why the fallback made it (empty: the policy did), and the policy object that decided it (None: no policy was
    asked), which is told when the risk engine turns its decision down."""

    __slots__ = ("decision", "fallback_reason", "label", "missed", "proposer", "version")

    def __init__(
        self,
        decision: PolicyDecision,
        label: str,
        version: str,
        *,
        missed: bool = False,
        fallback_reason: str = "",
        proposer: Policy | None = None,
    ) -> None:
        self.decision = decision
        self.label = label
        self.version = version
        self.missed = missed
        self.fallback_reason = fallback_reason
        self.proposer = proposer


@final
class Decider:
    """The steps of one decision, in the order the actor runs them (actor.py). ``_c``: the controller state."""

    def __init__(self, controller: Controller) -> None:
        self._c = controller

    async def run_policy(self, observation: Observation) -> PolicyDecision | Exception:
        self._c.begin_inference()
        policy = self._c.policy
        hangs = policy.hangs if isinstance(policy, PolicyWorker) else 0
        try:
            return await self._c.lane.run(policy.decide, observation)
        except (ValueError, RuntimeError, KeyError, IndexError, ArithmeticError) as err:  # FloatingPointError too
            # A policy that raises is a failed inference: counted against the breaker, the fallback decides.
            return err
        finally:
            self._c.inflight = False
            if isinstance(policy, PolicyWorker) and policy.hangs > hangs:
                # Found by a job long past its deadline, whose error nobody reads: said here, so the summary can name
                # the hang behind the overruns and the open breaker that made the fallback decide.
                self._c.emit(
                    "tamiyo_gnn_worker_hung",
                    TelemetryLevel.WARNING,
                    f"the GNN worker stopped answering and was killed; another is started ({policy.hangs} so far)",
                    observation.packet,
                    hangs=policy.hangs,
                )

    async def await_policy(
        self,
        job: asyncio.Task[PolicyDecision | Exception],
        observation: Observation,
        packet: SystemStatePacket,
        started_s: float,
        tg: asyncio.TaskGroup,
    ) -> Choice:
        timer = tg.create_task(self._c.clock.sleep(started_s + self._c.budget_s - self._c.clock.now()))
        await asyncio.wait((job, timer), return_when=asyncio.FIRST_COMPLETED)
        timer.cancel()
        if not job.done():
            self._c.breaker.record_deadline_overrun()
            self._c.count(timeouts=1)
            choice = self.fall_back(observation, "timeout_inference", packet)
            choice.missed = True
            return choice
        result = job.result()
        if isinstance(result, PolicyRestarting):
            # Not the policy's outcome: a half-open probe left in flight failed the breaker again after its 5 s
            # deadline, so the slot is given back and the next decision probes the (then perhaps ready) worker.
            self._c.breaker.release_probe()
            self._c.worker_restarting = True
            return self.fall_back(observation, "policy_restarting", packet)
        if isinstance(result, Exception):
            self._c.breaker.record_failure(type(result).__name__)
            self._c.count(inference_failures=1)
            self._c.emit(
                "inference_failed", TelemetryLevel.ERROR, f"policy {self._c.policy_name} raised: {result}", packet
            )
            return self.fall_back(observation, "policy_error", packet)
        self._c.breaker.record_success()
        if self._c.worker_restarting:
            # The fallback decided while the restarted worker started (seconds); say when the policy is back.
            self._c.worker_restarting = False
            self._c.emit(
                "tamiyo_gnn_worker_ready",
                TelemetryLevel.INFO,
                f"the restarted worker is ready: {self._c.policy_name} decides again from step {packet.global_step}",
                packet,
            )
        coverage = result.feature_coverage
        if coverage is not None and coverage < DEGRADED_INPUTS_BELOW:
            level = TelemetryLevel.CRITICAL if coverage < CRITICAL_INPUTS_BELOW else TelemetryLevel.WARNING
            self._c.emit(
                "degraded_inputs",
                level,
                f"the policy decided on {coverage:.0%} of the inputs the state should carry",
                packet,
                feature_coverage=round(coverage, 4),
            )
        return Choice(result, self._c.policy_name, self._c.policy.version, proposer=self._c.policy)

    def busy(self, observation: Observation, packet: SystemStatePacket) -> Choice:
        """The policy is still deciding an earlier packet past this decision's deadline: an overrun of this one too
        (the breaker counts it), decided by the fallback."""
        self._c.breaker.record_deadline_overrun()
        self._c.count(timeouts=1)
        choice = self.fall_back(observation, "policy_busy", packet)
        choice.missed = True
        return choice

    def fall_back(self, observation: Observation, why: str, packet: SystemStatePacket) -> Choice:
        self._c.count(fallbacks=1)
        proposer: Policy | None = None
        if self._c.deadline_fallback == "heuristic":
            decision, label = self._c.fallback.decide(observation), f"heuristic{FALLBACK_SUFFIX}"
            proposer = self._c.fallback
        else:
            decision, label = msgspec.structs.replace(NO_OP, reason=f"fallback_{why}"), f"no_op{FALLBACK_SUFFIX}"
        self._c.emit(
            "fallback_applied",
            TelemetryLevel.WARNING,
            f"{label} decided step {packet.global_step}: {why}",
            packet,
            reason=why,
            breaker=self._c.breaker.state.value,
        )
        return Choice(decision, label, self._c.fallback.version, fallback_reason=why, proposer=proposer)

    def judge(self, choice: Choice, observation: Observation) -> RiskVerdict:
        proposed = choice.decision
        bp = candidate(observation, proposed.blueprint_id)
        # The packet's own emergency level counts at once: conservative mode from it starts only after this decision
        # (_end_of_packet), and the epoch end that raised L2 germinated a seed the trainer then refused to attach.
        elevated = observation.packet.emergency_level >= EmergencyLevel.L2_ELEVATED
        cutoff = self._c.growth_cutoff if proposed.action is PolicyAction.GERMINATE else None
        context = msgspec.structs.replace(
            RiskContext.from_packet(observation.packet, conservative=self._c.conservative.active or elevated),
            inference_deadline_missed=choice.missed,
            blueprint_risk=bp.risk if bp is not None else None,
            blueprint_quarantine_only=bp.quarantine_only if bp is not None else False,
            implicated_seed_id=implicated_seed(observation),
            too_late=cutoff is not None and cutoff.too_late(observation.packet),
        )
        verdict = assess(proposed, context, self._c.risk)
        epoch = observation.epoch
        for event in verdict.events:
            self._c.emit(
                event.name, event.level, event.detail, observation.packet, rule=event.rule, effect=event.effect.value
            )
        for reason in verdict.conservative_reasons:
            self._c.conservative.trigger(reason, epoch=epoch)
            self._c.conservative_dirty = True
        if verdict.effect is RiskEffect.VETO:
            self._c.count(vetoes=1)
        elif verdict.effect is RiskEffect.DOWNGRADE:
            self._c.count(downgrades=1)
        if verdict.decision != proposed:
            # Before the state is journaled: a vetoed germination starts no cooldown and uses up no blueprint.
            self._c.withdraw(choice.proposer, proposed)
        return verdict

    def wire(
        self, packet: SystemStatePacket, choice: Choice, verdict: RiskVerdict, command_id: str, started_s: float
    ) -> WireDecision:
        unsigned = build_command(
            verdict.decision,
            command_id=command_id,
            issued_at=self._c.wall_clock.now(),
            training_run_id=self._c.run_id,
            decision_step=packet.global_step,
            policy_version=choice.version,
            reason=verdict.risk_reason,
            priority=verdict.priority,
        )
        command = None
        if unsigned is not None:
            fresh = msgspec.structs.replace(unsigned.security, freshness_window_s=self._c.freshness_s)
            command = sign_command(msgspec.structs.replace(unsigned, security=fresh), self._c.key, self._c.key_id)
        decision_ms = max(0.0, (self._c.clock.now() - started_s) * 1e3)
        self._c.latencies_ms.append(decision_ms)
        return WireDecision(
            run_id=self._c.run_id,
            decided_on_step=packet.global_step,
            command=command,
            policy=choice.label,
            decision_ms=decision_ms,
            risk_reason=verdict.risk_reason,
            reason=choice.decision.reason,
            feature_coverage=choice.decision.feature_coverage,
            packet_issued_at=packet.issued_at,
            fallback_reason=choice.fallback_reason,
            proposed=choice.decision.action.value,
        )

    def end_of_packet(self, packet: SystemStatePacket) -> None:
        if packet.validation_loss is None:
            return
        self._c.conservative.end_epoch(
            epoch=packet.epoch,
            emergency_level=packet.emergency_level,
            inference_breaker=self._c.breaker.state,
            metadata_breaker=BreakerState.CLOSED,
        )
        self._c.conservative_dirty = False
        self._c.sink.emit(self._c.conservative.gauge())

    def open_window(self, packet: SystemStatePacket, choice: Choice, verdict: RiskVerdict, command_id: str) -> None:
        final = verdict.decision
        follow_up = ("conservative_mode",) if verdict.enter_conservative else ()
        germinating = None
        if final.action is PolicyAction.GERMINATE and final.target_slot is not None:
            germinating = final.target_seed_id or germinated_seed_id(final.target_slot, packet.global_step)
        # A seed verb names its seed only: its blueprint is the one the packet shows for that seed.
        blueprint_id = final.blueprint_id or next(
            (s.blueprint_id for s in packet.seed_states if final.target_seed_id and s.seed_id == final.target_seed_id),
            None,
        )
        self._c.tracker.open(
            OutcomeWindow(
                command_id=command_id,
                training_run_id=self._c.run_id,
                decided_on_step=packet.global_step,
                start_epoch=packet.epoch,
                issued_at=self._c.wall_clock.now(),
                policy_version=choice.version,
                action=final.action,
                seed_id=None if germinating is not None else final.target_seed_id,
                blueprint_id=blueprint_id,
                germinating=germinating,
                log_prob=choice.decision.log_prob if final == choice.decision else None,
                value_estimate=choice.decision.value_estimate,
                notes=f"{choice.label}: proposed {choice.decision.action.value} ({choice.decision.reason}); "
                f"final {final.action.value}; risk: {verdict.risk_reason}",
                follow_up=follow_up,
                start_seed_parameters=packet.seed_parameters,
                host_parameters=packet.host_parameters,
            )
        )
