"""Alert rules fire after `for` consecutive breaches and clear when the condition stops; SLO burn; health levels."""

from __future__ import annotations

import pytest

from actors.nissa.alerts import DEFAULT_RULES, AlertEvaluator, AlertRule, assess_health
from actors.nissa.slo import DEFAULT_SLOS, SloObjective, SloTracker
from esper.config import apply_overrides
from esper.nissa_rules import nissa_rules, nissa_slos
from schemas.config import RunConfig
from schemas.enums import EmergencyLevel, HealthStatus
from schemas.nissa import ActiveAlert, AlertNotice, SloStatus

LATENCY = "tolaria.training.latency_ms"


def _feed(evaluator: AlertEvaluator, metric: str, values: list[float]) -> list[list[tuple[str, bool]]]:
    """Observe and evaluate each value in turn (one second apart); the notices of each evaluation."""
    out = []
    for index, value in enumerate(values):
        evaluator.observe(metric, value, float(index))
        out.append([(n.rule, n.active) for n in evaluator.evaluate(float(index), [metric])])
    return out


def test_the_default_table_is_the_reference_table() -> None:
    table = {rule.name: (rule.metric, rule.condition, rule.for_count, rule.routes) for rule in DEFAULT_RULES}
    assert table == {
        "tamiyo_coverage_low": ("tamiyo.gnn.feature_coverage", "< 0.7", 3, ("slack",)),
        "training_latency_high": (LATENCY, "> 18", 3, ("pagerduty", "slack")),
        "kasmina_isolation_violation": ("kasmina.isolation.violations_total", ">= 3 within 300s", 1, ("pagerduty",)),
        "oona_queue_depth": ("oona.queue.depth", "> 4000", 2, ("slack",)),
        "tezzeret_compile_retry_high": ("tezzeret.compile.retry_count", "> 1", 1, ("email",)),
    }


def test_a_rule_fires_after_for_consecutive_breaches_and_clears_when_the_condition_stops() -> None:
    evaluator = AlertEvaluator(DEFAULT_RULES)
    fired = ("training_latency_high", True)
    cleared = ("training_latency_high", False)
    assert _feed(evaluator, LATENCY, [20, 20, 5, 20, 20, 20, 25, 10]) == [[], [], [], [], [], [fired], [], [cleared]]
    assert evaluator.active() == ()


def test_a_firing_rule_is_listed_with_its_value_and_since() -> None:
    evaluator = AlertEvaluator(DEFAULT_RULES)
    _feed(evaluator, LATENCY, [30, 30, 30, 40])
    (alert,) = evaluator.active()
    assert (alert.rule, alert.value, alert.since_s, alert.breaches, alert.level) == (
        "training_latency_high",
        40,
        2.0,
        4,
        EmergencyLevel.L1_NOTICE,
    )


def test_a_tick_counts_no_new_breach_of_a_value_observed_once() -> None:
    """Timer ticks re-evaluated the last value as a new breach: one slow packet at the end of training fired
    training_latency_high ("three packets running") two ticks later, and its breach count climbed while the endpoint
    stayed up. Only new observations count; two reports of a deep queue fire oona_queue_depth (for 2)."""
    evaluator = AlertEvaluator(DEFAULT_RULES)
    evaluator.observe(LATENCY, 51.0, 0.0)
    assert evaluator.evaluate(0.0, [LATENCY]) == []
    assert [evaluator.evaluate(30.0 * tick) for tick in range(1, 5)] == [[], [], [], []]
    assert evaluator.active() == ()
    evaluator.observe("oona.queue.depth", 5000, 0.0)
    assert evaluator.evaluate(0.0, ["oona.queue.depth"]) == []
    assert evaluator.evaluate(30.0) == []
    evaluator.observe("oona.queue.depth", 5000, 10.0)
    (notice,) = evaluator.evaluate(10.0, ["oona.queue.depth"])  # the second report running fires it
    assert (notice.rule, notice.active, notice.value, notice.breaches) == ("oona_queue_depth", True, 5000, 2)
    assert notice.routes == ("slack",)


def test_rules_without_data_stay_silent_and_nan_never_breaches() -> None:
    evaluator = AlertEvaluator(DEFAULT_RULES)
    assert evaluator.evaluate(0.0) == []
    assert _feed(evaluator, LATENCY, [float("nan")] * 4) == [[], [], [], []]


def test_the_isolation_rule_counts_new_violations_within_five_minutes() -> None:
    evaluator = AlertEvaluator(DEFAULT_RULES)
    metric = "kasmina.isolation.violations_total"
    rule = "kasmina_isolation_violation"
    evaluator.observe(metric, 1, 0.0)
    assert evaluator.evaluate(0.0, [metric]) == []
    evaluator.observe(metric, 2, 100.0)
    assert evaluator.evaluate(100.0, [metric]) == []
    evaluator.observe(metric, 3, 200.0)  # three new within 300 s: fires at once (for 1), at L2
    (notice,) = evaluator.evaluate(200.0, [metric])
    assert (notice.rule, notice.active, notice.value, notice.level) == (rule, True, 3, EmergencyLevel.L2_ELEVATED)
    # No new violations: once the first one is older than 300 s the count is 2 and the alert clears on a tick.
    (cleared,) = evaluator.evaluate(301.0)
    assert (cleared.rule, cleared.active, cleared.value) == (rule, False, 2)


