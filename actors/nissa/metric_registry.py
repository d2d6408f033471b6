"""Nissa's metric registry: counters and gauges by name and labels, and the kind and help text of every known metric."""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING, Final, final

from schemas.enums import SeedLifecycleStage
from schemas.nissa import MetricKind, MetricSample

if TYPE_CHECKING:
    from collections.abc import Mapping

ISOLATION_VIOLATIONS: Final = "kasmina.isolation.violations_total"
"""The gradient isolation violations the state packet counts (cumulative, hence a counter: the session's total, which
a rollback does not lower and which starts from 0 again after a --resume, as every counter does; each seed's own
total, which Kasmina charges, goes on from the checkpoint's)."""

STAGE_NUMBERS: Final = ", ".join(f"{stage.value} {stage.name.lower()}" for stage in SeedLifecycleStage)
"""The stage numbers, as the gauge's HELP lists them (from the enum: they cannot drift apart)."""

RUN_INFO: Final = "run.info"
"""Always 1, labelled with the run the endpoint serves (``run_id``, ``run_dir``), so scrapers of two runs can tell."""

KNOWN_METRICS: Final[Mapping[str, tuple[MetricKind, str]]] = MappingProxyType(
    {
        RUN_INFO: ("gauge", "Always 1; its labels name the run this endpoint serves (run_id, run_dir)."),
        "tolaria.training.loss": ("gauge", "Mean training loss over the last reporting interval."),
        "tolaria.training.accuracy": ("gauge", "Mean training accuracy over the last reporting interval."),
        "tolaria.training.latency_ms": (
            "gauge",
            "Mean whole training step time over the last reporting interval (data wait, host to device, forward,"
            " backward and optimizer), in milliseconds.",
        ),
        "tolaria.validation.loss": ("gauge", "Validation loss at the last epoch end."),
        "tolaria.validation.accuracy": ("gauge", "Validation accuracy at the last epoch end."),
        "tolaria.epoch_hook.latency_ms": ("gauge", "Epoch-boundary hook latency in milliseconds."),
        "tolaria.epoch_hook.work_ms": (
            "gauge",
            "Epoch-boundary hook latency in milliseconds without its copy of the model and optimizer state.",
        ),
        "tolaria.epochs.total": ("counter", "Epoch ends observed."),
        "tolaria.epoch": ("gauge", "Current epoch."),
        "tolaria.global_step": ("gauge", "Current optimizer step."),
        "tolaria.samples_per_s": ("gauge", "Training throughput in samples per second."),
        "tolaria.parameters.host": ("gauge", "Host model parameter count."),
        "tolaria.parameters.seed": ("gauge", "Parameters held by seeds."),
        "tolaria.emergency.level": ("gauge", "Emergency level, 1 (notice) to 4 (halt)."),
        "tolaria.emergency.halts_total": ("counter", "Emergency signals at L4 (halt)."),
        "tolaria.boundary.stall_ms": ("gauge", "Time the last boundary plan kept training waiting, in ms."),
        "tolaria.boundary.stalls_total": ("counter", "Boundary plans that arrived late (a counted stall)."),
        "tolaria.boundary.ops_total": ("counter", "Seed ops applied at step boundaries, by kind and outcome."),
        "tamiyo.gnn.feature_coverage": ("gauge", "Share of the inputs the state should carry that the GNN was given."),
        # Reported in telemetry packets: without an entry here their HELP was the generic "Reported by <source>."
        "tamiyo.inference.latency_ms": (
            "gauge",
            "Time the controller took to decide on the last state packet, in milliseconds.",
        ),
        "tamiyo.conservative_mode": ("gauge", "1 while the controller is in conservative mode, else 0."),
        "kasmina.kernel.fetch_latency_ms": (
            "gauge",
            "Time the last seed's module took to fetch from the seed source, in milliseconds (0 from the ready cache).",
        ),
        "oona.queue.depth": ("gauge", "Messages waiting on the bus's deepest topic (retained or unacknowledged)."),
        "kasmina.seeds.active": ("gauge", "Seeds alive and not yet fossilized."),
        "kasmina.seeds.by_stage": ("gauge", "Seeds per lifecycle stage."),
        "kasmina.seed.stage": ("gauge", f"Lifecycle stage number of the seed in each slot: {STAGE_NUMBERS}."),
        "kasmina.seed.alpha": ("gauge", "Blend alpha of the seed in each slot."),
        ISOLATION_VIOLATIONS: ("counter", "Gradient isolation violations counted by the trainer so far."),
        "kasmina.seed.transitions_total": ("counter", "Seed lifecycle transitions that took effect, by target stage."),
        "weatherlight.restarts_total": ("counter", "Actor restarts, by child."),
        "runtime.breaker.state": ("gauge", "Circuit breaker state: 0 closed, 1 half-open, 2 open."),
        "telemetry.events_total": ("counter", "Telemetry events received, by name and level."),
        "nissa.ingest.latency_ms": ("gauge", "Time Nissa took to ingest the last message, in ms."),
        "nissa.alerts.active": ("gauge", "Alerts firing now (rules' and SLOs')."),
        "nissa.alerts.fired_total": ("counter", "Alerts fired, by rule (an SLO's is slo_<name>)."),
        "nissa.telemetry.dropped_total": ("counter", "Telemetry Nissa received but could not use."),
        "nissa.messages_total": ("counter", "Messages ingested, by type."),
    }
)
"""Kind and help text of every metric Nissa derives itself and of those the actors report in telemetry packets; a
telemetry metric not named here is a gauge described as "Reported by <source>."."""

