"""The risk engine's rule table: each rule at its threshold, rule order, events of every match, veto vs downgrade."""

from __future__ import annotations

import pytest

from actors.tamiyo.policy import NO_OP, Decision, build_command
from actors.tamiyo.risk import RiskContext, RiskEffect, RiskThresholds, assess
from esper.runtime.clock import ManualClock
from esper.runtime.signing import CommandVerifier, sign_command
from schemas.config import TamiyoConfig
from schemas.control import AdaptationCommand, BlendConfig
from schemas.domain_enums import CommandKind, PolicyAction, TelemetryLevel
from schemas.enums import MessagePriority

GERMINATE = Decision(action=PolicyAction.GERMINATE, target_slot="s0", blueprint_id="bp", reason="plateau")
CULL = Decision(action=PolicyAction.CULL, target_seed_id="seed-1", reason="no_benefit")
PAUSE = Decision(action=PolicyAction.PAUSE, target_seed_id="seed-1")
FOSSILIZE = Decision(action=PolicyAction.FOSSILIZE, target_seed_id="seed-1")
RESUME = Decision(action=PolicyAction.RESUME, target_seed_id="seed-1")
LR_UP = Decision(action=PolicyAction.LR_TWEAK, lr_delta=0.1)
LR_DOWN = Decision(action=PolicyAction.LR_TWEAK, lr_delta=-0.1)


def germinate(risk: float) -> Decision:
    return Decision(action=PolicyAction.GERMINATE, target_slot="s0", blueprint_id="bp", policy_risk=risk)


def names(decision: Decision, context: RiskContext) -> list[str]:
    return [event.name for event in assess(decision, context).events]


def test_thresholds_default_to_the_config_defaults() -> None:
    assert RiskThresholds.from_config(TamiyoConfig()) == RiskThresholds()


def test_clean_decision_passes_unchanged() -> None:
    verdict = assess(GERMINATE, RiskContext(loss_delta=-0.1, hook_latency_ms=10.0, step_latency_ms=30.0))
    assert verdict.decision == GERMINATE
    assert (verdict.effect, verdict.risk_reason, verdict.events) == (RiskEffect.NONE, "policy", ())
    assert verdict.priority is MessagePriority.NORMAL
    assert not verdict.enter_conservative
    assert verdict.inference_success
    assert verdict.metadata_success is None


def test_rule1_policy_risk_critical_vetoes_and_enters_conservative() -> None:
    assert names(germinate(0.9799), RiskContext()) == ["policy_risk_elevated"]
    verdict = assess(germinate(0.98), RiskContext())
    assert verdict.decision.action is PolicyAction.NO_OP
    assert verdict.effect is RiskEffect.VETO
    assert verdict.risk_reason == "policy_risk_critical"
    assert verdict.conservative_reasons == ("policy_risk_critical",)
    assert verdict.priority is MessagePriority.CRITICAL
    assert verdict.events[0].level is TelemetryLevel.CRITICAL
    # Risk-shedding actions are never vetoed by the policy's own risk estimate.
    assert assess(Decision(action=PolicyAction.CULL, target_seed_id="x", policy_risk=0.99), RiskContext()).effect is (
        RiskEffect.NONE
    )


def test_rule1_policy_risk_elevated_downgrades_germinate_only() -> None:
    assert names(germinate(0.8499), RiskContext()) == []
    verdict = assess(germinate(0.85), RiskContext())
    assert verdict.effect is RiskEffect.DOWNGRADE
    assert verdict.decision.action is PolicyAction.NO_OP
    assert not verdict.enter_conservative
    assert verdict.priority is MessagePriority.HIGH
    fossilize = Decision(action=PolicyAction.FOSSILIZE, target_seed_id="x", policy_risk=0.9)
    assert assess(fossilize, RiskContext()).effect is RiskEffect.NONE


