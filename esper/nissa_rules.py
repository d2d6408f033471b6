"""Nissa's alert table and SLOs at the thresholds the run's config sets."""

from __future__ import annotations

from typing import TYPE_CHECKING

from actors.nissa.alerts import alert_rules
from actors.nissa.slo import slo_objectives

if TYPE_CHECKING:
    from actors.nissa.alerts import AlertRule
    from actors.nissa.slo import SloObjective
    from schemas.config import RunConfig


def nissa_rules(config: RunConfig) -> tuple[AlertRule, ...]:
    """Nissa's alert table with the thresholds the config sets (the isolation keys, ``oona.queue_depth_high``,
    ``nissa.training_latency_high_ms``)."""
    return alert_rules(
        isolation_violations=config.kasmina.isolation_alert_violations,
        isolation_window_s=config.kasmina.isolation_alert_window_s,
        queue_depth_high=config.oona.queue_depth_high,
        training_latency_high_ms=config.nissa.training_latency_high_ms,
    )


def nissa_slos(config: RunConfig) -> tuple[SloObjective, ...]:
    """Nissa's SLOs at the target and budgets the config sets (``tolaria.epoch_hook_target_ms``,
    ``tamiyo.decision_budget_ms``, ``urza.fetch_budget_ms``)."""
    return slo_objectives(
        hook_target_ms=config.tolaria.epoch_hook_target_ms,
        decision_budget_ms=config.tamiyo.decision_budget_ms,
        fetch_budget_ms=config.urza.fetch_budget_ms,
    )
