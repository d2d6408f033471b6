"""SLO burn: the objectives, their long and short windows, and the alerts they fire; the caller passes the time in."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Final, final

from schemas.enums import EmergencyLevel
from schemas.nissa import ActiveAlert, AlertNotice, SloStatus

if TYPE_CHECKING:
    from collections.abc import Sequence

DAY_S: Final = 86_400.0


@final
@dataclass(frozen=True, slots=True)
class SloObjective:
    """A service-level objective: each new value of ``metric`` is a sample, good if it is <= ``objective``."""

    name: str
    metric: str
    objective: float


DEFAULT_SLOS: Final[tuple[SloObjective, ...]] = (
    SloObjective("epoch_hook_latency", "tolaria.epoch_hook.work_ms", 18.0),
    SloObjective("tamiyo_decision_latency", "tamiyo.inference.latency_ms", 45.0),
    SloObjective("kernel_fetch_latency", "kasmina.kernel.fetch_latency_ms", 10.0),
)
"""Budgets of REFERENCE.md section 1: the 18 ms hook target (the hook's own work, not its copy of the state, as the
hook budget counts it), the 45 ms decision deadline, the 10 ms kernel fetch."""


def slo_objectives(
    *, hook_target_ms: float = 18.0, decision_budget_ms: float = 45.0, fetch_budget_ms: float = 10.0
) -> tuple[SloObjective, ...]:
    """DEFAULT_SLOS with the objectives at the configured target and budgets (``tolaria.epoch_hook_target_ms``,
    ``tamiyo.decision_budget_ms``, ``urza.fetch_budget_ms``): the SLO measures what the run was told to meet."""
    budgets = {
        "epoch_hook_latency": hook_target_ms,
        "tamiyo_decision_latency": decision_budget_ms,
        "kernel_fetch_latency": fetch_budget_ms,
    }
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