@pytest.mark.parametrize("decision", [GERMINATE, FOSSILIZE, RESUME, LR_UP])
def test_rule2_conservative_mode_blocks_growth(decision: Decision) -> None:
    verdict = assess(decision, RiskContext(conservative=True))
    assert verdict.effect is RiskEffect.VETO
    assert verdict.risk_reason == "pause_triggered"
    assert verdict.decision.action is PolicyAction.NO_OP


@pytest.mark.parametrize("decision", [CULL, PAUSE, LR_DOWN, NO_OP])
def test_rule2_conservative_mode_allows_cull_pause_and_lr_cuts(decision: Decision) -> None:
    verdict = assess(decision, RiskContext(conservative=True))
    assert verdict.effect is RiskEffect.NONE
    assert verdict.decision == decision


def test_rule3_inference_deadline_reports_breaker_outcome_and_conservative() -> None:
    assert assess(NO_OP, RiskContext()).inference_success
    verdict = assess(NO_OP, RiskContext(inference_deadline_missed=True))
    assert not verdict.inference_success
    assert verdict.conservative_reasons == ("timeout_inference",)
    assert verdict.effect is RiskEffect.NONE


def test_rule4_metadata_deadline_reports_breaker_outcome() -> None:
    assert assess(GERMINATE, RiskContext(metadata_deadline_missed=False)).metadata_success is True
    verdict = assess(GERMINATE, RiskContext(metadata_deadline_missed=True))
    assert verdict.metadata_success is False
    assert [e.name for e in verdict.events] == ["timeout_urza"]
    assert not verdict.enter_conservative
    assert verdict.decision == GERMINATE


def test_rule5_blueprint_risk_veto_and_downgrade_at_thresholds() -> None:
    assert names(GERMINATE, RiskContext(blueprint_risk=0.4999)) == []
    assert assess(GERMINATE, RiskContext(blueprint_risk=0.5)).effect is RiskEffect.DOWNGRADE
    assert assess(GERMINATE, RiskContext(blueprint_risk=0.7999)).risk_reason == "blueprint_risk"
    verdict = assess(GERMINATE, RiskContext(blueprint_risk=0.8))
    assert (verdict.effect, verdict.risk_reason) == (RiskEffect.VETO, "bp_quarantine")
    assert verdict.conservative_reasons == ("bp_quarantine",)
    quarantined = assess(GERMINATE, RiskContext(blueprint_risk=0.0, blueprint_quarantine_only=True))
    assert (quarantined.effect, quarantined.priority) == (RiskEffect.VETO, MessagePriority.CRITICAL)


def test_rule6_loss_spike_pauses_the_implicated_seed() -> None:
    assert names(GERMINATE, RiskContext(loss_delta=0.075)) == []
    warn = assess(GERMINATE, RiskContext(loss_delta=0.0751))
    assert (warn.effect, warn.risk_reason) == (RiskEffect.DOWNGRADE, "loss_warning")
    assert assess(LR_DOWN, RiskContext(loss_delta=0.1)).effect is RiskEffect.NONE
    assert assess(GERMINATE, RiskContext(loss_delta=0.15)).effect is RiskEffect.DOWNGRADE
    spike = assess(GERMINATE, RiskContext(loss_delta=0.1501, implicated_seed_id="seed-7"))
    assert spike.effect is RiskEffect.VETO
    assert spike.decision == Decision(action=PolicyAction.PAUSE, target_seed_id="seed-7", reason="loss_spike")
    assert spike.conservative_reasons == ("loss_spike",)
    # Without a seed to blame the veto is a NO_OP; a cull proposed during a spike goes ahead.
    assert assess(GERMINATE, RiskContext(loss_delta=0.2)).decision.action is PolicyAction.NO_OP
    assert assess(CULL, RiskContext(loss_delta=0.2)).decision == CULL


