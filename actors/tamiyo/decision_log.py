"""What Tamiyo records of each decision: its log line and the controller's decision counters."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec
import structlog

if TYPE_CHECKING:
    from actors.tamiyo.controller import Controller
    from actors.tamiyo.risk import RiskVerdict
    from schemas.boundary import Decision as WireDecision
    from schemas.state import SystemStatePacket

_log = structlog.get_logger("actors.tamiyo")


def record_decision(
    c: Controller, actor: str, packet: SystemStatePacket, verdict: RiskVerdict, wire: WireDecision
) -> None:
    action = verdict.decision.action.value
    # One line per decision: the log tail shows what the controller does, and a resumed run's summary counts the
    # interrupted session's decisions from it.
    _log.info(
        "tamiyo_decision",
        actor=actor,
        step=packet.global_step,
        action=action,
        command=wire.command is not None,
        policy=wire.policy,
        reason=wire.reason,
        proposed=wire.proposed,
        risk_reason=wire.risk_reason,
        decision_ms=round(wire.decision_ms, 3),
        **({"fallback_reason": wire.fallback_reason} if wire.fallback_reason else {}),
        # The GNN's share of the inputs the state should carry; a policy that reports none (the fallback) adds none.
        **({"feature_coverage": round(wire.feature_coverage, 4)} if wire.feature_coverage is not None else {}),
    )
    by_action = dict(c.counters.by_action)
    by_action[action] = by_action.get(action, 0) + 1
    c.counters = msgspec.structs.replace(c.counters, decisions=c.counters.decisions + 1, by_action=by_action)
    c.last_step = packet.global_step
    c.training_over = packet.epoch_progress >= 1.0 and packet.epoch + 1 >= packet.epochs_total
