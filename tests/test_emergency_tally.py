"""Emergency events across a kill -9 and a --resume: each move of the ladder is counted once, by every consumer."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from actors.nissa.metrics import METRICS_COLUMNS, MetricsAggregator
from esper.log_events import StructlogSink
from esper.logs import configure_logging, reset_logging
from esper.report_inputs import read_run_events
from esper.run_history import earlier_tally
from esper.run_tally import RunTally
from esper.runtime.emergency import RESTORED, EmergencyLadder
from esper.runtime.emergency_tally import EmergencyTally, entry_transition
from schemas.config import RunConfig
from schemas.enums import EmergencyLevel
from schemas.runtime import EmergencySignal

if TYPE_CHECKING:
    from pathlib import Path

    from esper.runtime.clock import ManualClock
    from esper.runtime.events import EventSink, RecordingSink
    from schemas.base import Message, Record

L1 = EmergencyLevel.L1_NOTICE
L2 = EmergencyLevel.L2_ELEVATED
L4 = EmergencyLevel.L4_HALT


class Where:
    """Where the simulated run is: what the trainer's position gives the ladder."""

    def __init__(self) -> None:
        self.step, self.epoch = 0, 0

    def at(self, step: int, epoch: int) -> None:
        self.step, self.epoch = step, epoch

    def __call__(self) -> tuple[int, int]:
        return self.step, self.epoch


class Both:
    """An EventSink that hands each event to every sink it holds."""

    def __init__(self, *sinks: EventSink) -> None:
        self._sinks = sinks

    def emit(self, event: Message | Record) -> None:
        for sink in self._sinks:
            sink.emit(event)


def ladder(clock: ManualClock, sink: EventSink, where: Where) -> EmergencyLadder:
    return EmergencyLadder(run_id="r", clock=clock, sink=sink, origin="tolaria", clean_dwell_ticks=3, position=where)


def signal(step: int | None, previous: EmergencyLevel, level: EmergencyLevel, reason: str = "x") -> EmergencySignal:
    return EmergencySignal(
        level=level, previous=previous, reason=reason, origin="tolaria", monotonic_time_ms=0.0, run_id="r", step=step
    )


def test_a_signal_carries_the_step_and_epoch_the_ladder_moved_at(clock: ManualClock, sink: RecordingSink) -> None:
    where = Where()
    moves = ladder(clock, sink, where)
    where.at(80, 5)
    moves.escalate(L2, "failed epoch: epoch_budget", "tolaria")
    for step, epoch in ((96, 6), (112, 7), (128, 8)):
        where.at(step, epoch)
        moves.record_clean(1)
    emitted = sink.of_type(EmergencySignal)
    assert [(s.step, s.epoch, s.previous, s.level) for s in emitted] == [(80, 5, L1, L2), (128, 8, L2, L1)]
    assert emitted[0].transition() == (80, int(L1), int(L2))


def test_a_run_killed_and_resumed_from_an_older_checkpoint_counts_each_move_once(
    tmp_path: Path, clock: ManualClock
) -> None:
    """A kill -9 after the ladder stepped down at step 128, and a --resume from the checkpoint at step 112: the
    resumed session steps down at 128 again. The summary, metrics and the report counted that step down twice (the
    emergency_signal lines carried no step)."""
    logging = configure_logging(tmp_path, console=False)
    try:
        # The killed session: up at step 80 (a failed epoch), down at 128 after three clean epochs; checkpoint at
        # 112 (L2, two clean ticks), killed at 140 before anything else.
        where = Where()
        killed = ladder(clock, StructlogSink(), where)
        where.at(80, 5)
        killed.escalate(L2, "failed epoch: epoch_budget", "tolaria")
        for step, epoch in ((96, 6), (112, 7), (128, 8)):
            where.at(step, epoch)
            killed.record_clean(1)
        (tmp_path / "metrics.csv").write_text(",".join(METRICS_COLUMNS) + "\n", encoding="utf-8")
        before = earlier_tally(tmp_path, RunConfig())
        assert before.emergencies.count == 2

        # The resumed session: the level comes back from the checkpoint (a re-announcement, no event), the step
        # down at 128 comes again, then a new failed epoch at 160.
        tally = RunTally()
        tally.preload([], [], emergencies=before.emergencies)
        where = Where()
        resumed = ladder(clock, Both(StructlogSink(), tally), where)
        where.at(112, 7)
        resumed.restore(L2, 2, "tolaria")
        where.at(128, 8)
        resumed.record_clean(1)
        where.at(160, 10)
        resumed.escalate(L2, "failed epoch: decision_timeout", "tolaria")
    finally:
        logging.close()
        reset_logging()
    assert logging.json_path is not None
    lines = [json.loads(line) for line in logging.json_path.read_text(encoding="utf-8").splitlines()]
    signals = [line for line in lines if line["event"] == "emergency_signal"]
    assert len(signals) == 5  # every line is kept: 2 killed, 1 restored, 2 resumed
    assert [entry_transition(line) for line in signals if line["reason"] != RESTORED] == [
        (80, 1, 2),
        (128, 2, 1),
        (128, 2, 1),
        (160, 1, 2),
    ]
    # Up at 80, down at 128, up at 160: three moves, whoever counts them.
    assert tally.figures(seed_parameters=0).emergency_events == 3
    assert read_run_events(logging.json_path).emergencies.count == 3


def test_a_line_that_names_no_step_counts_every_time() -> None:
    """An older run's lines carry no step: each still counts (nothing to tell a repeat from a new move)."""
    tally = EmergencyTally()
    line = {"event": "emergency_signal", "msg_level": 2, "previous": 1, "reason": "failed epoch: epoch_budget"}
    assert tally.add_entry(line)
    assert tally.add_entry(line)
    assert tally.add_entry({**line, "step": True})  # a malformed step is no step
    assert not tally.add_entry({"event": "epoch_end", "step": 3})
    assert tally.add_entry({**line, "reason": RESTORED})  # a re-announcement: an emergency line, not an event
    # Nor is an L4 halt's checkpoint resumed at L2 (it counted, as if the resume were an emergency).
    resumed = {**line, "step": 24, "previous": 4, "reason": f"{RESTORED}: resumed after an L4 halt, conservative"}
    assert tally.add_entry(resumed)
    assert tally.count == 3


def test_metrics_count_a_halt_delivered_twice_once() -> None:
    aggregator = MetricsAggregator()
    halt = signal(48, L2, L4, "failed_epochs_streak: 3 failed epochs in a row")
    aggregator.observe_emergency(halt)
    aggregator.observe_emergency(halt)
    assert aggregator.registry.value("tolaria.emergency.halts_total") == 1.0
    aggregator.observe_emergency(signal(96, L2, L4))  # another halt (after a resume at L2)
    assert aggregator.registry.value("tolaria.emergency.halts_total") == 2.0
    assert aggregator.registry.value("tolaria.emergency.level") == 4.0
