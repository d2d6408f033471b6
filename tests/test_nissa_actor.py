"""The Nissa actor in a real ActorSystem: rows per epoch end, alerts to the sink, snapshot asks, HTTP, restarts."""

from __future__ import annotations

import asyncio
import csv
import errno
import json
import socket
from typing import TYPE_CHECKING, final

import msgspec
import structlog

from actors.nissa.actor import (
    ALERT_CLEARED,
    ALERT_FIRED,
    METRICS_ENDPOINT_LISTENING,
    METRICS_ENDPOINT_MOVED,
    METRICS_ENDPOINT_UNAVAILABLE,
    Nissa,
)
from actors.nissa.alerts import DEFAULT_RULES
from actors.nissa.csv_writer import MetricsCsvWriter
from actors.nissa.prometheus import MetricsServer, host_port, render_exposition, summary_body
from actors.nissa.slo import DEFAULT_SLOS
from actors.nissa.spec import NISSA, nissa_spec, nissa_tick_spec
from esper.runtime.events import NullSink
from esper.runtime.stage_refusals import Transition
from esper.runtime.supervisor import Supervisor
from esper.runtime.system import ActorSystem
from schemas.boundary import TrainingRestored
from schemas.config import NissaConfig
from schemas.domain_enums import TelemetryLevel
from schemas.enums import EmergencyLevel, HealthStatus, SeedLifecycleStage
from schemas.nissa import AlertNotice, EvaluateAlerts, NissaSnapshot, QueryNissa, SeedStageChanged
from schemas.runtime import ChildRestarted, EmergencySignal
from schemas.telemetry import MetricPoint, TelemetryEvent, TelemetryPacket
from tests.nissa_packets import packet, seed
from tests.test_nissa_prometheus import http_get

if TYPE_CHECKING:
    from pathlib import Path

    import pytest

    from actors.nissa.actor import NissaMessage
    from actors.nissa.metrics import EpochRow
    from esper.runtime.clock import ManualClock
    from esper.runtime.events import RecordingSink
    from esper.runtime.ref import ActorRef
    from schemas.base import Message, Record


async def _start(config: NissaConfig, run_dir: Path, clock: ManualClock, sink: RecordingSink) -> ActorSystem:
    system = ActorSystem(clock=clock, sink=sink)
    await system.start(nissa_spec(config, run_dir, clock=clock, sink=sink))
    return system


async def _ask(ref: ActorRef[NissaMessage]) -> NissaSnapshot:
    async with asyncio.timeout(5):
        return await ref.ask(QueryNissa(), NissaSnapshot)


def _epochs(path: Path) -> list[str]:
    return [row["epoch"] for row in csv.DictReader(path.read_text(encoding="utf-8").splitlines())]


async def test_rows_alerts_and_snapshot(tmp_path: Path, clock: ManualClock, sink: RecordingSink) -> None:
    system = await _start(NissaConfig(), tmp_path, clock, sink)
    try:
        ref = system.ref(NISSA, Nissa)
        for step in (10, 20, 30):
            clock.advance(1.0)
            await ref.tell(packet(step, step_ms=25.0))  # three breaches of training_latency_high (> 18 ms, for 3)
        await ref.tell(
            SeedStageChanged(
                slot="s1", from_stage=SeedLifecycleStage.DORMANT, to_stage=SeedLifecycleStage.GERMINATED, step=32
            )
        )
        await ref.tell(packet(32, epoch=0, val=0.9, step_ms=5.0))  # in effect at this epoch end: counted
        await ref.tell(
            TelemetryPacket(
                packet_id="p",
                source="tamiyo",
                issued_at=0.0,
                metrics=(MetricPoint(name="tamiyo.gnn.feature_coverage", value=0.9),),
                events=(TelemetryEvent(name="loss_spike", level=TelemetryLevel.WARNING),),
            )
        )
        snapshot = await _ask(ref)
        assert (snapshot.epochs_written, snapshot.last_epoch) == (1, 1)  # epochs counted from 1, as on the console
        assert snapshot.final_figures["val_loss"] == 0.9
        assert snapshot.endpoint is None
        assert _epochs(tmp_path / "metrics.csv") == ["1"]
        # Fired on the third breach, cleared by the fourth packet (5 ms): one record each, the telemetry event.
        alerts = [e for e in sink.of_type(TelemetryEvent) if e.name in (ALERT_FIRED, ALERT_CLEARED)]
        assert [(e.name, e.attributes["rule"]) for e in alerts] == [
            (ALERT_FIRED, "training_latency_high"),
            (ALERT_CLEARED, "training_latency_high"),
        ]
        assert sink.of_type(AlertNotice) == []
        fired = [e for e in sink.of_type(TelemetryEvent) if e.name == ALERT_FIRED]
        assert fired[0].attributes["rule"] == "training_latency_high"
        assert fired[0].attributes["emergency_level"] == 1
        assert snapshot.health.status is HealthStatus.HEALTHY
        names = {sample.name for sample in snapshot.metrics}
        assert {"tolaria.training.loss", "kasmina.seed.transitions_total", "nissa.messages_total"} <= names
        assert {"tamiyo.gnn.feature_coverage", "nissa.alerts.active", "nissa.ingest.latency_ms"} <= names

        await ref.tell(
            EmergencySignal(
                level=EmergencyLevel.L4_HALT,
                previous=EmergencyLevel.L3_CONSERVATIVE,
                reason="rollback_failed",
                origin="tolaria",
                monotonic_time_ms=1.0,
                run_id="run-1",
            )
        )
        snapshot = await _ask(ref)
        assert snapshot.health.status is HealthStatus.CRITICAL
    finally:
        await system.stop()


