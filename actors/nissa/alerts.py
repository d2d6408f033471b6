"""Alert rules, SLO burn and overall health: pure state machines that read the time their caller passes in.

A rule is evaluated each time new data for its metric arrives and on every tick (EvaluateAlerts, every
``alert_eval_interval_s``). It fires after ``for_count`` consecutive breaching evaluations and clears at the first
evaluation that does not breach. A windowed rule (``window_s``) reads its metric as a cumulative count and compares
the increase within the last ``window_s`` seconds. Notices carry the emergency level the alert asks for: L1 for a
notice, L2 for a budget breach; Nissa never raises the level itself (Tolaria owns it).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Final, Literal, final

from actors.nissa.metrics import ISOLATION_VIOLATIONS
from schemas.enums import EmergencyLevel, HealthStatus
from schemas.nissa import ActiveAlert, AlertNotice, HealthReport, SloStatus

if TYPE_CHECKING:
    from collections.abc import Collection, Sequence

Comparison = Literal["<", ">", ">="]

DAY_S: Final = 86_400.0


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
    *, isolation_violations: int = 3, isolation_window_s: float = 300.0, queue_depth_high: int = 4000
) -> tuple[AlertRule, ...]:
    """DEFAULT_RULES with the isolation rule's threshold and window as configured (``kasmina.isolation_alert_*``) and
    the queue-depth rule's threshold at ``oona.queue_depth_high`` (a fixed 4000 could never fire on a bus shedding at
    a lower one)."""

    def configured(rule: AlertRule) -> AlertRule:
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


@final
@dataclass(frozen=True, slots=True)
class SloObjective:
    """A service-level objective: each new value of ``metric`` is a sample, good if it is <= ``objective``."""

    name: str
    metric: str
    objective: float


DEFAULT_SLOS: Final[tuple[SloObjective, ...]] = (
    SloObjective("epoch_hook_latency", "tolaria.epoch_hook.latency_ms", 18.0),
    SloObjective("tamiyo_decision_latency", "tamiyo.inference.latency_ms", 45.0),
    SloObjective("kernel_fetch_latency", "kasmina.kernel.fetch_latency_ms", 10.0),
)
"""Budgets of REFERENCE.md section 1: the 18 ms hook target, the 45 ms decision deadline, the 10 ms kernel fetch."""


def slo_objectives(*, decision_budget_ms: float = 45.0, fetch_budget_ms: float = 10.0) -> tuple[SloObjective, ...]:
    """DEFAULT_SLOS with the decision and kernel-fetch objectives at the configured budgets
    (``tamiyo.decision_budget_ms``, ``urza.fetch_budget_ms``): the SLO measures what the run was told to meet."""
    budgets = {"tamiyo_decision_latency": decision_budget_ms, "kernel_fetch_latency": fetch_budget_ms}
    return tuple(replace(slo, objective=budgets[slo.name]) if slo.name in budgets else slo for slo in DEFAULT_SLOS)


@final
class _Window:
    """Samples within the last ``window_s`` seconds, with a running count of violations; bounded in length."""

    __slots__ = ("samples", "violations", "window_s")

    def __init__(self, window_s: float, max_samples: int) -> None:
        self.window_s = window_s
        self.samples: deque[tuple[float, bool]] = deque(maxlen=max_samples)
        self.violations = 0

    def add(self, now_s: float, good: bool) -> None:
        if len(self.samples) == self.samples.maxlen and not self.samples[0][1]:
            self.violations -= 1  # the append below pushes the oldest out
        self.samples.append((now_s, good))
        if not good:
            self.violations += 1

    def prune(self, now_s: float) -> None:
        horizon = now_s - self.window_s
        while self.samples and self.samples[0][0] < horizon:
            _, good = self.samples.popleft()
            if not good:
                self.violations -= 1

    @property
    def burn(self) -> float:
        return self.violations / len(self.samples) if self.samples else 0.0


@final
class SloTracker:
    """SLO burn over a long window (30 days by default) and a short one (24 h): burn = violations / samples.

    An SLO is breached when either burn reaches ``burn_threshold`` over at least ``min_samples`` samples of that
    window (one slow kernel fetch, the only sample, was a burn of 1 and fired an alert on a healthy run). Each window
    keeps at most ``max_samples`` samples (the oldest go first), so memory stays bounded on long runs. Event-loop only;
    never blocks.
    """

    def __init__(
        self,
        objectives: Sequence[SloObjective] = DEFAULT_SLOS,
        *,
        window_s: float = 30 * DAY_S,
        short_window_s: float = DAY_S,
        burn_threshold: float = 0.4,
        min_samples: int = 1,
        max_samples: int = 65_536,
    ) -> None:
        if not window_s > 0 or not short_window_s > 0:
            raise ValueError(f"window_s and short_window_s must be > 0, got {window_s}, {short_window_s}")
        if not 0 < burn_threshold <= 1:
            raise ValueError(f"burn_threshold must be in (0, 1], got {burn_threshold}")
        if max_samples < 1 or min_samples < 1:
            raise ValueError(f"min_samples and max_samples must be >= 1, got {min_samples}, {max_samples}")
        self._min_samples = min_samples
        self._objectives = tuple(objectives)
        self._threshold = burn_threshold
        self._long = {o.name: _Window(window_s, max_samples) for o in self._objectives}
        self._short = {o.name: _Window(short_window_s, max_samples) for o in self._objectives}
        self._breached: dict[str, bool] = {o.name: False for o in self._objectives}
        self._since_s: dict[str, float] = {}
        self._metrics = frozenset(o.metric for o in self._objectives)

    def watches(self, metric: str) -> bool:
        return metric in self._metrics

    def observe(self, metric: str, actual: float, now_s: float) -> None:
        """Record one sample of every objective on ``metric``; NaN counts as a violation."""
        for objective in self._objectives:
            if objective.metric == metric:
                good = not math.isnan(actual) and actual <= objective.objective
                self._long[objective.name].add(now_s, good)
                self._short[objective.name].add(now_s, good)

    def statuses(self, now_s: float) -> tuple[SloStatus, ...]:
        """Every objective's burn over both windows as of ``now_s``."""
        result: list[SloStatus] = []
        for objective in self._objectives:
            long, short = self._long[objective.name], self._short[objective.name]
            long.prune(now_s)
            short.prune(now_s)
            result.append(
                SloStatus(
                    name=objective.name,
                    metric=objective.metric,
                    objective=objective.objective,
                    window_s=long.window_s,
                    samples=len(long.samples),
                    violations=long.violations,
                    burn=long.burn,
                    short_window_s=short.window_s,
                    short_samples=len(short.samples),
                    short_violations=short.violations,
                    short_burn=short.burn,
                    breached=self._burning(long) or self._burning(short),
                )
            )
        return tuple(result)

    def _burning(self, window: _Window) -> bool:
        return len(window.samples) >= self._min_samples and window.burn >= self._threshold

    @property
    def rules(self) -> tuple[str, ...]:
        """The alert rule name of each objective (``slo_<name>``), in order."""
        return tuple(slo_rule(o.name) for o in self._objectives)

    def notices(self, now_s: float) -> list[AlertNotice]:
        """Fire/clear notices (rule ``slo_<name>``, L1) for objectives whose breached state changed since last call."""
        notices: list[AlertNotice] = []
        for status in self.statuses(now_s):
            if status.breached == self._breached[status.name]:
                continue
            self._breached[status.name] = status.breached
            if status.breached:
                self._since_s[status.name] = now_s
            else:
                self._since_s.pop(status.name, None)
            notices.append(
                AlertNotice(
                    rule=slo_rule(status.name),
                    metric=status.metric,
                    condition=self._condition,
                    threshold=self._threshold,
                    value=max(status.burn, status.short_burn),
                    active=status.breached,
                    level=EmergencyLevel.L1_NOTICE,
                    breaches=status.violations,
                    at_s=now_s,
                    routes=("log",),
                )
            )
        return notices

    def active(self, now_s: float) -> tuple[ActiveAlert, ...]:
        """The SLO alerts firing (fired by notices() and not cleared by it since), in objective order, with the burn
        as of ``now_s``: the set the fire/clear notices describe, so the alert list, the alert_fired and alert_cleared
        events and the summary's alerts_fired agree. A status's ``breached`` (statuses()) is the burn as of ``now_s``
        and may run ahead of this set until the next notices() (Nissa calls it after each metric update and at each
        alert tick): a window aged below the threshold since reads as not breached while its alert still fires, and a
        window aged into a breach as breached before its alert fires."""
        alerts: list[ActiveAlert] = []
        for status in self.statuses(now_s):
            since_s = self._since_s.get(status.name)
            if since_s is None:
                continue
            alerts.append(
                ActiveAlert(
                    rule=slo_rule(status.name),
                    metric=status.metric,
                    condition=self._condition,
                    threshold=self._threshold,
                    value=max(status.burn, status.short_burn),
                    level=EmergencyLevel.L1_NOTICE,
                    since_s=since_s,
                    breaches=status.violations,
                )
            )
        return tuple(alerts)

    @property
    def _condition(self) -> str:
        return f"burn >= {self._threshold:g}"


def slo_rule(name: str) -> str:
    """The alert rule name of the SLO ``name``: ``slo_<name>``."""
    return f"slo_{name}"


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
