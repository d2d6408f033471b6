"""Pure metric aggregation: the metrics.csv row of an epoch end, and the aggregator that updates the registry.

Metric names are the dotted names of REFERENCE.md section 9 (``tolaria.training.loss``); the exposition turns them
into Prometheus names. Nothing here does I/O or reads a clock: callers pass the time in.
"""

from __future__ import annotations

import math
from types import MappingProxyType
from typing import TYPE_CHECKING, Final, final

from actors.nissa.metric_registry import COUNTERS_FROM_ZERO, ISOLATION_VIOLATIONS, MetricsRegistry
from esper.runtime.emergency_tally import EmergencyTally
from esper.runtime.stage_refusals import RefusalLog, Transition, effect_step
from schemas.enums import BreakerState, EmergencyLevel, SeedLifecycleStage

if TYPE_CHECKING:
    from collections.abc import Sequence

    from esper.runtime.stage_refusals import Refusal
    from schemas.boundary import BoundaryApplied
    from schemas.nissa import LifecycleRestored, SeedStageChanged
    from schemas.runtime import BreakerTransition, ChildRestarted, EmergencySignal
    from schemas.state import SystemStatePacket
    from schemas.telemetry import TelemetryPacket

SlotTransition = Transition
"""A slot's lifecycle transition, in effect from the boundary after optimizer step ``step`` unless the trainer refused
its op there (then from the step it applied it, or never: esper.runtime.stage_refusals)."""

CellValue = float | int | None
EpochRow = dict[str, CellValue]
"""One metrics.csv row by column name (METRICS_COLUMNS order); None is an empty cell."""

_COUNTED_STAGES: Final = tuple(stage for stage in SeedLifecycleStage if stage is not SeedLifecycleStage.UNKNOWN)
ACTIVE_STAGES: Final = frozenset(
    {
        SeedLifecycleStage.GERMINATED,
        SeedLifecycleStage.TRAINING,
        SeedLifecycleStage.BLENDING,
        SeedLifecycleStage.SHADOWING,
        SeedLifecycleStage.PROBATIONARY,
    }
)
"""Stages in which a seed is alive but not yet part of the host (``kasmina.seeds.active`` counts them)."""

METRICS_COLUMNS: Final[tuple[str, ...]] = (
    "epoch",
    "step",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "test_loss",
    "test_accuracy",
    "data_wait_ms",
    "host_to_device_ms",
    "forward_ms",
    "backward_ms",
    "optimizer_ms",
    "step_ms",
    "hook_latency_ms",
    "samples_per_s",
    "learning_rate",
    "host_parameters",
    "seed_parameters",
    "seeds_active",
    *(f"seeds_{stage.name.lower()}" for stage in _COUNTED_STAGES),
    "isolation_violations",
    "emergency_level",
    "wall_time_s",
)
"""The metrics.csv header. test_loss / test_accuracy stay empty until the state packet carries test figures."""

_BREAKER_VALUES: Final = MappingProxyType(
    {BreakerState.CLOSED: 0.0, BreakerState.HALF_OPEN: 1.0, BreakerState.OPEN: 2.0}
)


