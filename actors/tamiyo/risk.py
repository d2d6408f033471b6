"""The risk engine: an ordered table of rules that may veto or downgrade a policy's decision (REFERENCE.md s. 5).

Pure: ``assess`` reads a Decision and a RiskContext and returns a RiskVerdict; the actor applies the breaker outcomes
and conservative-mode requests it carries. Rules, in order (thresholds from TamiyoConfig):

  1. policy risk >= critical on any action but NO_OP, CULL, PAUSE: veto + conservative (``policy_risk_critical``,
     CRITICAL); >= elevated on GERMINATE: downgrade (``policy_risk_elevated``).
  2. conservative mode active: growth (GERMINATE, FOSSILIZE, RESUME, an lr increase) is vetoed; cull and pause
     stay allowed (``pause_triggered``).
  3. inference missed its deadline: inference breaker failure + conservative (``timeout_inference``); otherwise
     the verdict reports a breaker success.
  4. metadata missed its deadline: metadata breaker failure (``timeout_urza``); otherwise a success.
  5. blueprint quarantine_only or risk >= veto on GERMINATE: veto + conservative (``bp_quarantine``, CRITICAL);
     risk >= downgrade on GERMINATE: downgrade (``blueprint_risk``).
  6. loss_delta (validation loss now minus at the previous validation) > spike: veto to PAUSE of the implicated
     seed + conservative, whatever was proposed except a cull or pause (``loss_spike``); with no seed to blame (none
     shapes the host's output: actors.tamiyo.observe.implicated_seed) a plain veto to NO_OP + conservative, and a
     proposed NO_OP stands; > warn on GERMINATE: downgrade (``loss_warning``).
  7. hook latency without its state copy > budget: veto (``hook_budget``).
  8. isolation violations > 0 on a live seed: veto growth (``isolation_violations``).
  9. step latency > budget: veto (``step_latency``); Kasmina apply/finalize > 30 ms on GERMINATE: downgrade
     (``kasmina_latency``).
 10. GERMINATE past the growth horizon (a seed germinated now could not be kept before the run's last step,
     actors.tamiyo.horizon.GrowthCutoff): veto (``too_late``, the reason the heuristic and every_k give themselves
     when they grow nothing for it), so every policy's growth stops there, the GNN's included.

Veto rules 7-9 and 1 act on actions that change something (not NO_OP) and never on CULL or PAUSE, which shed risk.
Every matching rule reports its event; the first matching veto decides the outcome, else the first downgrade, except
that rule 6's veto wins over any other when there is an implicated seed (its PAUSE sheds risk, a NO_OP keeps it). A
veto yields NO_OP (or, for rule 6, PAUSE of the implicated seed); a downgrade yields the policy's non-growth fallback
when it offered one, else NO_OP.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

import msgspec

from actors.tamiyo.policy import NO_OP, Decision
from schemas.base import Record
from schemas.domain_enums import PolicyAction, TelemetryLevel
from schemas.enums import LIVE_STAGES, MessagePriority

if TYPE_CHECKING:
    from collections.abc import Callable

    from schemas.config import TamiyoConfig
    from schemas.state import SystemStatePacket

# Rule 8 judges the seeds still in play: the packet's own count is the session's running total, so a seed the
# isolation breaker has culled would otherwise veto growth for the rest of the run.


class RiskEffect(enum.Enum):
    """What a rule (or the whole verdict) did to the decision."""

    NONE = "none"
    DOWNGRADE = "downgrade"
    VETO = "veto"


class RiskThresholds(Record, frozen=True):
    """The engine's thresholds; defaults are TamiyoConfig's (REFERENCE.md sections 1 and 5)."""

    policy_risk_critical: float = 0.98
    policy_risk_elevated: float = 0.85
    blueprint_risk_veto: float = 0.8
    blueprint_risk_downgrade: float = 0.5
    loss_spike_veto: float = 0.15
    loss_spike_warn: float = 0.075
    hook_latency_veto_ms: float = 50.0
    step_latency_veto_ms: float = 120.0
    kasmina_apply_downgrade_ms: float = 30.0

    @classmethod
    def from_config(cls, config: TamiyoConfig) -> RiskThresholds:
        return cls(
            policy_risk_critical=config.policy_risk_critical,
            policy_risk_elevated=config.policy_risk_elevated,
            blueprint_risk_veto=config.blueprint_risk_veto,
            blueprint_risk_downgrade=config.blueprint_risk_downgrade,
            loss_spike_veto=config.loss_spike_veto,
            loss_spike_warn=config.loss_spike_warn,
            hook_latency_veto_ms=config.hook_latency_veto_ms,
            step_latency_veto_ms=config.step_latency_veto_ms,
        )


class RiskContext(Record, frozen=True):
    """The state the rules judge a decision against.

    Attributes:
        conservative: conservative mode is active.
        loss_delta: validation loss now minus at the previous validation (positive is worse); None before the second.
        hook_latency_ms / step_latency_ms: the latest epoch-hook and optimizer-step latencies, in milliseconds; the
            hook's without its state copy (what tolaria.epoch_hook_budget_ms bounds too).
        isolation_violations: gradient-isolation violations charged to the seeds still live in the packet.
        inference_deadline_missed: the policy's inference overran its deadline (the decision is then a fallback).
        metadata_deadline_missed: the Urza metadata lookup overran; None when no lookup was made.
        kasmina_apply_ms: Kasmina's latest apply/finalize latency, in milliseconds, if known.
        blueprint_risk / blueprint_quarantine_only: the proposed blueprint's catalogue risk and quarantine flag.
        implicated_seed_id: the seed a loss spike is blamed on (one whose output the host sees: the blending seed
            furthest into its ramp, else the youngest at alpha 1); paused by rule 6. None: no seed could have caused
            it, and rule 6 only vetoes.
        fallback: the policy's best non-growth action, used when a GERMINATE is downgraded.
        too_late: the packet is past the run's growth horizon: a seed germinated on it could not be kept.
    """

    conservative: bool = False
    loss_delta: float | None = None
    hook_latency_ms: float = 0.0
    step_latency_ms: float | None = None
    isolation_violations: int = 0
    inference_deadline_missed: bool = False
    metadata_deadline_missed: bool | None = None
    kasmina_apply_ms: float | None = None
    blueprint_risk: float | None = None
    blueprint_quarantine_only: bool = False
    implicated_seed_id: str | None = None
    fallback: Decision | None = None
    too_late: bool = False

    @classmethod
    def from_packet(cls, packet: SystemStatePacket, *, conservative: bool) -> RiskContext:
        """The packet's figures (loss_delta, hook and step latency, isolation violations); other fields default."""
        return cls(
            conservative=conservative,
            loss_delta=packet.loss_delta,
            # The budgeted part: the state copy grows with the model and the hook budget does not count it (a large
            # model's every packet was vetoed on it, for good).
            hook_latency_ms=max(0.0, packet.hook_latency_ms - packet.hook_capture_ms),
            step_latency_ms=packet.timings.step_ms,
            isolation_violations=sum(s.isolation_violations for s in packet.seed_states if s.stage in LIVE_STAGES),
        )