Labels = tuple[tuple[str, str], ...]

COUNTERS_FROM_ZERO: Final[tuple[tuple[str, tuple[tuple[str, str], ...]], ...]] = (
    ("tolaria.epochs.total", ()),
    ("tolaria.emergency.halts_total", ()),
    ("tolaria.boundary.stalls_total", ()),
    ("nissa.telemetry.dropped_total", (("reason", "unnamed_metric"),)),
)
"""The counters whose every series is known up front, exposed at 0 from the start: a series that appears only at its
first increment reads as missing (no data), not as none happened, and rate() and increase() miss that first one."""


def _labels(labels: Mapping[str, str] | None) -> Labels:
    return tuple(sorted(labels.items())) if labels else ()


@final
class MetricsRegistry:
    """Counters and gauges by (name, labels), each holding its latest value. Event-loop only; never blocks."""

    def __init__(self) -> None:
        self._values: dict[tuple[str, Labels], float] = {}
        self._kinds: dict[str, MetricKind] = {}
        self._help: dict[str, str] = {}

    def set_gauge(self, name: str, value: float, labels: Mapping[str, str] | None = None, *, help: str = "") -> None:
        """Set a gauge to ``value``."""
        self._declare(name, "gauge", help)
        self._values[(name, _labels(labels))] = float(value)

    def inc(self, name: str, amount: float = 1.0, labels: Mapping[str, str] | None = None) -> None:
        """Add ``amount`` (>= 0) to a counter.

        Raises:
            ValueError: ``amount`` is negative (counters only go up).
        """
        if amount < 0:
            raise ValueError(f"counter {name}: amount must be >= 0, got {amount}")
        self._declare(name, "counter", "")
        key = (name, _labels(labels))
        self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, name: str, labels: Mapping[str, str] | None = None) -> float | None:
        """The current value of one series, or None if it was never set."""
        return self._values.get((name, _labels(labels)))

    def series(self, name: str) -> list[tuple[dict[str, str], float]]:
        """Every series of one metric as (labels, value)."""
        return [(dict(labels), value) for (key, labels), value in self._values.items() if key == name]

    def samples(self) -> tuple[MetricSample, ...]:
        """Every series, sorted by name then labels."""
        return tuple(
            MetricSample(
                name=name,
                value=value,
                kind=self._kinds[name],
                help=self._help.get(name, ""),
                labels=dict(labels),
            )
            for (name, labels), value in sorted(self._values.items())
        )

    def _declare(self, name: str, kind: MetricKind, help: str) -> None:
        if name not in self._kinds:
            known = KNOWN_METRICS.get(name)
            self._kinds[name] = known[0] if known else kind
            # The registry's text first: a caller's is generic ("Reported by tolaria.") and hid it from the scrape.
            self._help[name] = (known[1] if known else "") or help
