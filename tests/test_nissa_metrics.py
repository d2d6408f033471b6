"""Metric aggregation: epoch rows only at epoch ends, registry counters and gauges, telemetry and lifecycle input."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import msgspec
import pytest

from actors.nissa.metric_registry import COUNTERS_FROM_ZERO, KNOWN_METRICS, MetricsRegistry
from actors.nissa.metrics import METRICS_COLUMNS, MetricsAggregator, epoch_row
from actors.nissa.prometheus import render_exposition
from actors.oona.publisher import DEPTH_METRIC as OONA_DEPTH_METRIC
from actors.tamiyo.conservative import GAUGE_NAME as CONSERVATIVE_GAUGE
from esper.run_history import earlier_tally, slot_transitions_at
from esper.runtime.stage_refusals import Transition
from schemas.boundary import BoundaryApplied, OpOutcome
from schemas.config import RunConfig, TolariaConfig
from schemas.domain_enums import TelemetryLevel
from schemas.enums import BreakerState, EmergencyLevel, SeedLifecycleStage
from schemas.nissa import LifecycleRestored, SeedStageChanged
from schemas.runtime import BreakerTransition, ChildRestarted, EmergencySignal
from schemas.telemetry import MetricPoint, TelemetryEvent, TelemetryPacket
from tests.nissa_packets import packet, seed

if TYPE_CHECKING:
    from pathlib import Path

    from schemas.boundary import SeedOpKind


def test_rows_come_only_from_epoch_ends_once_per_epoch() -> None:
    aggregator = MetricsAggregator()
    sequence = [
        packet(10),
        packet(20),
        packet(32, epoch=0, val=0.9),
        packet(40, epoch=1),
        packet(64, epoch=1, val=0.8),
        packet(64, epoch=1, val=0.8),  # a repeated epoch end (a re-sent packet) writes no second row
        packet(70, epoch=2),
    ]
    rows = [row for p in sequence if (row := aggregator.observe_state(p, wall_time_s=float(p.global_step))[0])]
    assert [(row["epoch"], row["step"], row["val_loss"]) for row in rows] == [(1, 32, 0.9), (2, 64, 0.8)]
    assert aggregator.registry.value("tolaria.epochs.total") == 2.0
    assert aggregator.last_epoch == 1
    assert aggregator.final_figures()["val_loss"] == 0.8


def test_a_resumed_aggregator_skips_epochs_already_written() -> None:
    aggregator = MetricsAggregator(last_epoch=3)
    assert aggregator.observe_state(packet(128, epoch=3, val=0.5), wall_time_s=1.0)[0] is None
    row, _ = aggregator.observe_state(packet(160, epoch=4, val=0.4), wall_time_s=2.0)
    assert row is not None
    assert row["epoch"] == 5  # the row counts epochs from 1; the aggregator indexes them from 0


def test_epoch_row_has_every_column_and_counts_seeds_per_stage() -> None:
    seeds = (
        seed("a", SeedLifecycleStage.TRAINING),
        seed("b", SeedLifecycleStage.BLENDING),
        seed("c", SeedLifecycleStage.FOSSILIZED),
        seed("d", SeedLifecycleStage.DORMANT),
    )
    row = epoch_row(packet(100, epoch=2, val=0.7, seeds=seeds, level=EmergencyLevel.L2_ELEVATED), wall_time_s=12.3456)
    assert tuple(row) == METRICS_COLUMNS
    assert row["seeds_active"] == 2
    assert (row["seeds_training"], row["seeds_blending"], row["seeds_fossilized"], row["seeds_dormant"]) == (1, 1, 1, 1)
    assert row["seeds_culled"] == 0
    assert row["emergency_level"] == 2
    assert row["wall_time_s"] == 12.346
    assert row["test_loss"] is None
    assert row["step_ms"] == 7.75
    assert row["seed_parameters"] == 256


def test_epoch_row_refuses_a_packet_without_validation() -> None:
    with pytest.raises(ValueError, match="no validation_loss"):
        epoch_row(packet(5), wall_time_s=0.0)


def test_registry_counters_only_go_up_and_samples_are_sorted_with_help() -> None:
    registry = MetricsRegistry()
    registry.inc("nissa.messages_total", labels={"type": "B"})
    registry.inc("nissa.messages_total", 2, labels={"type": "A"})
    registry.set_gauge("tolaria.training.loss", 0.5)
    with pytest.raises(ValueError, match="amount must be >= 0"):
        registry.inc("nissa.messages_total", -1)
    samples = registry.samples()
    assert [(s.name, s.labels, s.value, s.kind) for s in samples] == [
        ("nissa.messages_total", {"type": "A"}, 2.0, "counter"),
        ("nissa.messages_total", {"type": "B"}, 1.0, "counter"),
        ("tolaria.training.loss", {}, 0.5, "gauge"),
    ]
    assert samples[2].help.startswith("Mean training loss")


def test_a_known_metric_reported_by_telemetry_keeps_its_registry_help() -> None:
    """A known metric arriving in a telemetry packet was described as "Reported by tolaria." on the scrape."""
    aggregator = MetricsAggregator()
    telemetry = TelemetryPacket(
        packet_id="p1",
        source="tolaria",
        issued_at=1.0,
        metrics=(
            MetricPoint(name="tolaria.boundary.stall_ms", value=3.0, attributes={}),
            MetricPoint(name="tolaria.custom_gauge", value=1.0, attributes={}),
        ),
    )
    aggregator.observe_telemetry(telemetry)
    helps = {sample.name: sample.help for sample in aggregator.registry.samples()}
    assert helps["tolaria.boundary.stall_ms"] == KNOWN_METRICS["tolaria.boundary.stall_ms"][1]
    assert helps["tolaria.custom_gauge"] == "Reported by tolaria."


def test_telemetry_lifecycle_boundary_breaker_and_restart_inputs_update_the_registry() -> None:
    aggregator = MetricsAggregator()
    telemetry = TelemetryPacket(
        packet_id="p1",
        source="tamiyo",
        issued_at=1.0,
        metrics=(MetricPoint(name="tamiyo.gnn.feature_coverage", value=0.5, attributes={"policy": "gnn"}),),
        events=(TelemetryEvent(name="loss_spike", level=TelemetryLevel.WARNING),),
    )
    assert aggregator.observe_telemetry(telemetry) == ["tamiyo.gnn.feature_coverage"]
    registry = aggregator.registry
    assert registry.value("tamiyo.gnn.feature_coverage", {"policy": "gnn"}) == 0.5
    assert registry.value("telemetry.events_total", {"name": "loss_spike", "level": "warning"}) == 1.0

    aggregator.observe_stage(
        SeedStageChanged(
            slot="s1", from_stage=SeedLifecycleStage.TRAINING, to_stage=SeedLifecycleStage.BLENDING, step=40
        )
    )
    # Counted when it takes effect, and its stage set by the packets from step 40 on.
    assert registry.value("kasmina.seed.transitions_total", {"to_stage": "blending"}) is None
    assert registry.value("kasmina.seed.stage", {"slot": "s1"}) is None
    aggregator.observe_state(
        packet(40, epoch=0, val=0.9, seeds=(seed("s1", SeedLifecycleStage.TRAINING),)), wall_time_s=1
    )
    assert registry.value("kasmina.seed.stage", {"slot": "s1"}) == 4.0
    assert registry.value("kasmina.seed.transitions_total", {"to_stage": "blending"}) == 1.0

    aggregator.observe_boundary(
        BoundaryApplied(
            run_id="r",
            decided_on_step=8,
            effect_step=10,
            applied_step=10,
            stall_ms=2.5,
            outcomes=(OpOutcome(kind="attach", slot="s1", seed_id="x", applied=True),),
        )
    )
    assert registry.value("tolaria.boundary.stalls_total") == 1.0
    assert registry.value("tolaria.boundary.ops_total", {"kind": "attach", "applied": "true"}) == 1.0

    aggregator.observe_breaker(
        BreakerTransition(
            breaker="tamiyo.inference", from_state=BreakerState.CLOSED, to_state=BreakerState.OPEN, reason="x", at_s=1
        )
    )
    assert aggregator.open_breakers() == ["tamiyo.inference"]
    aggregator.observe_restart(ChildRestarted(supervisor="weatherlight", child="tamiyo", restarts=1, backoff_s=0.1))
    assert registry.value("weatherlight.restarts_total", {"child": "tamiyo"}) == 1.0


def test_seed_counts_follow_the_lifecycle_not_the_slot_mode() -> None:
    """Tolaria's packets carry each slot's mode, which has no probationary, germinated or embargoed stage (a
    probationary seed's slot reads as shadowing): the rows counted those, never the lifecycle's own stages."""
    aggregator = MetricsAggregator()
    aggregator.observe_stage(
        SeedStageChanged(
            slot="a", from_stage=SeedLifecycleStage.SHADOWING, to_stage=SeedLifecycleStage.PROBATIONARY, step=90
        )
    )
    aggregator.observe_stage(
        SeedStageChanged(slot="b", from_stage=SeedLifecycleStage.CULLED, to_stage=SeedLifecycleStage.EMBARGOED, step=95)
    )
    seeds = (
        seed("a", SeedLifecycleStage.SHADOWING),
        seed("b", SeedLifecycleStage.DORMANT),
        seed("c", SeedLifecycleStage.TRAINING),
    )
    row, _ = aggregator.observe_state(packet(100, epoch=2, val=0.7, seeds=seeds), wall_time_s=1.0)
    assert row is not None
    assert (row["seeds_probationary"], row["seeds_shadowing"]) == (1, 0)
    assert (row["seeds_embargoed"], row["seeds_dormant"], row["seeds_training"]) == (1, 0, 1)
    assert row["seeds_active"] == 2


def test_a_resumed_runs_rows_count_the_stages_its_earlier_sessions_left(tmp_path: Path) -> None:
    """After a --resume the lifecycle's replay reports no transition again, so the rows counted the trainer's coarser
    view (shadowing for a probationary seed, dormant for an embargoed slot) until each seed's next transition."""
    stage = "seed_stage_changed"
    lines = [
        {"event": stage, "slot": "a", "step": 88, "to_stage": "PROBATIONARY", "from_stage": "SHADOWING"},
        # Decided at the checkpoint's step 88, in effect at 96: the replay does not report it again.
        {"event": stage, "slot": "b", "step": 96, "to_stage": "EMBARGOED", "from_stage": "CULLED"},
        # Decided after the checkpoint (100 - lag 8 > 88): the resumed run decides and reports it again.
        {"event": stage, "slot": "a", "step": 100, "to_stage": "FOSSILIZED", "from_stage": "PROBATIONARY"},
    ]
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    (tmp_path / "metrics.csv").write_text(",".join(METRICS_COLUMNS) + "\n", encoding="utf-8")
    config = RunConfig(tolaria=TolariaConfig(command_lag_steps=8))
    transitions = earlier_tally(tmp_path, config).slot_transitions
    earlier = slot_transitions_at(transitions, config.tolaria.command_lag_steps, resume_step=88)
    assert earlier == [
        Transition("a", SeedLifecycleStage.PROBATIONARY, 88),
        Transition("b", SeedLifecycleStage.EMBARGOED, 96),
    ]
    aggregator = MetricsAggregator(transitions=earlier)
    seeds = (seed("a", SeedLifecycleStage.SHADOWING), seed("b", SeedLifecycleStage.DORMANT))
    row, _ = aggregator.observe_state(packet(100, epoch=4, val=0.7, seeds=seeds), wall_time_s=1.0)
    assert row is not None
    assert (row["seeds_probationary"], row["seeds_shadowing"], row["seeds_embargoed"]) == (1, 0, 1)


def test_a_rollback_takes_back_the_stages_of_the_transitions_it_undid() -> None:
    """A seed germinated after the state a rollback went back to counted in metrics.csv (and the per-slot stage gauge)
    until its slot's next transition, though the lifecycle no longer had it."""
    dormant, germinated = SeedLifecycleStage.DORMANT, SeedLifecycleStage.GERMINATED
    aggregator = MetricsAggregator(transitions=[Transition("a", SeedLifecycleStage.TRAINING, 10)])
    aggregator.observe_stage(
        SeedStageChanged(slot="a", from_stage=SeedLifecycleStage.TRAINING, to_stage=germinated, step=60)
    )
    aggregator.observe_stage(SeedStageChanged(slot="b", from_stage=dormant, to_stage=germinated, step=68))  # decided 64
    aggregator.observe_stage(SeedStageChanged(slot="c", from_stage=dormant, to_stage=germinated, step=73))  # decided 69
    changed = aggregator.observe_restored(LifecycleRestored(run_id="r", step=64, lag_steps=4))
    assert changed == ["kasmina.seed.stage"]
    seeds = (seed("a", SeedLifecycleStage.TRAINING), seed("b", dormant), seed("c", dormant))
    row, _ = aggregator.observe_state(packet(80, epoch=4, val=0.7, seeds=seeds), wall_time_s=1.0)
    assert row is not None
    # a and b stand (decided at or before step 64); c's germination was undone: its slot is dormant again.
    assert (row["seeds_germinated"], row["seeds_dormant"]) == (2, 1)


def test_a_row_counts_the_stages_in_effect_at_its_step_not_those_planned_later() -> None:
    """A transition is reported when decided, command_lag_steps before it takes effect: the epoch row after it counted
    it already (a seed germinated with no parameters yet, a run's last row counting culls planned after its last
    step)."""
    dormant, germinated, training = (
        SeedLifecycleStage.DORMANT,
        SeedLifecycleStage.GERMINATED,
        SeedLifecycleStage.TRAINING,
    )
    aggregator = MetricsAggregator()
    # Decided at the epoch end of step 100, in effect at the boundary after step 104 (a lag of 4).
    aggregator.observe_stage(SeedStageChanged(slot="a", from_stage=dormant, to_stage=germinated, step=104))
    seeds = (seed("a", dormant),)
    row, _ = aggregator.observe_state(packet(100, epoch=4, val=0.7, seeds=seeds), wall_time_s=1.0)
    assert row is not None
    assert (row["seeds_germinated"], row["seeds_dormant"]) == (0, 1)
    # A packet inside an epoch is sent before the plans due at its step are applied.
    aggregator.observe_state(packet(104, epoch=5, seeds=seeds), wall_time_s=1.0)
    assert aggregator.registry.value("kasmina.seeds.by_stage", {"stage": "germinated"}) == 0.0
    aggregator.observe_stage(SeedStageChanged(slot="a", from_stage=germinated, to_stage=training, step=124))
    # An epoch end is sent after them: the germination counts, the training planned for step 124 does not yet.
    row, _ = aggregator.observe_state(packet(120, epoch=5, val=0.6, seeds=seeds), wall_time_s=2.0)
    assert row is not None
    assert (row["seeds_germinated"], row["seeds_training"], row["seeds_active"]) == (1, 0, 1)
    row, _ = aggregator.observe_state(packet(140, epoch=6, val=0.5, seeds=seeds), wall_time_s=3.0)
    assert row is not None
    assert (row["seeds_germinated"], row["seeds_training"]) == (0, 1)


def test_an_epoch_row_reports_the_epochs_timings_not_its_last_intervals() -> None:
    interval = packet(100, epoch=4, val=0.7, step_ms=50.8)
    end = msgspec.structs.replace(
        interval, epoch_timings=msgspec.structs.replace(interval.timings, step_ms=10.2), epoch_samples_per_s=2500.0
    )
    row = epoch_row(end, wall_time_s=1.0)
    assert (row["step_ms"], row["samples_per_s"]) == (10.2, 2500.0)
    assert epoch_row(interval, wall_time_s=1.0)["step_ms"] == 50.8  # a packet without them (an older sender)


def _receipt(step: int, kind: SeedOpKind, *, applied: bool, seed_id: str = "seed-a") -> BoundaryApplied:
    outcome = OpOutcome(kind=kind, slot="a", seed_id=seed_id, applied=applied)
    return BoundaryApplied(
        run_id="run-1", decided_on_step=step - 4, effect_step=step, applied_step=step, outcomes=(outcome,)
    )


def test_a_stage_change_the_trainer_refused_counts_from_the_receipt_that_applied_it() -> None:
    """A fossilize refused at L3 (step 100) and applied at step 132: the rows at 112 and 128 counted the seed
    fossilized, and the transition counter (Prometheus) counted it when decided, though the trainer had not applied
    it; one planned after the last packet (never applied) was counted too."""
    probationary, fossilized = SeedLifecycleStage.PROBATIONARY, SeedLifecycleStage.FOSSILIZED
    aggregator = MetricsAggregator(transitions=[Transition("a", probationary, 84, "seed-a")])
    registry = aggregator.registry
    aggregator.observe_stage(
        SeedStageChanged(slot="a", from_stage=probationary, to_stage=fossilized, step=100, seed_id="seed-a")
    )
    aggregator.observe_boundary(_receipt(100, "fossilize", applied=False))
    seeds = (seed("a", SeedLifecycleStage.SHADOWING),)
    for step in (112, 128):
        row, _ = aggregator.observe_state(packet(step, epoch=step // 16 - 1, val=0.7, seeds=seeds), wall_time_s=1.0)
        assert row is not None
        assert (row["seeds_probationary"], row["seeds_fossilized"]) == (1, 0)
        assert registry.value("kasmina.seed.transitions_total", {"to_stage": "fossilized"}) is None
    aggregator.observe_boundary(_receipt(132, "fossilize", applied=True))
    aggregator.observe_state(packet(132, epoch=8, seeds=seeds), wall_time_s=1.0)  # before the plans due at 132
    assert registry.value("kasmina.seeds.by_stage", {"stage": "fossilized"}) == 0.0
    row, _ = aggregator.observe_state(packet(144, epoch=8, val=0.7, seeds=seeds), wall_time_s=1.0)
    assert row is not None
    assert (row["seeds_probationary"], row["seeds_fossilized"]) == (0, 1)
    assert registry.value("kasmina.seed.transitions_total", {"to_stage": "fossilized"}) == 1.0
    # Planned at the last boundary for a step no packet reaches: never in effect, never counted.
    aggregator.observe_stage(
        SeedStageChanged(
            slot="b", from_stage=SeedLifecycleStage.DORMANT, to_stage=SeedLifecycleStage.GERMINATED, step=148
        )
    )
    assert registry.value("kasmina.seed.transitions_total", {"to_stage": "germinated"}) is None


def test_a_rollback_reopens_a_refusal_whose_receipt_it_undid() -> None:
    """Refused at 100, applied at 108, then a rollback to step 104: the restored planner sends the op again, so the
    seed is probationary until a receipt applies it again."""
    probationary, fossilized = SeedLifecycleStage.PROBATIONARY, SeedLifecycleStage.FOSSILIZED
    aggregator = MetricsAggregator(
        transitions=[Transition("a", probationary, 84, "seed-a"), Transition("a", fossilized, 100, "seed-a")]
    )
    aggregator.observe_boundary(_receipt(100, "fossilize", applied=False))
    aggregator.observe_boundary(_receipt(108, "set_stage", applied=True))
    aggregator.observe_restored(LifecycleRestored(run_id="r", step=104, lag_steps=4))
    seeds = (seed("a", SeedLifecycleStage.SHADOWING),)
    row, _ = aggregator.observe_state(packet(112, epoch=6, val=0.7, seeds=seeds), wall_time_s=1.0)
    assert row is not None
    assert (row["seeds_probationary"], row["seeds_fossilized"]) == (1, 0)


def test_an_epoch_rows_learning_rate_is_the_scheduled_rate_in_effect_not_the_base_rate() -> None:
    """With a cosine schedule every row read 0.003, tolaria.lr, while the optimizer stepped with less and less."""
    end = msgspec.structs.replace(packet(100, epoch=4, val=0.7), learning_rate=0.003)
    scheduled = msgspec.structs.replace(end, effective_learning_rate=0.0012)
    assert epoch_row(scheduled, wall_time_s=1.0)["learning_rate"] == 0.0012
    assert epoch_row(end, wall_time_s=1.0)["learning_rate"] == 0.003  # a packet of an earlier version (a resume's)


def test_counters_are_exposed_at_zero_before_their_first_increment() -> None:
    """esper_tolaria_boundary_stalls_total was missing from /metrics in a run without a stall, not 0."""
    samples = {(s.name, tuple(sorted(s.labels.items()))): s for s in MetricsAggregator().registry.samples()}
    for name, labels in COUNTERS_FROM_ZERO:
        sample = samples[(name, labels)]
        assert (sample.value, sample.kind) == (0.0, "counter"), name
    assert len(samples) == len(COUNTERS_FROM_ZERO)
    lines = render_exposition(MetricsAggregator().registry.samples()).splitlines()
    assert "esper_tolaria_boundary_stalls_total 0.0" in lines


def test_the_step_gauge_ends_at_the_halts_step_after_a_rollback() -> None:
    """Rolled back to step 0, the run trained on to step 4 and halted there with no packet after: the gauge read 0
    while summary.json said 4."""
    aggregator = MetricsAggregator()
    aggregator.observe_state(packet(3), wall_time_s=1.0)
    aggregator.observe_training_restored(0)
    assert aggregator.registry.value("tolaria.global_step") == 0.0
    halt = EmergencySignal(
        level=EmergencyLevel.L4_HALT,
        previous=EmergencyLevel.L3_CONSERVATIVE,
        reason="rolled back to step 0 3 times",
        origin="tolaria",
        monotonic_time_ms=1.0,
        run_id="r",
        step=4,
    )
    assert "tolaria.global_step" in aggregator.observe_emergency(halt)
    assert aggregator.registry.value("tolaria.global_step") == 4.0
    # A ladder that does not know the step leaves the gauge alone.
    aggregator.observe_emergency(msgspec.structs.replace(halt, step=None))
    assert aggregator.registry.value("tolaria.global_step") == 4.0


def test_the_exposition_types_and_describes_the_step_time_and_isolation_count() -> None:
    aggregator = MetricsAggregator()
    aggregator.observe_state(packet(3, step_ms=7.0, isolation=2), wall_time_s=1.0)
    lines = render_exposition(aggregator.registry.samples()).splitlines()
    assert "# TYPE esper_kasmina_isolation_violations_total counter" in lines
    assert "esper_kasmina_isolation_violations_total 2.0" in lines
    assert not any(line.startswith("esper_kasmina_isolation_violations ") for line in lines)
    [help_line] = [line for line in lines if line.startswith("# HELP esper_tolaria_training_latency_ms ")]
    assert "whole training step" in help_line
    assert "optimizer step time" not in help_line


def test_the_seed_stage_gauges_help_gives_every_stage_number() -> None:
    """The gauge's HELP said "Lifecycle stage number" and nothing said which number is which stage."""
    aggregator = MetricsAggregator()
    aggregator.observe_state(packet(3, seeds=(seed("s1", SeedLifecycleStage.BLENDING),)), wall_time_s=1.0)
    lines = render_exposition(aggregator.registry.samples()).splitlines()
    [help_line] = [line for line in lines if line.startswith("# HELP esper_kasmina_seed_stage ")]
    for stage in SeedLifecycleStage:
        assert f"{stage.value} {stage.name.lower()}" in help_line


def test_every_metric_the_actors_report_in_telemetry_has_its_own_help() -> None:
    """The decision latency, the kernel fetch latency and conservative mode were scraped as "Reported by tamiyo." /
    "Reported by kasmina.": the HELP line said nothing of what they measure or in which unit."""
    reported = {
        "tamiyo": ("tamiyo.inference.latency_ms", "tamiyo.gnn.feature_coverage", CONSERVATIVE_GAUGE),
        "kasmina": ("kasmina.kernel.fetch_latency_ms",),
        "oona": (OONA_DEPTH_METRIC,),
    }
    aggregator = MetricsAggregator()
    for source, names in reported.items():
        points = tuple(MetricPoint(name=name, value=1.0) for name in names)
        aggregator.observe_telemetry(TelemetryPacket(packet_id=source, source=source, issued_at=1.0, metrics=points))
    aggregator.observe_telemetry(
        TelemetryPacket(
            packet_id="x", source="kasmina", issued_at=1.0, metrics=(MetricPoint(name="kasmina.unknown", value=1.0),)
        )
    )
    helps = {sample.name: sample.help for sample in aggregator.registry.samples()}
    for name in (name for names in reported.values() for name in names):
        assert helps[name] == KNOWN_METRICS[name][1]
        assert not helps[name].startswith("Reported by")
    assert "milliseconds" in helps["tamiyo.inference.latency_ms"]
    assert "milliseconds" in helps["kasmina.kernel.fetch_latency_ms"]
    assert helps["kasmina.unknown"] == "Reported by kasmina."  # a name with no table entry keeps the generic text
    exposition = render_exposition(aggregator.registry.samples())
    assert f"# HELP esper_kasmina_kernel_fetch_latency_ms {KNOWN_METRICS['kasmina.kernel.fetch_latency_ms'][1]}" in (
        exposition
    )