def test_a_loss_spike_no_seed_could_have_caused_vetoes_growth_but_pauses_nothing() -> None:
    """With no seed shaping the host's output the spike is the host's own: growth is vetoed to a NO_OP, a proposed
    NO_OP stands (the policy's reason, not a veto), and conservative mode starts either way."""
    spike = RiskContext(loss_delta=0.2)
    vetoed = assess(GERMINATE, spike)
    assert vetoed.decision == Decision(action=PolicyAction.NO_OP, reason="loss_spike")
    assert (vetoed.effect, vetoed.risk_reason, vetoed.conservative_reasons) == (
        RiskEffect.VETO,
        "loss_spike",
        ("loss_spike",),
    )
    idle = assess(NO_OP, spike)
    assert (idle.decision, idle.effect, idle.risk_reason) == (NO_OP, RiskEffect.NONE, "policy")
    assert idle.conservative_reasons == ("loss_spike",)
    assert [e.name for e in idle.events] == ["loss_spike"]
    # With a seed to blame the NO_OP still becomes its PAUSE.
    blamed = assess(NO_OP, RiskContext(loss_delta=0.2, implicated_seed_id="seed-3"))
    assert blamed.decision == Decision(action=PolicyAction.PAUSE, target_seed_id="seed-3", reason="loss_spike")


def test_rule7_hook_latency_vetoes() -> None:
    assert names(FOSSILIZE, RiskContext(hook_latency_ms=50.0)) == []
    verdict = assess(FOSSILIZE, RiskContext(hook_latency_ms=50.1))
    assert (verdict.effect, verdict.risk_reason) == (RiskEffect.VETO, "hook_budget")
    assert assess(PAUSE, RiskContext(hook_latency_ms=500.0)).effect is RiskEffect.NONE


def test_rule8_isolation_violations_veto_growth_only() -> None:
    assert names(GERMINATE, RiskContext(isolation_violations=0)) == []
    verdict = assess(GERMINATE, RiskContext(isolation_violations=1))
    assert (verdict.effect, verdict.risk_reason) == (RiskEffect.VETO, "isolation_violations")
    assert assess(LR_DOWN, RiskContext(isolation_violations=3)).effect is RiskEffect.NONE


def test_rule9_step_latency_vetoes_and_kasmina_latency_downgrades() -> None:
    assert names(GERMINATE, RiskContext(step_latency_ms=120.0, kasmina_apply_ms=30.0)) == []
    step = assess(LR_UP, RiskContext(step_latency_ms=120.5))
    assert (step.effect, step.risk_reason) == (RiskEffect.VETO, "step_latency")
    apply = assess(GERMINATE, RiskContext(kasmina_apply_ms=30.5))
    assert (apply.effect, apply.risk_reason) == (RiskEffect.DOWNGRADE, "kasmina_latency")


def test_first_veto_wins_and_every_match_is_reported() -> None:
    context = RiskContext(
        conservative=True,
        blueprint_risk=0.9,
        loss_delta=0.3,
        hook_latency_ms=80.0,
        isolation_violations=2,
        step_latency_ms=200.0,
    )
    verdict = assess(germinate(0.99), context)
    assert [(e.rule, e.name) for e in verdict.events] == [
        (1, "policy_risk_critical"),
        (2, "pause_triggered"),
        (5, "bp_quarantine"),
        (6, "loss_spike"),
        (7, "hook_budget"),
        (8, "isolation_violations"),
        (9, "step_latency"),
    ]
    assert verdict.risk_reason == "policy_risk_critical"
    assert verdict.decision.action is PolicyAction.NO_OP
    assert verdict.conservative_reasons == ("policy_risk_critical", "bp_quarantine", "loss_spike")


def test_rule10_vetoes_a_germination_past_the_growth_horizon() -> None:
    """The GNN checks no horizon itself: its germination past the run's growth horizon was sent."""
    verdict = assess(GERMINATE, RiskContext(too_late=True))
    assert verdict.decision == Decision(reason="too_late")
    assert (verdict.effect, verdict.risk_reason) == (RiskEffect.VETO, "too_late")
    assert [(e.rule, e.level) for e in verdict.events] == [(10, TelemetryLevel.INFO)]
    assert not verdict.enter_conservative
    # Only growth into a new slot waits for a future: the seeds already grown are tended to the end.
    for decision in (CULL, PAUSE, FOSSILIZE, RESUME, LR_UP, NO_OP):
        assert assess(decision, RiskContext(too_late=True)).effect is RiskEffect.NONE