def test_rules_are_validated() -> None:
    with pytest.raises(ValueError, match="for_count must be >= 1"):
        AlertRule("r", "m", ">", 1.0, 0)
    with pytest.raises(ValueError, match="level must be L1_NOTICE or L2_ELEVATED"):
        AlertRule("r", "m", ">", 1.0, 1, level=EmergencyLevel.L3_CONSERVATIVE)
    with pytest.raises(ValueError, match="rule names must be unique"):
        AlertEvaluator([AlertRule("r", "m", ">", 1.0, 1), AlertRule("r", "n", ">", 1.0, 1)])


def test_slo_burn_is_violations_over_samples_within_each_window() -> None:
    tracker = SloTracker(
        [SloObjective("hook", "hook_ms", 18.0)], window_s=1000.0, short_window_s=100.0, burn_threshold=0.4
    )
    # 10 samples at t = 0..9 with 3 violations: burn 0.3 in both windows.
    for t, actual in enumerate([5, 25, 5, 5, 30, 5, 5, 18, 19, 5]):
        tracker.observe("hook_ms", actual, float(t))
    (status,) = tracker.statuses(9.0)
    assert (status.samples, status.violations) == (10, 3)
    assert status.burn == pytest.approx(0.3)
    assert (status.short_samples, status.short_violations) == (10, 3)
    assert not status.breached
    # At t = 150 the short window has dropped them all; two new violations of two samples breach it.
    tracker.observe("hook_ms", 50, 150.0)
    tracker.observe("hook_ms", 60, 151.0)
    (status,) = tracker.statuses(151.0)
    assert (status.short_samples, status.short_violations, status.short_burn) == (2, 2, 1.0)
    assert (status.samples, status.violations) == (12, 5)
    assert status.burn == pytest.approx(5 / 12)
    assert status.breached
    (notice,) = tracker.notices(151.0)
    assert (notice.rule, notice.active) == ("slo_hook", True)
    assert tracker.notices(151.0) == []  # a notice per change, not per call
    # Long after, both windows are empty: burn 0 and the breach clears.
    (status,) = tracker.statuses(5000.0)
    assert (status.samples, status.burn, status.breached) == (0, 0.0, False)
    (notice,) = tracker.notices(5000.0)
    assert notice.active is False


def test_an_slo_alert_fires_and_clears_at_notices_while_its_status_reads_the_burn_now() -> None:
    """active() is the set the notices fired and have not cleared; statuses() reads the burn as of the time asked: once
    the violations age out, the status is clear before the next notices() clears the alert (the docstring said every
    view agreed)."""
    tracker = SloTracker([SloObjective("hook", "hook_ms", 18.0)], window_s=1000.0, short_window_s=100.0)
    tracker.observe("hook_ms", 50.0, 0.0)
    (fired,) = tracker.notices(0.0)
    assert fired.active
    assert [alert.rule for alert in tracker.active(5000.0)] == ["slo_hook"]
    (status,) = tracker.statuses(5000.0)
    assert not status.breached  # ahead of the alerts until notices() runs
    (cleared,) = tracker.notices(5000.0)
    assert not cleared.active
    assert tracker.active(5000.0) == ()


def test_an_slo_burn_over_fewer_than_min_samples_is_no_breach() -> None:
    """One slow sample is a burn of 1.0: it fired an alert on a healthy run."""
    tracker = SloTracker([SloObjective("x", "m", 1.0)], min_samples=3)
    tracker.observe("m", 5.0, 0.0)
    tracker.observe("m", 5.0, 1.0)
    (status,) = tracker.statuses(1.0)
    assert (status.samples, status.burn, status.breached) == (2, 1.0, False)
    assert tracker.notices(1.0) == []
    tracker.observe("m", 0.0, 2.0)  # burn 2/3 over 3 samples
    (fired,) = tracker.notices(2.0)
    assert (fired.rule, fired.active) == ("slo_x", True)
    with pytest.raises(ValueError, match="min_samples"):
        SloTracker(min_samples=0)


def test_slo_windows_stay_bounded() -> None:
    tracker = SloTracker([SloObjective("x", "m", 1.0)], max_samples=4)
    for t, actual in enumerate([5, 5, 0, 0, 0, 0]):
        tracker.observe("m", actual, float(t))
    (status,) = tracker.statuses(6.0)
    assert (status.samples, status.violations) == (4, 0)


def _alert(level: EmergencyLevel) -> ActiveAlert:
    return ActiveAlert(
        rule="r", metric="m", condition="> 1", threshold=1.0, value=2.0, level=level, since_s=0.0, breaches=1
    )