async def test_a_tick_alone_fires_nothing_a_second_report_does(
    tmp_path: Path, clock: ManualClock, sink: RecordingSink
) -> None:
    system = await _start(NissaConfig(), tmp_path, clock, sink)
    try:
        ref = system.ref(NISSA, Nissa)
        depth = TelemetryPacket(
            packet_id="p",
            source="oona",
            issued_at=0.0,
            metrics=(MetricPoint(name="oona.queue.depth", value=4500.0),),
        )
        await ref.tell(depth)
        clock.advance(30.0)
        await ref.tell(EvaluateAlerts(seq=1))
        assert (await _ask(ref)).alerts == ()
        await ref.tell(depth)  # Oona's next report of its backlog
        snapshot = await _ask(ref)
        assert [alert.rule for alert in snapshot.alerts] == ["oona_queue_depth"]
        assert snapshot.health.status is HealthStatus.DEGRADED
        assert [e.attributes["rule"] for e in sink.of_type(TelemetryEvent) if e.name == ALERT_FIRED] == [
            "oona_queue_depth"
        ]
    finally:
        await system.stop()


async def test_a_restarted_run_appends_to_metrics_csv(tmp_path: Path, clock: ManualClock, sink: RecordingSink) -> None:
    system = await _start(NissaConfig(), tmp_path, clock, sink)
    ref = system.ref(NISSA, Nissa)
    await ref.tell(packet(32, epoch=0, val=0.9))
    await ref.tell(packet(64, epoch=1, val=0.8))
    await _ask(ref)
    await system.stop()

    resumed = await _start(NissaConfig(), tmp_path, clock, sink)
    try:
        ref = resumed.ref(NISSA, Nissa)
        await ref.tell(packet(64, epoch=1, val=0.8))  # re-sent after the restart: not written twice
        await ref.tell(packet(96, epoch=2, val=0.7))
        snapshot = await _ask(ref)
        assert (snapshot.epochs_written, snapshot.last_epoch) == (3, 3)
    finally:
        await resumed.stop()
    text = (tmp_path / "metrics.csv").read_text(encoding="utf-8")
    assert text.count("epoch,step,") == 1
    assert _epochs(tmp_path / "metrics.csv") == ["1", "2", "3"]


async def test_an_epoch_trained_again_after_a_rollback_replaces_its_row(
    tmp_path: Path, clock: ManualClock, sink: RecordingSink
) -> None:
    """An epoch that failed at its end and was rolled back to the previous epoch end is trained again: metrics.csv kept
    the undone attempt's row (the rerun's was skipped as already written), and the step gauge said where training had
    been until the next packet."""
    system = await _start(NissaConfig(), tmp_path, clock, sink)
    try:
        ref = system.ref(NISSA, Nissa)
        await ref.tell(packet(32, epoch=0, val=0.9))
        await ref.tell(packet(64, epoch=1, val=5.0))  # the failed attempt
        await ref.tell(TrainingRestored(run_id="run-1", step=32, tier="fast"))
        restored = await _ask(ref)
        assert (restored.epochs_written, restored.last_epoch) == (1, 1)
        assert {(m.name, m.value) for m in restored.metrics if m.name == "tolaria.global_step"} == {
            ("tolaria.global_step", 32.0)
        }
        await ref.tell(packet(64, epoch=1, val=0.8))  # the attempt that stands
        await ref.tell(packet(96, epoch=2, val=0.7))
        assert (await _ask(ref)).epochs_written == 3
    finally:
        await system.stop()
    rows = list(csv.DictReader((tmp_path / "metrics.csv").read_text(encoding="utf-8").splitlines()))
    assert [(row["epoch"], row["step"], row["val_loss"]) for row in rows] == [
        ("1", "32", "0.9"),
        ("2", "64", "0.8"),
        ("3", "96", "0.7"),
    ]