class RiskEvent(Record, frozen=True):
    """One rule that matched: its number in the table, event name, level, effect and a one-line detail."""

    rule: int
    name: str
    level: TelemetryLevel
    effect: RiskEffect
    detail: str
    conservative: bool = False


class RiskVerdict(Record, frozen=True):
    """The engine's answer: the final decision, what happened to the proposed one, and what the actor must do.

    ``priority`` follows the worst event (CRITICAL -> CRITICAL; WARNING or ERROR -> HIGH; else NORMAL).
    ``risk_reason`` names the event that decided the outcome, else ``policy``.
    """

    decision: Decision
    proposed: Decision
    effect: RiskEffect
    events: tuple[RiskEvent, ...]
    risk_reason: str
    priority: MessagePriority
    conservative_reasons: tuple[str, ...]
    inference_success: bool
    metadata_success: bool | None

    @property
    def enter_conservative(self) -> bool:
        return bool(self.conservative_reasons)


def _event(
    rule: int, name: str, level: TelemetryLevel, effect: RiskEffect, detail: str, conservative: bool = False
) -> RiskEvent:
    return RiskEvent(rule=rule, name=name, level=level, effect=effect, detail=detail, conservative=conservative)


def _changes_something(decision: Decision) -> bool:
    return decision.action is not PolicyAction.NO_OP and not decision.is_protective


def _veto_if(applies: bool) -> RiskEffect:
    return RiskEffect.VETO if applies else RiskEffect.NONE