def _slo(breached: bool) -> SloStatus:
    return SloStatus(
        name="hook",
        metric="m",
        objective=1.0,
        window_s=1.0,
        samples=1,
        violations=1,
        burn=1.0,
        short_window_s=1.0,
        short_samples=1,
        short_violations=1,
        short_burn=1.0,
        breached=breached,
    )


@pytest.mark.parametrize(
    ("alerts", "slos", "level", "breakers", "expected"),
    [
        ((), (), EmergencyLevel.L1_NOTICE, (), HealthStatus.HEALTHY),
        ((), (_slo(False),), EmergencyLevel.L1_NOTICE, (), HealthStatus.HEALTHY),
        ((_alert(EmergencyLevel.L1_NOTICE),), (), EmergencyLevel.L1_NOTICE, (), HealthStatus.DEGRADED),
        ((), (_slo(True),), EmergencyLevel.L1_NOTICE, (), HealthStatus.DEGRADED),
        ((), (), EmergencyLevel.L2_ELEVATED, (), HealthStatus.DEGRADED),
        ((_alert(EmergencyLevel.L2_ELEVATED),), (), EmergencyLevel.L1_NOTICE, (), HealthStatus.UNHEALTHY),
        ((), (), EmergencyLevel.L1_NOTICE, ("tamiyo",), HealthStatus.UNHEALTHY),
        # The bus serves observers: with it down the run trains on (it made /healthz answer 503).
        ((), (), EmergencyLevel.L1_NOTICE, ("oona.publish",), HealthStatus.DEGRADED),
        ((), (), EmergencyLevel.L1_NOTICE, ("oona.publish", "tamiyo.inference"), HealthStatus.UNHEALTHY),
        ((), (), EmergencyLevel.L3_CONSERVATIVE, (), HealthStatus.UNHEALTHY),
        ((), (), EmergencyLevel.L4_HALT, (), HealthStatus.CRITICAL),
    ],
)
def test_health_levels(
    alerts: tuple[ActiveAlert, ...],
    slos: tuple[SloStatus, ...],
    level: EmergencyLevel,
    breakers: tuple[str, ...],
    expected: HealthStatus,
) -> None:
    report = assess_health(alerts=alerts, slos=slos, emergency_level=level, open_breakers=breakers)
    assert report.status is expected
    assert report.summary.startswith(expected.name)
    assert report.indicators["emergency_level"] == level.name


def test_the_queue_alert_and_the_slos_follow_their_config_keys() -> None:
    # A fixed 4000 never fired on a bus shedding at queue_depth_high=100; the SLOs measured 45 ms / 10 ms whatever
    # budgets the run was given.
    config = apply_overrides(
        RunConfig(),
        [
            "oona.queue_depth_high=100",
            "oona.queue_depth_recovery=50",
            "tamiyo.decision_budget_ms=200",
            "urza.fetch_budget_ms=25",
            "tolaria.epoch_hook_target_ms=400",
        ],
    )
    evaluator = AlertEvaluator(nissa_rules(config))
    fired = [n for index in range(2) for n in _observe_depth(evaluator, 150.0, float(index))]
    assert ("oona_queue_depth", True) in [(n.rule, n.active) for n in fired]
    objectives = {slo.name: slo.objective for slo in nissa_slos(config)}
    assert objectives == {"epoch_hook_latency": 400.0, "tamiyo_decision_latency": 200.0, "kernel_fetch_latency": 25.0}
    defaults = RunConfig()
    assert (nissa_rules(defaults), nissa_slos(defaults)) == (DEFAULT_RULES, DEFAULT_SLOS)


def _observe_depth(evaluator: AlertEvaluator, depth: float, now_s: float) -> list[AlertNotice]:
    evaluator.observe("oona.queue.depth", depth, now_s)
    return evaluator.evaluate(now_s, ["oona.queue.depth"])


def test_the_step_time_alert_follows_its_config_key() -> None:
    # A fixed 18 ms fired 13 times on a 12.8k-parameter conv model stepping 17-53 ms; no key could raise it.
    config = apply_overrides(RunConfig(), ["nissa.training_latency_high_ms=60"])
    [rule] = [r for r in nissa_rules(config) if r.name == "training_latency_high"]
    assert (rule.threshold, rule.condition) == (60.0, "> 60")
    evaluator = AlertEvaluator(nissa_rules(config))
    quiet = [n for index in range(5) for n in _observe_latency(evaluator, 53.0, float(index))]
    assert quiet == []
    fired = [n for index in range(5, 8) for n in _observe_latency(evaluator, 61.0, float(index))]
    assert [(n.rule, n.active) for n in fired] == [("training_latency_high", True)]
    with pytest.raises(ValueError, match=r"nissa\.training_latency_high_ms"):
        apply_overrides(RunConfig(), ["nissa.training_latency_high_ms=0"])


def _observe_latency(evaluator: AlertEvaluator, latency_ms: float, now_s: float) -> list[AlertNotice]:
    evaluator.observe(LATENCY, latency_ms, now_s)
    return evaluator.evaluate(now_s, [LATENCY])