async def test_a_row_nissa_crashed_while_writing_is_written_by_its_next_incarnation(
    tmp_path: Path, clock: ManualClock, sink: RecordingSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash in the middle of an epoch's row (an I/O error after half a line went out) lost that row for good: its
    packet never comes again. The spec keeps the rows not yet written across incarnations."""
    real_append = MetricsCsvWriter.append
    failures: list[object] = [2]  # the second epoch's row fails once

    async def failing_append(self: MetricsCsvWriter, row: EpochRow) -> None:
        if row["epoch"] in failures:
            failures.clear()
            with self.path.open("a", encoding="utf-8") as torn:
                torn.write("2,64,0.")  # half a row reached the file
            raise OSError(errno.EIO, "Input/output error")
        await real_append(self, row)

    monkeypatch.setattr(MetricsCsvWriter, "append", failing_append)
    system = ActorSystem(clock=clock, sink=sink)
    await system.start(Supervisor([nissa_spec(NissaConfig(), tmp_path, clock=clock, sink=sink)], backoff_initial_s=0))
    try:
        ref = system.ref(NISSA, Nissa)
        await ref.tell(packet(32, epoch=0, val=0.9))
        await ref.tell(packet(64, epoch=1, val=0.8))  # crashes Nissa mid-row
        await ref.tell(packet(96, epoch=2, val=0.7))
        snapshot = await _ask(ref)  # answered by the next incarnation: the restart is done
        assert (snapshot.epochs_written, snapshot.last_epoch) == (3, 3)
    finally:
        await system.stop()
    assert [event.child for event in sink.of_type(ChildRestarted)] == [NISSA]
    assert _epochs(tmp_path / "metrics.csv") == ["1", "2", "3"]


async def test_a_restarted_nissa_counts_seeds_by_the_stages_the_run_left(
    tmp_path: Path, clock: ManualClock, sink: RecordingSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restarted Nissa started with no lifecycle stages and counted seeds by the trainer's coarser view (a
    probationary seed as shadowing, an embargoed slot as dormant) until each slot's next transition."""
    real_append = MetricsCsvWriter.append
    failures: list[object] = [1]

    async def failing_append(self: MetricsCsvWriter, row: EpochRow) -> None:
        if row["epoch"] in failures:
            failures.clear()
            raise OSError(errno.EIO, "Input/output error")
        await real_append(self, row)

    monkeypatch.setattr(MetricsCsvWriter, "append", failing_append)
    run_transitions = [
        Transition("a", SeedLifecycleStage.PROBATIONARY, 20),
        Transition("b", SeedLifecycleStage.EMBARGOED, 24),
    ]
    spec = nissa_spec(NissaConfig(), tmp_path, clock=clock, sink=sink, later_transitions=lambda: run_transitions)
    system = ActorSystem(clock=clock, sink=sink)
    await system.start(Supervisor([spec], backoff_initial_s=0))
    seeds = (seed("a", SeedLifecycleStage.SHADOWING), seed("b", SeedLifecycleStage.DORMANT))
    try:
        ref = system.ref(NISSA, Nissa)
        await ref.tell(packet(32, epoch=0, val=0.9, seeds=seeds))  # crashes Nissa; its next incarnation writes it
        await ref.tell(packet(64, epoch=1, val=0.8, seeds=seeds))
        assert (await _ask(ref)).epochs_written == 2
    finally:
        await system.stop()
    assert [event.child for event in sink.of_type(ChildRestarted)] == [NISSA]
    rows = list(csv.DictReader((tmp_path / "metrics.csv").read_text(encoding="utf-8").splitlines()))
    counts = [(r["seeds_probationary"], r["seeds_embargoed"], r["seeds_shadowing"]) for r in rows]
    # The first row was built by the first incarnation (no stages: the fresh run's view); the restarted one's by
    # the stages the run's transitions left.
    assert counts == [("0", "0", "1"), ("1", "1", "0")]


async def test_a_resumed_runs_wall_time_goes_on_from_its_earlier_session(
    tmp_path: Path, clock: ManualClock, sink: RecordingSink
) -> None:
    """wall_time_s started again at 0 after a resume, so the column went backwards."""
    first = await _start(NissaConfig(), tmp_path, clock, sink)
    clock.advance(10.0)
    await first.ref(NISSA, Nissa).tell(packet(32, epoch=0, val=0.9))
    await _ask(first.ref(NISSA, Nissa))
    await first.stop()
    clock.advance(100.0)  # the run was stopped for a while
    resumed = await _start(NissaConfig(), tmp_path, clock, sink)
    try:
        clock.advance(2.0)
        await resumed.ref(NISSA, Nissa).tell(packet(64, epoch=1, val=0.8))
        await _ask(resumed.ref(NISSA, Nissa))
    finally:
        await resumed.stop()
    rows = list(csv.DictReader((tmp_path / "metrics.csv").read_text(encoding="utf-8").splitlines()))
    assert [float(row["wall_time_s"]) for row in rows] == [10.0, 12.0]


async def _one_row(
    tmp_path: Path, clock: ManualClock, sink: RecordingSink, *, started_s: float, resumed: bool = False
) -> None:
    """Start Nissa given the run's start (and whether it resumes), let 2 s pass, send an epoch end, await its row."""
    system = ActorSystem(clock=clock, sink=sink)
    await system.start(
        nissa_spec(NissaConfig(), tmp_path, clock=clock, sink=sink, started_s=started_s, resumed=resumed)
    )
    try:
        clock.advance(2.0)
        epoch = len(_epochs(tmp_path / "metrics.csv")) if (tmp_path / "metrics.csv").exists() else 0
        await system.ref(NISSA, Nissa).tell(packet(32 * (epoch + 1), epoch=epoch, val=0.9))
        await _ask(system.ref(NISSA, Nissa))
    finally:
        await system.stop()


def _wall_times(path: Path) -> list[float]:
    return [float(row["wall_time_s"]) for row in csv.DictReader(path.read_text(encoding="utf-8").splitlines())]


async def test_wall_time_counts_from_the_runs_start_not_from_when_nissa_was_built(
    tmp_path: Path, clock: ManualClock, sink: RecordingSink
) -> None:
    """wall_time_s counted from the moment the spec was built, seconds after the run's start that the summary's
    duration_s counts from, so the last row fell seconds short of the run's duration."""
    run_started = clock.now()
    clock.advance(5.0)  # the run's start-up: the data, the model, the checks, before Nissa's spec is built
    await _one_row(tmp_path, clock, sink, started_s=run_started)
    assert _wall_times(tmp_path / "metrics.csv") == [7.0]


async def test_a_resume_goes_on_from_the_last_row_even_when_its_start_up_outlasted_the_earlier_session(
    tmp_path: Path, clock: ManualClock, sink: RecordingSink
) -> None:
    """A resume whose start-up took longer than the earlier session's last row counted its rows from its own start,
    dropping the earlier sessions' time."""
    await _one_row(tmp_path, clock, sink, started_s=clock.now())  # the earlier session's row: 2 s
    clock.advance(100.0)  # the run was stopped for a while
    resumed_at = clock.now()
    clock.advance(10.0)  # the resumed session's start-up
    await _one_row(tmp_path, clock, sink, started_s=resumed_at, resumed=True)
    assert _wall_times(tmp_path / "metrics.csv") == [2.0, 14.0]  # 2 s earlier, then 10 s + 2 s of this session


async def test_a_resumes_nissa_restarted_before_it_read_the_file_still_goes_on_from_the_last_row(
    tmp_path: Path, clock: ManualClock, sink: RecordingSink
) -> None:
    """The first incarnation of a resume's Nissa took the "go on from the last row" with it when it was built: one
    that crashed before reading metrics.csv left its restart counting from this session's start alone."""
    await _one_row(tmp_path, clock, sink, started_s=clock.now())  # the earlier session's row: 2 s
    clock.advance(100.0)
    spec = nissa_spec(NissaConfig(), tmp_path, clock=clock, sink=sink, started_s=clock.now(), resumed=True)
    spec.factory()  # an incarnation that crashed before it started: the supervisor builds the next
    clock.advance(10.0)  # the session's time before the restart: longer than the earlier session's 2 s
    system = ActorSystem(clock=clock, sink=sink)
    await system.start(spec)
    try:
        clock.advance(2.0)
        await system.ref(NISSA, Nissa).tell(packet(64, epoch=1, val=0.9))
        await _ask(system.ref(NISSA, Nissa))
    finally:
        await system.stop()
    assert _wall_times(tmp_path / "metrics.csv") == [2.0, 14.0]  # 2 s earlier, then 10 s + 2 s of this session


async def test_a_resumes_missed_epoch_ends_are_written_at_its_start_once(
    tmp_path: Path, clock: ManualClock, sink: RecordingSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kill -9 after epoch 2's checkpoint, before its packet reached Nissa: the resume continues from epoch 3, so
    the row was never written. Given the missed packets (Kasmina's journal's), the first incarnation writes their rows
    as it would have (stages from the run's transitions, wall time going on), skipping what the file holds; an
    incarnation restarted later (here by a failed append) does not write them again."""
    first = await _start(NissaConfig(), tmp_path, clock, sink)
    clock.advance(10.0)
    await first.ref(NISSA, Nissa).tell(packet(32, epoch=0, val=0.9))
    await _ask(first.ref(NISSA, Nissa))
    await first.stop()
    real_append = MetricsCsvWriter.append
    failures: list[object] = [3]

    async def failing_append(self: MetricsCsvWriter, row: EpochRow) -> None:
        if row["epoch"] in failures:
            failures.clear()
            raise OSError(errno.EIO, "Input/output error")
        await real_append(self, row)

    monkeypatch.setattr(MetricsCsvWriter, "append", failing_append)
    seeds = (seed("a", SeedLifecycleStage.SHADOWING),)
    missed = (packet(32, epoch=0, val=0.9), packet(64, epoch=1, val=0.8, seeds=seeds))
    transitions = [Transition("a", SeedLifecycleStage.PROBATIONARY, 60)]
    clock.advance(100.0)  # the run was down for a while
    spec = nissa_spec(NissaConfig(), tmp_path, clock=clock, sink=sink, transitions=transitions, missed=missed)
    resumed = ActorSystem(clock=clock, sink=sink)
    await resumed.start(Supervisor([spec], backoff_initial_s=0))
    try:
        ref = resumed.ref(NISSA, Nissa)
        written = await _ask(ref)
        assert (written.epochs_written, written.last_epoch) == (2, 2)
        assert written.final_figures["val_loss"] == 0.8
        await ref.tell(TrainingRestored(run_id="run-1", step=64, tier="full"))
        clock.advance(2.0)
        await ref.tell(packet(96, epoch=2, val=0.7, seeds=seeds))  # crashes Nissa; its next incarnation writes it
        assert (await _ask(ref)).epochs_written == 3
    finally:
        await resumed.stop()
    assert [event.child for event in sink.of_type(ChildRestarted)] == [NISSA]
    rows = list(csv.DictReader((tmp_path / "metrics.csv").read_text(encoding="utf-8").splitlines()))
    assert [(r["epoch"], r["val_loss"], r["seeds_probationary"], r["wall_time_s"]) for r in rows] == [
        ("1", "0.9", "0", "10.0"),
        ("2", "0.8", "1", "10.0"),
        ("3", "0.7", "1", "12.0"),
    ]


async def test_the_actor_serves_http_on_an_ephemeral_port(
    tmp_path: Path, clock: ManualClock, sink: RecordingSink
) -> None:
    """Port 0 binds any free port, and says which: it was refused in a config, the console could not show the URL and
    events.jsonl did not carry the port."""
    system = await _start(NissaConfig(prometheus_port=0), tmp_path, clock, sink)
    try:
        ref = system.ref(NISSA, Nissa)
        await ref.tell(packet(32, epoch=0, val=0.9))
        snapshot = await _ask(ref)  # on_start has run (the server is bound) once an ask is answered
        assert snapshot.endpoint is not None
        host, port = snapshot.endpoint.rsplit(":", 1)
        assert host == "127.0.0.1"
        [listening] = [e for e in sink.of_type(TelemetryEvent) if e.name == METRICS_ENDPOINT_LISTENING]
        assert listening.attributes == {"port": int(port), "url": f"http://127.0.0.1:{port}/metrics"}
        async with asyncio.timeout(5):
            status, _, body = await http_get(int(port), "/metrics")
            assert status == 200
            assert "esper_tolaria_validation_loss 0.9" in body.decode().splitlines()
            assert "esper_tolaria_boundary_stalls_total 0.0" in body.decode().splitlines()  # no stall: 0, not absent
            status, _, body = await http_get(int(port), "/healthz")
            assert (status, json.loads(body)["status"]) == (200, "healthy")
            status, _, body = await http_get(int(port), "/metrics/summary")
            summary = msgspec.json.decode(body)
            assert [slo["name"] for slo in summary["slos"]] == [
                "epoch_hook_latency",
                "tamiyo_decision_latency",
                "kernel_fetch_latency",
            ]
            assert summary["slos"][0]["samples"] == 1
    finally:
        await system.stop()


async def test_a_port_taken_after_the_start_check_costs_the_endpoint_not_the_run(
    tmp_path: Path, clock: ManualClock, sink: RecordingSink
) -> None:
    """The start checks the port, but another process may take it before Nissa binds (or a crashed incarnation may
    still hold it): every restart failed the same way, and the supervisor ended the run (RestartIntensityExceeded)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        system = await _start(NissaConfig(prometheus_port=port), tmp_path, clock, sink)
        try:
            ref = system.ref(NISSA, Nissa)
            await ref.tell(packet(32, epoch=0, val=0.9))
            snapshot = await _ask(ref)
            assert snapshot.endpoint is None
            assert snapshot.epochs_written == 1  # Nissa runs on: rows, alerts, snapshots
        finally:
            await system.stop()
    [warning] = [e for e in sink.of_type(TelemetryEvent) if e.name == METRICS_ENDPOINT_UNAVAILABLE]
    assert warning.level is TelemetryLevel.WARNING
    assert f"cannot serve /metrics on 127.0.0.1:{port}" in warning.description
    assert not sink.of_type(ChildRestarted)


async def _crash_and_restart(ref: ActorRef[NissaMessage], monkeypatch: pytest.MonkeyPatch) -> NissaSnapshot:
    """Epoch 1's row, then a failed append of epoch 2's that crashes Nissa; the snapshot the next incarnation gives."""
    real_append = MetricsCsvWriter.append
    failures: list[object] = [2]

    async def failing_append(self: MetricsCsvWriter, row: EpochRow) -> None:
        if row["epoch"] in failures:
            failures.clear()
            raise OSError(errno.EIO, "Input/output error")
        await real_append(self, row)

    monkeypatch.setattr(MetricsCsvWriter, "append", failing_append)
    await ref.tell(packet(64, epoch=1, val=0.8))  # crashes Nissa
    await ref.tell(packet(96, epoch=2, val=0.7))
    return await _ask(ref)  # answered by the next incarnation: the restart is done


async def _start_supervised(config: NissaConfig, run_dir: Path, clock: ManualClock, sink: RecordingSink) -> ActorSystem:
    system = ActorSystem(clock=clock, sink=sink)
    await system.start(Supervisor([nissa_spec(config, run_dir, clock=clock, sink=sink)], backoff_initial_s=0))
    return system


async def test_a_restarted_nissa_serves_on_the_port_it_had(
    tmp_path: Path, clock: ManualClock, sink: RecordingSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With port 0 a restarted Nissa bound a new free port: a scraper pointed at the URL the run printed lost it."""
    system = await _start_supervised(NissaConfig(prometheus_port=0), tmp_path, clock, sink)
    try:
        ref = system.ref(NISSA, Nissa)
        await ref.tell(packet(32, epoch=0, val=0.9))
        before = (await _ask(ref)).endpoint
        after = await _crash_and_restart(ref, monkeypatch)
        assert before is not None
        assert after.endpoint == before
        async with asyncio.timeout(5):
            status, _, body = await http_get(int(before.rsplit(":", 1)[1]), "/metrics")
        assert status == 200
        assert "esper_tolaria_validation_loss 0.7" in body.decode().splitlines()
    finally:
        await system.stop()
    assert [event.child for event in sink.of_type(ChildRestarted)] == [NISSA]
    urls = [e.attributes["url"] for e in sink.of_type(TelemetryEvent) if e.name == METRICS_ENDPOINT_LISTENING]
    assert urls == [f"http://{before}/metrics"] * 2
    assert not [e for e in sink.of_type(TelemetryEvent) if e.name == METRICS_ENDPOINT_MOVED]


async def test_a_restarted_nissa_whose_port_was_taken_says_so_and_serves_on_another(
    tmp_path: Path, clock: ManualClock, sink: RecordingSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process took the port between the crash and the restart: one warning names it, and the new URL is
    given as ever."""
    real_start = MetricsServer.start
    taker = socket.socket()
    ports: list[int] = []

    async def start_after_a_taker(self: MetricsServer) -> int:
        if ports and not taker.getsockname()[1]:
            taker.bind(("127.0.0.1", ports[0]))  # the crashed incarnation has closed it by now
            taker.listen()
        ports.append(await real_start(self))
        return ports[-1]

    monkeypatch.setattr(MetricsServer, "start", start_after_a_taker)
    system = await _start_supervised(NissaConfig(prometheus_port=0), tmp_path, clock, sink)
    try:
        ref = system.ref(NISSA, Nissa)
        await ref.tell(packet(32, epoch=0, val=0.9))
        await _ask(ref)
        after = await _crash_and_restart(ref, monkeypatch)
        assert len(ports) == 2
        assert after.endpoint == f"127.0.0.1:{ports[1]}"
        async with asyncio.timeout(5):
            status, _, _ = await http_get(ports[1], "/healthz")
        assert status == 200
    finally:
        await system.stop()
        taker.close()
    [moved] = [e for e in sink.of_type(TelemetryEvent) if e.name == METRICS_ENDPOINT_MOVED]
    assert moved.level is TelemetryLevel.WARNING
    assert moved.description.startswith(f"cannot serve /metrics on 127.0.0.1:{ports[0]} again (")
    assert moved.attributes == {"port": ports[0]}
    urls = [e.attributes["url"] for e in sink.of_type(TelemetryEvent) if e.name == METRICS_ENDPOINT_LISTENING]
    assert urls == [f"http://127.0.0.1:{port}/metrics" for port in ports]
    assert not [e for e in sink.of_type(TelemetryEvent) if e.name == METRICS_ENDPOINT_UNAVAILABLE]


def test_an_ipv6_endpoint_is_written_with_brackets() -> None:
    assert (host_port("::1", 9100), host_port("127.0.0.1", 9100)) == ("[::1]:9100", "127.0.0.1:9100")


async def test_the_epoch_hook_slo_counts_each_epoch_end_once(
    tmp_path: Path, clock: ManualClock, sink: RecordingSink
) -> None:
    system = await _start(NissaConfig(), tmp_path, clock, sink)
    try:
        ref = system.ref(NISSA, Nissa)
        for epoch in range(3):
            for step in range(4):  # mid-epoch packets repeat the last epoch end's hook time: not new samples
                await ref.tell(packet(epoch * 5 + step + 1, epoch=epoch))
            await ref.tell(packet(epoch * 5 + 5, epoch=epoch, val=0.9))
        snapshot = await _ask(ref)
        [hook] = [slo for slo in snapshot.slos if slo.name == "epoch_hook_latency"]
        assert hook.samples == 3
    finally:
        await system.stop()


async def test_the_epoch_hook_slo_judges_the_hook_without_its_state_copy(
    tmp_path: Path, clock: ManualClock, sink: RecordingSink
) -> None:
    """A large model's epoch ends spend hundreds of ms copying its state, which the hook budget does not count; the
    SLO counted it and fired slo_epoch_hook_latency on every healthy epoch of such a run."""
    system = await _start(NissaConfig(slo_min_samples=3), tmp_path, clock, sink)
    try:
        ref = system.ref(NISSA, Nissa)
        for epoch in range(4):
            await ref.tell(packet(epoch * 5 + 5, epoch=epoch, val=0.9, hook_ms=305.0, capture_ms=300.0))
        snapshot = await _ask(ref)
        [hook] = [slo for slo in snapshot.slos if slo.name == "epoch_hook_latency"]
        assert hook.metric == "tolaria.epoch_hook.work_ms"
        assert (hook.samples, hook.violations, hook.breached) == (4, 0, False)
        values = {s.name: s.value for s in snapshot.metrics if not s.labels}
        assert (values["tolaria.epoch_hook.latency_ms"], values["tolaria.epoch_hook.work_ms"]) == (305.0, 5.0)
        for epoch in range(4, 8):  # the hook's own work over the target is still a violation
            await ref.tell(packet(epoch * 5 + 5, epoch=epoch, val=0.9, hook_ms=330.0, capture_ms=300.0))
        [hook] = [slo for slo in (await _ask(ref)).slos if slo.name == "epoch_hook_latency"]
        assert (hook.violations, hook.breached) == (4, True)
    finally:
        await system.stop()


async def test_the_tick_child_calls_its_function(clock: ManualClock) -> None:
    ticked = asyncio.Event()

    async def tick() -> None:
        ticked.set()

    system = ActorSystem(clock=clock, sink=NullSink())
    await system.start(Supervisor([nissa_tick_spec(tick, NissaConfig(alert_eval_interval_s=30.0), clock=clock)]))
    try:
        async with asyncio.timeout(1):
            await ticked.wait()
    finally:
        await system.stop()


def _latency(value: float) -> TelemetryPacket:
    return TelemetryPacket(
        packet_id="p",
        source="tamiyo",
        issued_at=0.0,
        metrics=(MetricPoint(name="tamiyo.inference.latency_ms", value=value),),
    )


async def test_a_firing_slo_alert_is_in_every_view_until_the_slo_recovers(
    tmp_path: Path, clock: ManualClock, sink: RecordingSink
) -> None:
    """An SLO's alert_fired went to events.jsonl while the snapshot's alerts, /metrics/summary's, /healthz's
    alerts_active and esper_nissa_alerts_active all said none was firing."""
    system = await _start(NissaConfig(slo_min_samples=3), tmp_path, clock, sink)
    try:
        ref = system.ref(NISSA, Nissa)
        for _ in range(3):
            await ref.tell(_latency(100.0))  # over the 45 ms objective: burn 1.0
        snapshot = await _ask(ref)
        assert [e.attributes["rule"] for e in sink.of_type(TelemetryEvent) if e.name == ALERT_FIRED] == [
            "slo_tamiyo_decision_latency"
        ]
        [alert] = snapshot.alerts
        assert (alert.rule, alert.metric, alert.value, alert.level) == (
            "slo_tamiyo_decision_latency",
            "tamiyo.inference.latency_ms",
            1.0,
            EmergencyLevel.L1_NOTICE,
        )
        assert snapshot.health.indicators["alerts_active"] == "1"
        assert [a["rule"] for a in json.loads(summary_body(snapshot))["alerts"]] == ["slo_tamiyo_decision_latency"]
        values = {(s.name, tuple(s.labels.items())): s.value for s in snapshot.metrics}
        assert values[("nissa.alerts.active", ())] == 1.0
        assert values[("nissa.alerts.fired_total", (("rule", "slo_tamiyo_decision_latency"),))] == 1.0

        for _ in range(5):
            await ref.tell(_latency(1.0))  # burn 3/8, under the 0.4 threshold: the SLO recovers
        snapshot = await _ask(ref)
        assert [e.attributes["rule"] for e in sink.of_type(TelemetryEvent) if e.name == ALERT_CLEARED] == [
            "slo_tamiyo_decision_latency"
        ]
        assert snapshot.alerts == ()
        assert snapshot.health.indicators["alerts_active"] == "0"
        values = {(s.name, tuple(s.labels.items())): s.value for s in snapshot.metrics}
        assert values[("nissa.alerts.active", ())] == 0.0
        assert values[("nissa.alerts.fired_total", (("rule", "slo_tamiyo_decision_latency"),))] == 1.0
    finally:
        await system.stop()


async def test_alerts_fired_are_counted_by_rule_from_zero(
    tmp_path: Path, clock: ManualClock, sink: RecordingSink
) -> None:
    """An alert that fired and cleared between two scrapes left no trace on /metrics: the count per rule keeps it,
    and every rule's count is there at 0 before its first firing."""
    system = await _start(NissaConfig(), tmp_path, clock, sink)
    try:
        ref = system.ref(NISSA, Nissa)
        counts = {s.labels["rule"]: s.value for s in (await _ask(ref)).metrics if s.name == "nissa.alerts.fired_total"}
        rules = [r.name for r in DEFAULT_RULES] + [f"slo_{o.name}" for o in DEFAULT_SLOS]
        assert counts == dict.fromkeys(rules, 0.0)
        for _ in range(2):  # fires on the third slow packet, clears on the fast one
            for step in (10, 20, 30):
                await ref.tell(packet(step, step_ms=25.0))
            await ref.tell(packet(31, step_ms=5.0))
        snapshot = await _ask(ref)
        assert snapshot.alerts == ()
        counts = {s.labels["rule"]: s.value for s in snapshot.metrics if s.name == "nissa.alerts.fired_total"}
        assert counts["training_latency_high"] == 2.0
        assert (
            'esper_nissa_alerts_fired_total{rule="training_latency_high"} 2.0'
            in render_exposition(snapshot.metrics).splitlines()
        )
        assert "# TYPE esper_nissa_alerts_fired_total counter" in render_exposition(snapshot.metrics).splitlines()
    finally:
        await system.stop()


@final
class _ContextSink:
    """Records each telemetry event with the actor structlog's context names while it is emitted."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, object]] = []

    def emit(self, event: Message | Record) -> None:
        if isinstance(event, TelemetryEvent):
            self.seen.append((event.name, structlog.contextvars.get_contextvars().get("actor")))


async def test_nissas_own_events_are_logged_under_its_name(tmp_path: Path, clock: ManualClock) -> None:
    """`esper.tail --actor nissa` left out Nissa's alert and metrics_endpoint lines: they named no actor."""
    sink = _ContextSink()
    system = ActorSystem(clock=clock, sink=sink)
    await system.start(nissa_spec(NissaConfig(prometheus_port=0), tmp_path, clock=clock, sink=sink))
    try:
        ref = system.ref(NISSA, Nissa)
        for step in (10, 20, 30):
            await ref.tell(packet(step, step_ms=25.0))
        await _ask(ref)
    finally:
        await system.stop()
    assert sink.seen == [(METRICS_ENDPOINT_LISTENING, NISSA), (ALERT_FIRED, NISSA)]


async def test_an_slo_fires_no_alert_from_too_few_samples(
    tmp_path: Path, clock: ManualClock, sink: RecordingSink
) -> None:
    """A healthy default run fired slo_kernel_fetch_latency from its one kernel fetch over the objective (burn 1.0
    of 1 sample): a window's burn fires only over nissa.slo_min_samples samples (20 by default)."""
    system = await _start(NissaConfig(), tmp_path, clock, sink)
    try:
        ref = system.ref(NISSA, Nissa)
        for _ in range(19):
            await ref.tell(_latency(100.0))
        snapshot = await _ask(ref)
        assert [e for e in sink.of_type(TelemetryEvent) if e.name == ALERT_FIRED] == []
        assert snapshot.alerts == ()
        [slo] = [slo for slo in snapshot.slos if slo.name == "tamiyo_decision_latency"]
        assert (slo.samples, slo.burn, slo.breached) == (19, 1.0, False)
        await ref.tell(_latency(100.0))
        snapshot = await _ask(ref)
        assert [e.attributes["rule"] for e in sink.of_type(TelemetryEvent) if e.name == ALERT_FIRED] == [
            "slo_tamiyo_decision_latency"
        ]
    finally:
        await system.stop()


async def test_the_endpoints_say_which_run_they_serve(tmp_path: Path, clock: ManualClock, sink: RecordingSink) -> None:
    """Two runs serving /metrics on two ports could not be told apart by a scraper: neither /metrics nor
    /metrics/summary named its run. Now esper_run_info carries the run's id and directory, and the summary the id."""
    systems: list[ActorSystem] = []
    try:
        for name in ("run-a", "run-b"):
            (tmp_path / name).mkdir()
            system = ActorSystem(clock=clock, sink=sink)
            systems.append(system)
            spec = nissa_spec(NissaConfig(prometheus_port=0), tmp_path / name, clock=clock, sink=sink, run_id=name)
            await system.start(spec)
            endpoint = (await _ask(system.ref(NISSA, Nissa))).endpoint
            assert endpoint is not None
            port = int(endpoint.rsplit(":", 1)[1])
            async with asyncio.timeout(5):
                status, _, body = await http_get(port, "/metrics")
                assert status == 200
                lines = body.decode().splitlines()
                at = lines.index("# TYPE esper_run_info gauge")
                assert lines[at - 1 : at + 2] == [
                    "# HELP esper_run_info Always 1; its labels name the run this endpoint serves (run_id, run_dir).",
                    "# TYPE esper_run_info gauge",
                    f'esper_run_info{{run_dir="{tmp_path / name}",run_id="{name}"}} 1.0',
                ]
                status, _, body = await http_get(port, "/metrics/summary")
                assert status == 200
                assert msgspec.json.decode(body)["run_id"] == name
    finally:
        for system in systems:
            await system.stop()