def epoch_row(
    packet: SystemStatePacket, *, wall_time_s: float, stages: Sequence[SeedLifecycleStage] | None = None
) -> EpochRow:
    """The metrics.csv row of an epoch-end packet (one with validation figures); ``wall_time_s`` is run time so far.

    Raises:
        ValueError: the packet carries no validation figures (it is not an epoch end).
    """
    if packet.validation_loss is None:
        raise ValueError(f"packet at step {packet.global_step} has no validation_loss: not an epoch end")
    known = [seed.stage for seed in packet.seed_states] if stages is None else list(stages)
    # The epoch's own timings and throughput (the packet's are its last interval's: 4 of 20 steps).
    timings = packet.timings if packet.epoch_timings is None else packet.epoch_timings
    samples_per_s = packet.samples_per_s if packet.epoch_samples_per_s is None else packet.epoch_samples_per_s
    row: EpochRow = {
        "epoch": packet.epoch + 1,  # counted from 1, as the console, the summary and the report count epochs
        "step": packet.global_step,
        "train_loss": packet.training_loss if packet.epoch_training_loss is None else packet.epoch_training_loss,
        "train_accuracy": (
            packet.training_accuracy if packet.epoch_training_accuracy is None else packet.epoch_training_accuracy
        ),
        "val_loss": packet.validation_loss,
        "val_accuracy": packet.validation_accuracy,
        "test_loss": None,
        "test_accuracy": None,
        "data_wait_ms": timings.data_wait_ms,
        "host_to_device_ms": timings.host_to_device_ms,
        "forward_ms": timings.forward_ms,
        "backward_ms": timings.backward_ms,
        "optimizer_ms": timings.optimizer_ms,
        "step_ms": timings.step_ms,
        "hook_latency_ms": packet.hook_latency_ms,
        "samples_per_s": samples_per_s,
        # The rate the optimizer steps with there (what Lightning's LearningRateMonitor logs), not the schedule's base.
        "learning_rate": packet.learning_rate if (lr := packet.effective_learning_rate) is None else lr,
        "host_parameters": packet.host_parameters,
        "seed_parameters": packet.seed_parameters,
        "seeds_active": sum(1 for stage in known if stage in ACTIVE_STAGES),
    }
    for stage in _COUNTED_STAGES:
        row[f"seeds_{stage.name.lower()}"] = sum(1 for seen in known if seen is stage)
    row["isolation_violations"] = packet.isolation_violations
    row["emergency_level"] = int(packet.emergency_level)
    row["wall_time_s"] = round(wall_time_s, 3)
    assert tuple(row) == METRICS_COLUMNS, "epoch_row out of step with METRICS_COLUMNS"
    return row