@pytest.mark.parametrize("decision", [GERMINATE, germinate(0.99), FOSSILIZE, LR_UP, NO_OP])
def test_a_loss_spike_pauses_the_implicated_seed_whatever_earlier_veto_matched(decision: Decision) -> None:
    """Rule 6 promises PAUSE of the blamed seed whatever was proposed (but a cull or pause): the first veto won, so in
    conservative mode (rule 2) a GERMINATE during a spike became a plain NO_OP and the spiking seed kept blending."""
    context = RiskContext(conservative=True, loss_delta=0.5, hook_latency_ms=80.0, implicated_seed_id="seed-1")
    verdict = assess(decision, context)
    assert verdict.decision == Decision(action=PolicyAction.PAUSE, target_seed_id="seed-1", reason="loss_spike")
    assert (verdict.effect, verdict.risk_reason) == (RiskEffect.VETO, "loss_spike")
    assert "loss_spike" in verdict.conservative_reasons
    assert assess(CULL, context).decision == CULL


def test_a_later_veto_beats_an_earlier_downgrade() -> None:
    verdict = assess(germinate(0.9), RiskContext(hook_latency_ms=60.0))
    assert [e.effect for e in verdict.events] == [RiskEffect.DOWNGRADE, RiskEffect.VETO]
    assert (verdict.effect, verdict.risk_reason) == (RiskEffect.VETO, "hook_budget")


def test_downgrade_uses_the_non_growth_fallback() -> None:
    cull = Decision(action=PolicyAction.CULL, target_seed_id="seed-2", reason="weak")
    verdict = assess(germinate(0.9), RiskContext(fallback=cull))
    assert verdict.effect is RiskEffect.DOWNGRADE
    assert verdict.decision == Decision(
        action=PolicyAction.CULL, target_seed_id="seed-2", reason="policy_risk_elevated"
    )
    # A growth fallback is not a downgrade: NO_OP instead.
    assert assess(germinate(0.9), RiskContext(fallback=FOSSILIZE)).decision.action is PolicyAction.NO_OP
    # A veto ignores the fallback.
    assert assess(germinate(0.99), RiskContext(fallback=cull)).decision.action is PolicyAction.NO_OP


def test_a_verdict_becomes_a_signed_command_that_verifies() -> None:
    verdict = assess(
        Decision(action=PolicyAction.GERMINATE, target_slot="s0", blueprint_id="bp", blend=BlendConfig()),
        RiskContext(blueprint_risk=0.6, fallback=Decision(action=PolicyAction.LR_TWEAK, lr_delta=-0.2)),
    )
    command_id = "00000000-0000-4000-8000-000000000001"
    cmd = build_command(
        verdict.decision,
        command_id=command_id,
        issued_at=10.0,
        training_run_id="run-1",
        decision_step=80,
        policy_version="heuristic-1",
        reason=verdict.risk_reason,
        priority=verdict.priority,
    )
    assert cmd is not None
    assert (cmd.kind, cmd.lr_delta, cmd.reason, cmd.priority) == (
        CommandKind.OPTIMIZER,
        -0.2,
        "blueprint_risk",
        MessagePriority.HIGH,
    )
    signed = sign_command(cmd, b"secret", "main")
    assert CommandVerifier({"main": b"secret"}, ManualClock(start_s=12.0)).verify(signed) is None

    def let_through(decision: Decision) -> AdaptationCommand | None:
        return build_command(
            decision,
            command_id=command_id,
            issued_at=10.0,
            training_run_id="run-1",
            decision_step=80,
            policy_version="heuristic-1",
            reason="policy",
        )

    assert let_through(NO_OP) is None
    # A decision the risk engine let through carries the policy's own reason to Kasmina (and the console).
    through = let_through(Decision(action=PolicyAction.CULL, target_slot="s0", target_seed_id="a", reason="paused"))
    assert through is not None
    assert through.reason == "policy:paused"