def _rule_policy_risk(d: Decision, c: RiskContext, t: RiskThresholds) -> list[RiskEvent]:
    if _changes_something(d) and d.policy_risk >= t.policy_risk_critical:
        detail = f"policy risk {d.policy_risk:.3f} >= {t.policy_risk_critical}"
        return [_event(1, "policy_risk_critical", TelemetryLevel.CRITICAL, RiskEffect.VETO, detail, True)]
    if d.action is PolicyAction.GERMINATE and d.policy_risk >= t.policy_risk_elevated:
        detail = f"policy risk {d.policy_risk:.3f} >= {t.policy_risk_elevated}"
        return [_event(1, "policy_risk_elevated", TelemetryLevel.WARNING, RiskEffect.DOWNGRADE, detail)]
    return []


def _rule_conservative(d: Decision, c: RiskContext, t: RiskThresholds) -> list[RiskEvent]:
    if c.conservative and d.is_growth:
        detail = f"conservative mode blocks {d.action.value}"
        return [_event(2, "pause_triggered", TelemetryLevel.WARNING, RiskEffect.VETO, detail)]
    return []


def _rule_inference_deadline(d: Decision, c: RiskContext, t: RiskThresholds) -> list[RiskEvent]:
    if c.inference_deadline_missed:
        detail = "policy inference missed its deadline"
        return [_event(3, "timeout_inference", TelemetryLevel.WARNING, RiskEffect.NONE, detail, True)]
    return []


def _rule_metadata_deadline(d: Decision, c: RiskContext, t: RiskThresholds) -> list[RiskEvent]:
    if c.metadata_deadline_missed:
        return [_event(4, "timeout_urza", TelemetryLevel.WARNING, RiskEffect.NONE, "metadata missed its deadline")]
    return []


def _rule_blueprint(d: Decision, c: RiskContext, t: RiskThresholds) -> list[RiskEvent]:
    if d.action is not PolicyAction.GERMINATE:
        return []
    risk = c.blueprint_risk if c.blueprint_risk is not None else 0.0
    if c.blueprint_quarantine_only or risk >= t.blueprint_risk_veto:
        detail = f"blueprint {d.blueprint_id} quarantine_only={c.blueprint_quarantine_only} risk {risk:.3f}"
        return [_event(5, "bp_quarantine", TelemetryLevel.CRITICAL, RiskEffect.VETO, detail, True)]
    if risk >= t.blueprint_risk_downgrade:
        detail = f"blueprint {d.blueprint_id} risk {risk:.3f} >= {t.blueprint_risk_downgrade}"
        return [_event(5, "blueprint_risk", TelemetryLevel.WARNING, RiskEffect.DOWNGRADE, detail)]
    return []


def _rule_loss(d: Decision, c: RiskContext, t: RiskThresholds) -> list[RiskEvent]:
    if c.loss_delta is None:
        return []
    if c.loss_delta > t.loss_spike_veto:
        detail = f"loss_delta {c.loss_delta:.4f} > {t.loss_spike_veto}"
        # A NO_OP is vetoed only to pause the blamed seed: with none, the spike is the host's own and the NO_OP
        # stands (conservative mode still starts).
        blamed = c.implicated_seed_id is not None
        effect = _veto_if(not d.is_protective and (blamed or d.action is not PolicyAction.NO_OP))
        return [_event(6, "loss_spike", TelemetryLevel.ERROR, effect, detail, True)]
    if d.action is PolicyAction.GERMINATE and c.loss_delta > t.loss_spike_warn:
        detail = f"loss_delta {c.loss_delta:.4f} > {t.loss_spike_warn}"
        return [_event(6, "loss_warning", TelemetryLevel.WARNING, RiskEffect.DOWNGRADE, detail)]
    return []


def _rule_hook_latency(d: Decision, c: RiskContext, t: RiskThresholds) -> list[RiskEvent]:
    if _changes_something(d) and c.hook_latency_ms > t.hook_latency_veto_ms:
        detail = f"hook latency {c.hook_latency_ms:.1f} ms > {t.hook_latency_veto_ms} ms"
        return [_event(7, "hook_budget", TelemetryLevel.WARNING, RiskEffect.VETO, detail)]
    return []


def _rule_isolation(d: Decision, c: RiskContext, t: RiskThresholds) -> list[RiskEvent]:
    if d.is_growth and c.isolation_violations > 0:
        detail = f"{c.isolation_violations} isolation violations"
        return [_event(8, "isolation_violations", TelemetryLevel.ERROR, RiskEffect.VETO, detail)]
    return []