@final
class MetricsAggregator:
    """Turns Nissa's inputs into registry updates and epoch rows. Each ``observe_*`` returns the metric names whose
    value changed, so the caller evaluates only the alert rules on those metrics."""

    def __init__(
        self,
        *,
        last_epoch: int | None = None,
        transitions: Sequence[SlotTransition] | None = None,
        refusals: Sequence[Refusal] = (),
    ) -> None:
        """Args: last_epoch: the index (from 0) of the last epoch already in metrics.csv (after a restart); its row is
        not produced again. transitions: the slot transitions that stand from before this aggregator (a resumed run's
        earlier sessions, whose lifecycle replay reports nothing; a restarted Nissa's run so far), in order.
        refusals: the stage ops the trainer refused that stand from before this aggregator (see transitions)."""
        self.registry = MetricsRegistry()
        for name, labels in COUNTERS_FROM_ZERO:
            self.registry.inc(name, 0.0, dict(labels))
        self.last_epoch = last_epoch
        self.last_row: EpochRow | None = None
        # Each slot's stage as Kasmina's lifecycle reported it: the packet's view is Tolaria's slot mode, which has no
        # GERMINATED, PROBATIONARY, CULLED or EMBARGOED (a probationary seed's slot reads as SHADOWING). Only the
        # transitions in effect at the packet's step count: each is reported when decided, command_lag_steps ahead,
        # and one whose op the trainer refused (at L3) takes effect when a receipt says it applied it, or never.
        self._lifecycle: dict[str, SeedLifecycleStage] = {}
        # Every transition that stands, in the order reported, so that a restore of the lifecycle can take back the
        # ones it undid.
        self._standing: list[SlotTransition] = [Transition(*t) for t in transitions or ()]
        # Those reported to this aggregator that have not taken effect yet: the transition counter counts each once it
        # does (one planned after the run's last step, or refused and never applied, never does).
        self._uncounted: list[SlotTransition] = []
        self._refusals = RefusalLog(refusals)
        # The halts counted: a halt at a step already counted (the signal delivered again) is the same halt.
        self._halts = EmergencyTally()

    def _stages(self, packet: SystemStatePacket) -> list[SeedLifecycleStage]:
        # An epoch-end packet is sent after the plans due at its step are applied (their receipts before it); one
        # inside an epoch before them.
        self._apply_due(packet.global_step if packet.epoch_progress >= 1.0 else packet.global_step - 1, count=True)
        return [self._lifecycle.get(seed.slot, seed.stage) for seed in packet.seed_states]

    def _apply_due(self, step: int, *, count: bool = False) -> None:
        """Each slot's stage as the standing transitions in effect at ``step`` leave it, in the order reported;
        ``count``: count those of this aggregator's that took effect by then."""
        refusals = self._refusals.refusals()
        lifecycle: dict[str, SeedLifecycleStage] = {}
        for slot, stage, planned, seed_id in self._standing:
            at = effect_step(seed_id, stage, planned, refusals)
            if at is not None and at <= step:
                lifecycle[slot] = stage
        self._lifecycle = lifecycle
        if not count:
            return
        waiting: list[SlotTransition] = []
        for transition in self._uncounted:
            at = effect_step(transition.seed_id, transition.stage, transition.step, refusals)
            if at is not None and at <= step:
                self.registry.inc("kasmina.seed.transitions_total", labels={"to_stage": transition.stage.name.lower()})
            else:
                waiting.append(transition)
        self._uncounted = waiting

    def observe_state(self, packet: SystemStatePacket, *, wall_time_s: float) -> tuple[EpochRow | None, list[str]]:
        """Update the gauges from a state packet; returns (the epoch row if this packet ends a new epoch, names)."""
        reg = self.registry
        timings = packet.timings
        stages = self._stages(packet)
        updates: dict[str, float] = {
            "tolaria.training.loss": packet.training_loss,
            "tolaria.training.accuracy": packet.training_accuracy,
            "tolaria.training.latency_ms": timings.step_ms,
            "tolaria.epoch": packet.epoch + 1,  # the epoch in progress or just ended, counted from 1
            "tolaria.global_step": packet.global_step,
            "tolaria.samples_per_s": packet.samples_per_s,
            "tolaria.parameters.host": packet.host_parameters,
            "tolaria.parameters.seed": packet.seed_parameters,
            "tolaria.emergency.level": int(packet.emergency_level),
            ISOLATION_VIOLATIONS: packet.isolation_violations,
            "kasmina.seeds.active": sum(1 for stage in stages if stage in ACTIVE_STAGES),
        }
        if packet.epoch_progress >= 1.0:
            # Once per epoch: every packet carries the last epoch end's hook time, and the SLO counts each update.
            updates["tolaria.epoch_hook.latency_ms"] = packet.hook_latency_ms
            # What the hook budget and the SLO judge: the state copy grows with the model and cannot be skipped.
            updates["tolaria.epoch_hook.work_ms"] = max(0.0, packet.hook_latency_ms - packet.hook_capture_ms)
        if packet.validation_loss is not None:
            updates["tolaria.validation.loss"] = packet.validation_loss
        if packet.validation_accuracy is not None:
            updates["tolaria.validation.accuracy"] = packet.validation_accuracy
        for name, value in updates.items():
            reg.set_gauge(name, value)
        for stage in _COUNTED_STAGES:
            count = sum(1 for seen in stages if seen is stage)
            reg.set_gauge("kasmina.seeds.by_stage", count, {"stage": stage.name.lower()})
        for seed, current in zip(packet.seed_states, stages, strict=True):
            reg.set_gauge("kasmina.seed.stage", int(current), {"slot": seed.slot})
            reg.set_gauge("kasmina.seed.alpha", seed.alpha, {"slot": seed.slot})
        names = list(updates)
        row = self._row(packet, stages, wall_time_s)
        if row is None:
            return None, names
        reg.inc("tolaria.epochs.total")
        return row, [*names, "tolaria.epochs.total"]

    def missed_row(self, packet: SystemStatePacket, *, wall_time_s: float) -> EpochRow | None:
        """The row of an epoch-end packet Nissa never handled (a resume's: the run was killed after the epoch's
        checkpoint, before its row), as observe_state makes it, or None when it ends no new epoch. No gauge changes:
        the packet, Kasmina's journaled copy, has no interval timings, and the live packets set them again."""
        return self._row(packet, self._stages(packet), wall_time_s)

    def _row(self, packet: SystemStatePacket, stages: list[SeedLifecycleStage], wall_time_s: float) -> EpochRow | None:
        if packet.validation_loss is None or (self.last_epoch is not None and packet.epoch <= self.last_epoch):
            return None
        row = epoch_row(packet, wall_time_s=wall_time_s, stages=stages)
        self.last_epoch = packet.epoch
        self.last_row = row
        return row

    def observe_telemetry(self, packet: TelemetryPacket) -> list[str]:
        """Gauges from the packet's metric points (attributes become labels); count its events by name and level."""
        names: list[str] = []
        for point in packet.metrics:
            if not point.name:
                self.registry.inc("nissa.telemetry.dropped_total", labels={"reason": "unnamed_metric"})
                continue
            self.registry.set_gauge(point.name, point.value, point.attributes, help=f"Reported by {packet.source}.")
            names.append(point.name)
        for event in packet.events:
            self.registry.inc("telemetry.events_total", labels={"name": event.name, "level": event.level.name.lower()})
        return names

    def observe_stage(self, event: SeedStageChanged) -> list[str]:
        """A transition, reported when decided: its stage counts in the packets from the step it takes effect on, and
        the transition counter counts it then."""
        transition = Transition(event.slot, event.to_stage, event.step, event.seed_id)
        self._standing.append(transition)
        self._uncounted.append(transition)
        return []

    def observe_training_restored(self, step: int) -> list[str]:
        """The trainer went back to ``step`` (a rollback, a restart, a resume): the step gauge said where it had been
        until the next packet (or emergency signal, which names the step the run is at)."""
        self.registry.set_gauge("tolaria.global_step", step)
        return ["tolaria.global_step"]

    def observe_restored(self, restored: LifecycleRestored) -> list[str]:
        """The lifecycle went back to an earlier boundary (a rollback): each slot's stage is again the one the
        transitions that still stand left it in at that boundary (without this, a seed germinated after the rollback's
        state counted in metrics.csv until its slot's next transition); those decided before it and due after it are
        pending again, and so are the stage ops the trainer refused after it. The transition counter keeps what
        happened."""
        self._standing = [t for t in self._standing if not restored.undoes(t.step)]
        self._uncounted = [t for t in self._uncounted if not restored.undoes(t.step)]
        self._refusals.restore(restored.step)
        self._apply_due(restored.step)
        for slot, stage in self._lifecycle.items():
            self.registry.set_gauge("kasmina.seed.stage", int(stage), {"slot": slot})
        return ["kasmina.seed.stage"]

    def observe_boundary(self, applied: BoundaryApplied) -> list[str]:
        """A boundary's receipt: the stall, each op's outcome, and the stage ops the trainer refused or applied late
        (a refused stage change takes effect when a receipt applies it)."""
        self._refusals.receipt(applied)
        reg = self.registry
        reg.set_gauge("tolaria.boundary.stall_ms", applied.stall_ms)
        if applied.stall_ms > 0:
            reg.inc("tolaria.boundary.stalls_total")
        for outcome in applied.outcomes:
            reg.inc(
                "tolaria.boundary.ops_total", labels={"kind": outcome.kind, "applied": str(outcome.applied).lower()}
            )
        return ["tolaria.boundary.stall_ms"]

    def observe_emergency(self, signal: EmergencySignal) -> list[str]:
        """The level, and the step the signal was raised at: an L4 halt comes after the last packet (a halt after a
        rollback to step 0 left the step gauge at 0 while the run had trained on to step 4)."""
        self.registry.set_gauge("tolaria.emergency.level", int(signal.level))
        if signal.step is not None:
            self.registry.set_gauge("tolaria.global_step", signal.step)
        if signal.level >= EmergencyLevel.L4_HALT and self._halts.add_signal(signal):
            self.registry.inc("tolaria.emergency.halts_total")
        return (
            ["tolaria.emergency.level"] if signal.step is None else ["tolaria.emergency.level", "tolaria.global_step"]
        )

    def observe_breaker(self, transition: BreakerTransition) -> list[str]:
        value = _BREAKER_VALUES[transition.to_state]
        self.registry.set_gauge("runtime.breaker.state", value, {"breaker": transition.breaker})
        return ["runtime.breaker.state"]

    def observe_restart(self, restarted: ChildRestarted) -> list[str]:
        self.registry.inc("weatherlight.restarts_total", labels={"child": restarted.child})
        return ["weatherlight.restarts_total"]

    def open_breakers(self) -> list[str]:
        """Names of the breakers whose last reported state is open."""
        is_open = _BREAKER_VALUES[BreakerState.OPEN]
        return [
            labels["breaker"] for labels, value in self.registry.series("runtime.breaker.state") if value == is_open
        ]

    def final_figures(self) -> dict[str, float]:
        """The last epoch row's losses and accuracies (finite ones only), for the run summary."""
        row = self.last_row
        if row is None:
            return {}
        figures: dict[str, float] = {}
        for key in ("epoch", "step", "train_loss", "train_accuracy", "val_loss", "val_accuracy"):
            value = row[key]
            if value is not None and math.isfinite(value):
                figures[key] = float(value)
        return figures
