"""Conservative mode: immediate entry, exit after clean epochs with both breakers closed, never both in one call."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from actors.tamiyo.conservative import ConservativeMode
from schemas.domain_enums import TelemetryLevel
from schemas.enums import BreakerState, EmergencyLevel
from schemas.telemetry import TelemetryEvent

if TYPE_CHECKING:
    from esper.runtime.events import RecordingSink

CLOSED = BreakerState.CLOSED
L1 = EmergencyLevel.L1_NOTICE


def end(
    mode: ConservativeMode,
    epoch: int,
    *,
    emergency_level: EmergencyLevel = L1,
    inference_breaker: BreakerState = CLOSED,
    metadata_breaker: BreakerState = CLOSED,
    clean: bool = True,
) -> bool:
    return mode.end_epoch(
        epoch=epoch,
        emergency_level=emergency_level,
        inference_breaker=inference_breaker,
        metadata_breaker=metadata_breaker,
        clean=clean,
    )


def names(sink: RecordingSink) -> list[str]:
    return [event.name for event in sink.of_type(TelemetryEvent)]


def test_trigger_enters_immediately_once(sink: RecordingSink) -> None:
    mode = ConservativeMode(sink=sink)
    assert mode.trigger("loss_spike", epoch=3)
    assert mode.active
    assert not mode.trigger("bp_quarantine")
    events = sink.of_type(TelemetryEvent)
    assert [(e.name, e.level, e.attributes["reason"]) for e in events] == [
        ("conservative_entered", TelemetryLevel.WARNING, "loss_spike")
    ]
    assert mode.gauge().value == 1.0
    assert mode.statistics().last_reason == "bp_quarantine"


def test_exit_needs_two_consecutive_clean_epochs(sink: RecordingSink) -> None:
    mode = ConservativeMode(sink=sink)
    mode.trigger("loss_spike")
    assert not end(mode, 1)  # the epoch of the entry is not clean
    assert not end(mode, 2)
    assert mode.active
    assert end(mode, 3)
    assert not mode.statistics().active
    assert names(sink) == ["conservative_entered", "conservative_exited"]
    assert mode.gauge().value == 0.0
    stats = mode.statistics()
    assert (stats.entries, stats.exits, stats.clean_epochs) == (1, 1, 0)


def test_a_trigger_resets_the_clean_count(sink: RecordingSink) -> None:
    mode = ConservativeMode(sink=sink)
    mode.trigger("a")
    end(mode, 1)
    assert not end(mode, 2)  # clean 1
    mode.trigger("b")
    assert not end(mode, 3)  # dirty
    assert not end(mode, 4)  # clean 1
    assert end(mode, 5)


def test_unclean_epoch_from_caller_resets_the_count(sink: RecordingSink) -> None:
    mode = ConservativeMode(sink=sink)
    mode.trigger("a")
    end(mode, 1)
    end(mode, 2)
    assert not end(mode, 3, clean=False)
    assert not end(mode, 4)
    assert end(mode, 5)


@pytest.mark.parametrize("breaker", ["inference_breaker", "metadata_breaker"])
@pytest.mark.parametrize("state", [BreakerState.OPEN, BreakerState.HALF_OPEN])
def test_exit_waits_for_both_breakers_closed(sink: RecordingSink, breaker: str, state: BreakerState) -> None:
    mode = ConservativeMode(sink=sink)
    mode.trigger("timeout_inference")
    end(mode, 1)
    for epoch in range(2, 6):
        if breaker == "inference_breaker":
            assert not end(mode, epoch, inference_breaker=state)
        else:
            assert not end(mode, epoch, metadata_breaker=state)
    assert mode.active
    assert not end(mode, 6)
    assert end(mode, 7)


def test_l2_enters_at_epoch_end_and_never_exits_in_the_same_call(sink: RecordingSink) -> None:
    mode = ConservativeMode(sink=sink, exit_clean_epochs=1)
    assert not end(mode, 1, emergency_level=EmergencyLevel.L2_ELEVATED)
    assert mode.active
    assert names(sink) == ["conservative_entered"]
    assert not end(mode, 2, emergency_level=EmergencyLevel.L3_CONSERVATIVE)
    assert mode.active
    assert end(mode, 3)
    assert names(sink) == ["conservative_entered", "conservative_exited"]


def test_clean_epochs_while_inactive_do_not_bank_an_exit(sink: RecordingSink) -> None:
    mode = ConservativeMode(sink=sink)
    for epoch in range(5):
        assert not end(mode, epoch)
    mode.trigger("loss_spike")
    assert not end(mode, 5)
    assert not end(mode, 6)
    assert end(mode, 7)


def test_exit_clean_epochs_must_be_positive(sink: RecordingSink) -> None:
    with pytest.raises(ValueError, match="exit_clean_epochs"):
        ConservativeMode(sink=sink, exit_clean_epochs=0)
