"""EmergencyLadder: monotone escalation, de-escalation only after a clean dwell, operator reset, one move per call."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from esper.runtime.emergency import EmergencyLadder
from schemas.enums import EmergencyLevel
from schemas.runtime import EmergencySignal

if TYPE_CHECKING:
    from esper.runtime.clock import ManualClock
    from esper.runtime.events import RecordingSink

L1 = EmergencyLevel.L1_NOTICE
L2 = EmergencyLevel.L2_ELEVATED
L3 = EmergencyLevel.L3_CONSERVATIVE
L4 = EmergencyLevel.L4_HALT


def make(clock: ManualClock, sink: RecordingSink, *, ticks: int = 3, dwell_s: float = 0.0) -> EmergencyLadder:
    return EmergencyLadder(
        run_id="run-1", clock=clock, sink=sink, origin="tolaria", clean_dwell_ticks=ticks, clean_dwell_s=dwell_s
    )


def levels(sink: RecordingSink) -> list[tuple[EmergencyLevel, EmergencyLevel]]:
    return [(signal.previous, signal.level) for signal in sink.of_type(EmergencySignal)]


def test_escalation_emits_a_signal_with_run_id_and_clock_time(clock: ManualClock, sink: RecordingSink) -> None:
    ladder = make(clock, sink)
    clock.advance(1.5)
    assert ladder.escalate(L2, "epoch_budget", "tolaria")
    assert sink.events == [
        EmergencySignal(
            level=L2, previous=L1, reason="epoch_budget", origin="tolaria", monotonic_time_ms=1500.0, run_id="run-1"
        )
    ]


def test_escalation_is_monotone(clock: ManualClock, sink: RecordingSink) -> None:
    ladder = make(clock, sink)
    assert ladder.escalate(L3, "breaker_open", "tolaria")
    assert not ladder.escalate(L2, "epoch_budget", "tolaria")
    assert not ladder.escalate(L3, "breaker_open", "tolaria")
    assert ladder.level is L3
    assert ladder.escalate(L4, "failed_epochs_streak", "tolaria")
    assert levels(sink) == [(L1, L3), (L3, L4)]
    assert ladder.statistics().escalations == 2


def test_what_each_level_implies(clock: ManualClock, sink: RecordingSink) -> None:
    ladder = make(clock, sink)
    seen = [(ladder.growth_allowed, ladder.conservative, ladder.adaptation_paused, ladder.halt)]
    for level in (L2, L3, L4):
        ladder.escalate(level, "test", "test")
        seen.append((ladder.growth_allowed, ladder.conservative, ladder.adaptation_paused, ladder.halt))
    assert seen == [
        (True, False, False, False),
        (False, True, False, False),
        (False, True, True, False),
        (False, True, True, True),
    ]
    assert ladder.rollback_required


def test_de_escalation_waits_for_the_clean_dwell_one_level_at_a_time(clock: ManualClock, sink: RecordingSink) -> None:
    """Hysteresis: 3 clean epochs per step down, and each step needs its own full dwell."""
    ladder = make(clock, sink, ticks=3)
    ladder.escalate(L3, "breaker_open", "tolaria")
    assert not ladder.record_clean()
    assert not ladder.record_clean()
    assert ladder.level is L3
    assert ladder.record_clean()
    assert ladder.level is L2
    assert not ladder.record_clean(2)
    assert ladder.record_clean()
    assert ladder.level is L1
    assert not ladder.record_clean(10)
    assert levels(sink) == [(L1, L3), (L3, L2), (L2, L1)]
    signal = sink.of_type(EmergencySignal)[1]
    assert signal.origin == "tolaria"
    assert signal.reason.startswith("clean dwell: 3 clean ticks")


def test_trouble_restarts_the_dwell(clock: ManualClock, sink: RecordingSink) -> None:
    ladder = make(clock, sink, ticks=3)
    ladder.escalate(L2, "epoch_budget", "tolaria")
    ladder.record_clean(2)
    assert not ladder.escalate(L2, "epoch_budget again", "tolaria")
    assert ladder.statistics().clean_ticks == 0
    assert not ladder.record_clean(2)
    assert ladder.record_clean(1)
    assert ladder.level is L1


def test_no_call_both_escalates_and_de_escalates(clock: ManualClock, sink: RecordingSink) -> None:
    """An escalation never lowers the level even with the dwell complete, and record_clean moves at most one step."""
    ladder = make(clock, sink, ticks=2)
    ladder.escalate(L3, "breaker_open", "tolaria")
    ladder.record_clean(1)
    assert not ladder.escalate(L2, "hook_budget", "tolaria")
    assert ladder.level is L3
    assert not ladder.record_clean(1)  # the escalate call restarted the dwell
    assert ladder.record_clean(50)
    assert ladder.level is L2
    assert levels(sink) == [(L1, L3), (L3, L2)]


def test_the_time_half_of_the_dwell_uses_the_clock(clock: ManualClock, sink: RecordingSink) -> None:
    ladder = make(clock, sink, ticks=1, dwell_s=60.0)
    ladder.escalate(L2, "epoch_budget", "tolaria")
    clock.advance(59.0)
    assert not ladder.record_clean(5)
    clock.advance(1.0)
    assert ladder.record_clean(0)
    assert ladder.level is L1


def test_halt_is_left_only_by_an_operator_reset(clock: ManualClock, sink: RecordingSink) -> None:
    ladder = make(clock, sink, ticks=1)
    ladder.escalate(L4, "rollback deadline_exceeded", "tolaria")
    assert not ladder.record_clean(100)
    assert ladder.halt
    assert ladder.reset("operator restarted the run", "operator")
    assert ladder.level is L1
    assert not ladder.reset("again", "operator")
    last = sink.of_type(EmergencySignal)[-1]
    assert (last.previous, last.level, last.origin) == (L4, L1, "operator")
    assert last.reason == "reset: operator restarted the run"
    stats = ladder.statistics()
    assert (stats.escalations, stats.de_escalations, stats.resets) == (1, 0, 2)


def test_invalid_dwell_is_refused(clock: ManualClock, sink: RecordingSink) -> None:
    with pytest.raises(ValueError, match="clean_dwell_ticks must be >= 1, got 0"):
        make(clock, sink, ticks=0)
    ladder = make(clock, sink)
    with pytest.raises(ValueError, match="ticks must be >= 0, got -1"):
        ladder.record_clean(-1)
