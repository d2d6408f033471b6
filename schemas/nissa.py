"""Nissa's contracts: the seed lifecycle event, alert notices, the observability snapshot and Nissa's own requests.

The lifecycle event contract (what ``python -m esper.report`` reads back from events.jsonl):

    one JSON line whose ``event`` is ``seed_stage`` (SEED_STAGE_EVENT; ``seed_stage_changed``, the name the
    StructlogSink gives a SeedStageChanged message, is read the same way) with the fields
    ``slot`` (str), ``seed_id`` (str or null), ``blueprint_id`` (str or null), ``from_stage`` and ``to_stage``
    (a SeedLifecycleStage: its number, or its name in any case), ``step`` (int, the optimizer step at whose boundary
    the transition's plan takes effect), and optionally ``epoch`` (int) and ``reason`` (str).

    The event is written when the transition is planned. A stage change the trainer refuses at that step (at L3:
    adaptation paused) takes effect later: Kasmina's ``seed_op_failed`` telemetry event names the seed and the step
    refused (``attributes.step``), its ``seed_op_retried`` event the step it took effect (``attributes.step``) and the
    step first planned (``attributes.planned_step``); the report draws the seed's stage changes from that step on at
    the step they took effect, as the summary and Nissa count them (esper.runtime.stage_refusals).

Kasmina emits a SeedStageChanged per transition to the run's EventSink, which writes that line, and the composition
root forwards the same message to Nissa.
"""

from __future__ import annotations

from typing import Final, Literal

from msgspec import field

from schemas.base import Message, Record
from schemas.constraints import NonEmptyStr, NonNegFloat, NonNegInt
from schemas.enums import EmergencyLevel, HealthStatus, SeedLifecycleStage

SEED_STAGE_EVENT: Final = "seed_stage"
"""The events.jsonl event name of a seed lifecycle transition (fields in the module docstring)."""

SEED_STAGE_EVENT_NAMES: Final = frozenset({SEED_STAGE_EVENT, "seed_stage_changed"})
"""Every event name the report accepts as a lifecycle transition."""

MetricKind = Literal["counter", "gauge"]


class SeedStageChanged(Message, frozen=True):
    """A seed moved from one lifecycle stage to another, planned to take effect at the boundary after optimizer step
    ``step`` (see the module docstring for a change the trainer refuses there)."""

    slot: str
    from_stage: SeedLifecycleStage
    to_stage: SeedLifecycleStage
    step: NonNegInt
    seed_id: str | None = None
    blueprint_id: str | None = None
    epoch: NonNegInt = 0
    reason: str = ""
    run_id: str | None = None  # set by the run's event sink: runs publishing on one Redis prefix are told apart


class LifecycleRestored(Message, frozen=True):
    """Kasmina's seed lifecycle went back to the boundary of optimizer step ``step`` (a rollback, a trainer restart,
    a resume): the SeedStageChanged it reported before this with a ``step`` later than ``step + lag_steps`` (each
    carries the step its plan takes effect, ``lag_steps`` after the boundary that decided it) are undone; those that
    happen again are reported again, after this."""

    run_id: NonEmptyStr
    step: NonNegInt
    lag_steps: NonNegInt

    def undoes(self, transition_step: int) -> bool:
        """Whether a transition reported before this one, taking effect at ``transition_step``, is undone."""
        return transition_step - self.lag_steps > self.step


class EvaluateAlerts(Message, frozen=True):
    """Evaluate every alert rule now against the latest values (the periodic tick; ``seq`` counts ticks)."""

    seq: NonNegInt = 0


class QueryNissa(Message, frozen=True):
    """Ask Nissa for a NissaSnapshot; ``include_metrics`` False leaves the metric samples out (a cheaper reply)."""

    include_metrics: bool = True


class AlertNotice(Message, frozen=True):
    """An alert rule fired (``active``) or cleared; ``level`` is the emergency level it asks for (L1 or L2).

    ``value`` is the metric's value at the evaluation that changed the alert, ``breaches`` how many consecutive
    evaluations breached, ``at_s`` the clock time of that evaluation in seconds.
    """

    rule: str
    metric: str
    condition: str
    threshold: float
    value: float
    active: bool
    level: EmergencyLevel
    breaches: NonNegInt
    at_s: float
    routes: tuple[str, ...] = ()


class ActiveAlert(Record, frozen=True):
    """An alert that is firing now; ``since_s`` is the clock time at which it fired."""

    rule: str
    metric: str
    condition: str
    threshold: float
    value: float
    level: EmergencyLevel
    since_s: float
    breaches: NonNegInt


class SloStatus(Record, frozen=True):
    """One service-level objective: a sample is good if actual <= objective; burn = violations / samples.

    ``burn`` covers the last ``window_s`` seconds, ``short_burn`` the last ``short_window_s`` (24 h by default);
    ``breached`` is true when either reaches the burn threshold.
    """

    name: str
    metric: str
    objective: float
    window_s: NonNegFloat
    samples: NonNegInt
    violations: NonNegInt
    burn: NonNegFloat
    short_window_s: NonNegFloat
    short_samples: NonNegInt
    short_violations: NonNegInt
    short_burn: NonNegFloat
    breached: bool


class HealthReport(Record, frozen=True):
    """Overall health with a one-line summary and the indicators it was judged on (name -> short value)."""

    status: HealthStatus
    summary: str
    indicators: dict[str, str] = field(default_factory=dict)


class MetricSample(Record, frozen=True):
    """The current value of one metric series; ``name`` is the dotted Esper name (``tolaria.training.loss``)."""

    name: str
    value: float
    kind: MetricKind
    help: str = ""
    labels: dict[str, str] = field(default_factory=dict)


class NissaSnapshot(Record, frozen=True):
    """Nissa's answer to QueryNissa: health, active alerts, SLOs, metrics and what the metrics file holds.

    ``last_epoch`` is the last epoch written to metrics.csv (None before the first); ``final_figures`` the figures of
    that row by column name (losses, accuracies); ``endpoint`` the ``host:port`` of the HTTP endpoint, if serving.
    """

    health: HealthReport
    alerts: tuple[ActiveAlert, ...] = ()
    slos: tuple[SloStatus, ...] = ()
    metrics: tuple[MetricSample, ...] = ()
    epochs_written: NonNegInt = 0
    last_epoch: NonNegInt | None = None
    final_figures: dict[str, float] = field(default_factory=dict)
    endpoint: str | None = None