def _rule_latencies(d: Decision, c: RiskContext, t: RiskThresholds) -> list[RiskEvent]:
    events: list[RiskEvent] = []
    if _changes_something(d) and c.step_latency_ms is not None and c.step_latency_ms > t.step_latency_veto_ms:
        detail = f"step latency {c.step_latency_ms:.1f} ms > {t.step_latency_veto_ms} ms"
        events.append(_event(9, "step_latency", TelemetryLevel.WARNING, RiskEffect.VETO, detail))
    if (
        d.action is PolicyAction.GERMINATE
        and c.kasmina_apply_ms is not None
        and c.kasmina_apply_ms > t.kasmina_apply_downgrade_ms
    ):
        detail = f"kasmina apply {c.kasmina_apply_ms:.1f} ms > {t.kasmina_apply_downgrade_ms} ms"
        events.append(_event(9, "kasmina_latency", TelemetryLevel.WARNING, RiskEffect.DOWNGRADE, detail))
    return events


def _rule_horizon(d: Decision, c: RiskContext, t: RiskThresholds) -> list[RiskEvent]:
    if d.action is PolicyAction.GERMINATE and c.too_late:
        detail = f"a seed germinated in {d.target_slot} now could not be kept before the run's last step"
        return [_event(10, "too_late", TelemetryLevel.INFO, RiskEffect.VETO, detail)]
    return []


RULES: tuple[Callable[[Decision, RiskContext, RiskThresholds], list[RiskEvent]], ...] = (
    _rule_policy_risk,
    _rule_conservative,
    _rule_inference_deadline,
    _rule_metadata_deadline,
    _rule_blueprint,
    _rule_loss,
    _rule_hook_latency,
    _rule_isolation,
    _rule_latencies,
    _rule_horizon,
)
"""The rule table, in the order the rules are applied (rules 1 to 10)."""


def _priority(events: tuple[RiskEvent, ...]) -> MessagePriority:
    worst = max((event.level for event in events), default=TelemetryLevel.INFO)
    if worst is TelemetryLevel.CRITICAL:
        return MessagePriority.CRITICAL
    if worst >= TelemetryLevel.WARNING:
        return MessagePriority.HIGH
    return MessagePriority.NORMAL


def assess(decision: Decision, context: RiskContext, thresholds: RiskThresholds | None = None) -> RiskVerdict:
    """Apply the rule table to ``decision``; pure and deterministic."""
    limits = thresholds if thresholds is not None else RiskThresholds()
    events = tuple(event for rule in RULES for event in rule(decision, context, limits))
    vetoes = [e for e in events if e.effect is RiskEffect.VETO]
    # A loss spike's PAUSE of the blamed seed sheds the risk the other vetoes would only leave in place (their NO_OP
    # kept the seed blending): it wins over any earlier veto.
    spike = next((e for e in vetoes if e.rule == 6), None) if context.implicated_seed_id is not None else None
    veto = spike if spike is not None else next(iter(vetoes), None)
    downgrade = next((e for e in events if e.effect is RiskEffect.DOWNGRADE), None)
    if veto is not None:
        final = _vetoed(veto, context)
        effect, reason = RiskEffect.VETO, veto.name
    elif downgrade is not None:
        final = _downgraded(downgrade, context)
        effect, reason = RiskEffect.DOWNGRADE, downgrade.name
    else:
        final, effect, reason = decision, RiskEffect.NONE, "policy"
    return RiskVerdict(
        decision=final,
        proposed=decision,
        effect=effect,
        events=events,
        risk_reason=reason,
        priority=_priority(events),
        conservative_reasons=tuple(e.name for e in events if e.conservative),
        inference_success=not context.inference_deadline_missed,
        metadata_success=None if context.metadata_deadline_missed is None else not context.metadata_deadline_missed,
    )


def _vetoed(event: RiskEvent, context: RiskContext) -> Decision:
    if event.rule == 6 and context.implicated_seed_id is not None:
        return Decision(action=PolicyAction.PAUSE, target_seed_id=context.implicated_seed_id, reason=event.name)
    return msgspec.structs.replace(NO_OP, reason=event.name)


def _downgraded(event: RiskEvent, context: RiskContext) -> Decision:
    fallback = context.fallback
    if fallback is not None and not fallback.is_growth and fallback.action is not PolicyAction.NO_OP:
        return msgspec.structs.replace(fallback, reason=event.name)
    return msgspec.structs.replace(NO_OP, reason=event.name)
