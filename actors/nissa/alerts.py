"""Alert rules and overall health: pure state machines that read the time their caller passes in.

A rule is evaluated each time new data for its metric arrives and on every tick (EvaluateAlerts, every
``alert_eval_interval_s``). It fires after ``for_count`` consecutive breaching evaluations and clears at the first
evaluation that does not breach. A windowed rule (``window_s``) reads its metric as a cumulative count and compares
the increase within the last ``window_s`` seconds. Notices carry the emergency level the alert asks for: L1 for a
notice, L2 for a budget breach; Nissa never raises the level itself (Tolaria owns it).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Final, Literal, final

from actors.nissa.metric_registry import ISOLATION_VIOLATIONS
from schemas.enums import EmergencyLevel, HealthStatus
from schemas.nissa import ActiveAlert, AlertNotice, HealthReport, SloStatus

if TYPE_CHECKING:
    from collections.abc import Collection, Sequence

Comparison = Literal["<", ">", ">="]


@final
@dataclass(frozen=True, slots=True)
class AlertRule:
    """One row of the alert table.

    Attributes:
        name: unique rule name (``training_latency_high``).
        metric: the dotted metric it reads.
        op / threshold: the breach condition, ``value op threshold``.
        for_count: consecutive breaching evaluations before it fires (>= 1).
        routes: where the predecessor routed it (slack, pagerduty, email); Esper's default route is the log.
        level: the emergency level a firing asks for (L1 or L2).
        window_s: None for a plain value; else the metric is a cumulative count and the rule reads its increase
            within the last window_s seconds.
    """

    name: str
    metric: str
    op: Comparison
    threshold: float
    for_count: int
    routes: tuple[str, ...] = ()
    level: EmergencyLevel = EmergencyLevel.L1_NOTICE
    window_s: float | None = None

    def __post_init__(self) -> None:
        if self.for_count < 1:
            raise ValueError(f"rule {self.name}: for_count must be >= 1, got {self.for_count}")
        if self.level not in (EmergencyLevel.L1_NOTICE, EmergencyLevel.L2_ELEVATED):
            raise ValueError(f"rule {self.name}: level must be L1_NOTICE or L2_ELEVATED, got {self.level.name}")
        if self.window_s is not None and not self.window_s > 0:
            raise ValueError(f"rule {self.name}: window_s must be > 0, got {self.window_s}")

    @property
    def condition(self) -> str:
        """The condition as text: ``> 18`` or ``>= 3 within 300s``."""
        text = f"{self.op} {self.threshold:g}"
        return text if self.window_s is None else f"{text} within {self.window_s:g}s"

    def breached_by(self, value: float) -> bool:
        """Whether ``value`` breaches the condition; NaN never does."""
        if self.op == "<":
            return value < self.threshold
        if self.op == ">":
            return value > self.threshold
        return value >= self.threshold


DEFAULT_RULES: Final[tuple[AlertRule, ...]] = (
    AlertRule("tamiyo_coverage_low", "tamiyo.gnn.feature_coverage", "<", 0.7, 3, ("slack",)),
    # L1, not L2: on a busy CPU host step time alone must not put the run in conservative mode.
    AlertRule("training_latency_high", "tolaria.training.latency_ms", ">", 18.0, 3, ("pagerduty", "slack")),
    AlertRule(
        "kasmina_isolation_violation",
        ISOLATION_VIOLATIONS,
        ">=",
        3.0,
        1,
        ("pagerduty",),
        level=EmergencyLevel.L2_ELEVATED,
        window_s=300.0,
    ),
    AlertRule("oona_queue_depth", "oona.queue.depth", ">", 4000.0, 2, ("slack",)),
    AlertRule("tezzeret_compile_retry_high", "tezzeret.compile.retry_count", ">", 1.0, 1, ("email",)),
)
"""The alert table of REFERENCE.md section 9."""


def alert_rules(
    *,
    isolation_violations: int = 3,
    isolation_window_s: float = 300.0,
    queue_depth_high: int = 4000,
    training_latency_high_ms: float = 18.0,
) -> tuple[AlertRule, ...]:
    """DEFAULT_RULES with the isolation rule's threshold and window as configured (``kasmina.isolation_alert_*``),
    the queue-depth rule's threshold at ``oona.queue_depth_high`` (a fixed 4000 could never fire on a bus shedding at
    a lower one) and the step-time rule's at ``nissa.training_latency_high_ms`` (a fixed 18 ms flapped on ordinary
    conv models stepping 17-53 ms)."""

    def configured(rule: AlertRule) -> AlertRule:
        if rule.name == "training_latency_high":
            return replace(rule, threshold=training_latency_high_ms)
        if rule.name == "kasmina_isolation_violation":
            return replace(rule, threshold=float(isolation_violations), window_s=isolation_window_s)
        if rule.name == "oona_queue_depth":
            return replace(rule, threshold=float(queue_depth_high))
        return rule

    return tuple(configured(rule) for rule in DEFAULT_RULES)


@final
class _RuleState:
    __slots__ = ("active", "breaches", "last_total", "since_s", "value", "window")

    def __init__(self) -> None:
        self.value: float | None = None
        self.breaches = 0
        self.active = False
        self.since_s = 0.0
        self.last_total: float | None = None
        self.window: deque[tuple[float, float]] = deque()


@final
class AlertEvaluator:
    """Evaluates a rule table against the latest metric values. Event-loop only; never blocks."""

    def __init__(self, rules: Sequence[AlertRule] = DEFAULT_RULES) -> None:
        names = [rule.name for rule in rules]
        if len(set(names)) != len(names):
            raise ValueError(f"rule names must be unique, got {names}")
        self._rules = tuple(rules)
        self._states = {rule.name: _RuleState() for rule in rules}
        self._metrics = frozenset(rule.metric for rule in rules)

    @property
    def rules(self) -> tuple[AlertRule, ...]:
        return self._rules

    def watches(self, metric: str) -> bool:
        """Whether any rule reads ``metric``."""
        return metric in self._metrics

    def observe(self, metric: str, value: float, now_s: float) -> None:
        """Record a new value of ``metric`` at ``now_s`` (seconds); call evaluate() afterwards."""
        for rule in self._rules:
            if rule.metric != metric:
                continue
            state = self._states[rule.name]
            if rule.window_s is None:
                state.value = value
                continue
            # A cumulative count: its increase since the last report; a drop means it was reset, so it all is new.
            last = state.last_total
            increase = value if last is None or value < last else value - last
            state.last_total = value
            if increase > 0:
                state.window.append((now_s, increase))
            state.value = 0.0

    def evaluate(self, now_s: float, metrics: Collection[str] | None = None) -> list[AlertNotice]:
        """Evaluate the rules on ``metrics``, whose values were just observed (each breach counts towards
        ``for_count``); returns fire/clear notices. None: a timer's look at every rule: a windowed count slides (its
        alert clears once the window empties), but no value is newer than when it was observed, so nothing counts as
        a new breach (a stale step time fired training_latency_high, "three packets running", on one packet)."""
        tick = metrics is None
        notices: list[AlertNotice] = []
        for rule in self._rules:
            if metrics is not None and rule.metric not in metrics:
                continue
            state = self._states[rule.name]
            if state.value is None or (tick and rule.window_s is None):
                continue
            value = self._current(rule, state, now_s)
            if rule.breached_by(value):
                if tick:
                    continue
                state.breaches += 1
                if not state.active and state.breaches >= rule.for_count:
                    state.active = True
                    state.since_s = now_s
                    notices.append(self._notice(rule, state, value, now_s, active=True))
            else:
                if state.active:
                    state.active = False
                    notices.append(self._notice(rule, state, value, now_s, active=False))
                state.breaches = 0
        return notices

    def active(self) -> tuple[ActiveAlert, ...]:
        """The alerts firing now, in table order."""
        alerts: list[ActiveAlert] = []
        for rule in self._rules:
            state = self._states[rule.name]
            if state.active and state.value is not None:
                alerts.append(
                    ActiveAlert(
                        rule=rule.name,
                        metric=rule.metric,
                        condition=rule.condition,
                        threshold=rule.threshold,
                        value=state.value,
                        level=rule.level,
                        since_s=state.since_s,
                        breaches=state.breaches,
                    )
                )
        return tuple(alerts)

    @staticmethod
    def _current(rule: AlertRule, state: _RuleState, now_s: float) -> float:
        if rule.window_s is None:
            assert state.value is not None
            return state.value
        horizon = now_s - rule.window_s
        while state.window and state.window[0][0] < horizon:
            state.window.popleft()
        state.value = sum(increase for _, increase in state.window)
        return state.value

    @staticmethod
    def _notice(rule: AlertRule, state: _RuleState, value: float, now_s: float, *, active: bool) -> AlertNotice:
        return AlertNotice(
            rule=rule.name,
            metric=rule.metric,
            condition=rule.condition,
            threshold=rule.threshold,
            value=value,
            active=active,
            level=rule.level,
            breaches=state.breaches,
            at_s=now_s,
            routes=rule.routes,
        )


OBSERVER_BREAKERS: Final = frozenset({"oona.publish"})
"""Breakers in front of what serves only observers (Oona's publisher, to the bus other processes read): open, the
run trains on unaffected, so health is DEGRADED, not UNHEALTHY (a liveness probe on /healthz would kill a healthy
run)."""


def assess_health(
    *,
    alerts: Sequence[ActiveAlert],
    slos: Sequence[SloStatus],
    emergency_level: EmergencyLevel,
    open_breakers: Sequence[str] = (),
) -> HealthReport:
    """Overall health: CRITICAL at emergency L4; UNHEALTHY at L3, with an open breaker of training's or an L2 alert
    firing; DEGRADED at L2, with any alert firing, any SLO breached or an observer's breaker open
    (OBSERVER_BREAKERS); else HEALTHY."""
    breached = [slo.name for slo in slos if slo.breached]
    severe = [alert.rule for alert in alerts if alert.level >= EmergencyLevel.L2_ELEVATED]
    training_breakers = [name for name in open_breakers if name not in OBSERVER_BREAKERS]
    if emergency_level >= EmergencyLevel.L4_HALT:
        status = HealthStatus.CRITICAL
    elif emergency_level >= EmergencyLevel.L3_CONSERVATIVE or training_breakers or severe:
        status = HealthStatus.UNHEALTHY
    elif emergency_level >= EmergencyLevel.L2_ELEVATED or alerts or breached or open_breakers:
        status = HealthStatus.DEGRADED
    else:
        status = HealthStatus.HEALTHY
    parts = [f"emergency {emergency_level.name}"]
    if alerts:
        parts.append(f"{len(alerts)} alert(s) firing: {', '.join(alert.rule for alert in alerts)}")
    if breached:
        parts.append(f"SLO breached: {', '.join(breached)}")
    if open_breakers:
        parts.append(f"breaker open: {', '.join(open_breakers)}")
    return HealthReport(
        status=status,
        summary=f"{status.name}: " + "; ".join(parts),
        indicators={
            "emergency_level": emergency_level.name,
            "alerts_active": str(len(alerts)),
            "slos_breached": str(len(breached)),
            "breakers_open": str(len(open_breakers)),
        },
    )
