"""The pure lifecycle state machine: the transition table, one transition per boundary, settings validation."""

from __future__ import annotations

import itertools
import re
from typing import TYPE_CHECKING

import msgspec
import pytest

from actors.kasmina.lifecycle_settings import EvidenceCadence, LifecycleSettings, StageDwell
from actors.kasmina.lifecycle_table import (
    ALLOWED_TRANSITIONS,
    IllegalTransition,
    LifecycleError,
    SlotRecord,
    TransitionOrderError,
    is_legal,
    new_slot_record,
    transition,
)
from esper.runtime.errors import EsperError
from schemas.enums import SeedLifecycleStage as Stage

if TYPE_CHECKING:
    from collections.abc import Callable

LEGAL = {
    (Stage.UNKNOWN, Stage.DORMANT),
    (Stage.DORMANT, Stage.GERMINATED),
    (Stage.DORMANT, Stage.TERMINATED),
    (Stage.GERMINATED, Stage.TRAINING),
    (Stage.GERMINATED, Stage.CULLED),
    (Stage.GERMINATED, Stage.DORMANT),  # not in REFERENCE.md: a germination whose attach the emergency level refused
    (Stage.TRAINING, Stage.BLENDING),
    (Stage.TRAINING, Stage.CULLED),
    (Stage.BLENDING, Stage.SHADOWING),
    (Stage.BLENDING, Stage.CULLED),
    (Stage.SHADOWING, Stage.PROBATIONARY),
    (Stage.SHADOWING, Stage.CULLED),
    (Stage.PROBATIONARY, Stage.FOSSILIZED),
    (Stage.PROBATIONARY, Stage.CULLED),
    (Stage.FOSSILIZED, Stage.TERMINATED),
    (Stage.CULLED, Stage.EMBARGOED),
    (Stage.EMBARGOED, Stage.RESETTING),
    (Stage.RESETTING, Stage.DORMANT),
}
ALL_PAIRS = list(itertools.product(Stage, Stage))


def record_at(stage: Stage, *, step: int = 3) -> SlotRecord:
    return msgspec.structs.replace(
        new_slot_record("blocks.0", step=step), stage=stage, last_transition_step=step, seed_id="seed-a"
    )


def test_table_covers_every_stage_and_matches_reference() -> None:
    assert set(ALLOWED_TRANSITIONS) == set(Stage)
    assert {(a, b) for a, targets in ALLOWED_TRANSITIONS.items() for b in targets} == LEGAL
    assert ALLOWED_TRANSITIONS[Stage.TERMINATED] == frozenset()


@pytest.mark.parametrize(("from_stage", "to_stage"), ALL_PAIRS, ids=[f"{a.name}->{b.name}" for a, b in ALL_PAIRS])
def test_every_pair_is_legal_or_raises_illegal_transition(from_stage: Stage, to_stage: Stage) -> None:
    record = record_at(from_stage)
    if (from_stage, to_stage) in LEGAL:
        assert is_legal(from_stage, to_stage)
        new = transition(record, to_stage, step=4, epoch=1, reason="test")
        assert new.stage is to_stage
        assert new.entered_stage_step == 4
        assert new.last_transition_step == 4
        assert new.history[-1].from_stage is from_stage
        assert new.history[-1].to_stage is to_stage
        assert new.history[-1].reason == "test"
        assert record.stage is from_stage, "the input record is never changed"
    else:
        assert not is_legal(from_stage, to_stage)
        with pytest.raises(IllegalTransition) as info:
            transition(record, to_stage, step=4, epoch=1, reason="test")
        err = info.value
        assert (err.from_stage, err.to_stage, err.reason, err.slot) == (from_stage, to_stage, "test", "blocks.0")
        assert isinstance(err, LifecycleError)
        assert isinstance(err, EsperError)
        message = str(err)
        assert "\n" not in message
        assert f"{from_stage.name} -> {to_stage.name}" in message
        assert "test" in message


def test_second_transition_at_the_same_step_raises() -> None:
    record = transition(new_slot_record("s", step=0), Stage.DORMANT, step=0, epoch=0, reason="boot")
    germinated = transition(record, Stage.GERMINATED, step=5, epoch=0, reason="germinate")
    with pytest.raises(TransitionOrderError, match="already transitioned at step 5"):
        transition(germinated, Stage.CULLED, step=5, epoch=0, reason="cull")
    culled = transition(germinated, Stage.CULLED, step=6, epoch=0, reason="cull")
    assert [e.to_stage for e in culled.history] == [Stage.DORMANT, Stage.GERMINATED, Stage.CULLED]


def test_transition_at_an_earlier_step_raises() -> None:
    record = record_at(Stage.TRAINING, step=10)
    with pytest.raises(TransitionOrderError, match="before its last transition"):
        transition(record, Stage.BLENDING, step=9, epoch=0, reason="late")


def test_history_records_step_epoch_seed_and_reason() -> None:
    record = transition(record_at(Stage.SHADOWING), Stage.PROBATIONARY, step=40, epoch=2, reason="benefit")
    entry = record.history[-1]
    assert (entry.slot, entry.seed_id, entry.step, entry.epoch, entry.reason) == (
        "blocks.0",
        "seed-a",
        40,
        2,
        "benefit",
    )


def test_dwell_is_configurable_per_stage() -> None:
    dwell = StageDwell(training=7, probationary=11)
    assert dwell.steps(Stage.TRAINING) == 7
    assert dwell.steps(Stage.PROBATIONARY) == 11
    assert dwell.steps(Stage.FOSSILIZED) == 0
    assert dwell.steps(Stage.TERMINATED) == 0


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: StageDwell(training=-1), "StageDwell.training"),
        (lambda: LifecycleSettings(embargo_epochs=-1), "LifecycleSettings.embargo_epochs"),
        (lambda: LifecycleSettings(gate_patience_steps=-3), "LifecycleSettings.gate_patience_steps"),
        (lambda: EvidenceCadence(packet_every_steps=0), "EvidenceCadence.packet_every_steps"),
        (lambda: EvidenceCadence(lag_steps=-1), "EvidenceCadence.lag_steps"),
    ],
)
def test_bad_settings_name_the_field(build: Callable[[], object], field: str) -> None:
    with pytest.raises(ValueError, match=re.escape(field)):
        build()


def test_default_embargo_is_two_epochs() -> None:
    assert LifecycleSettings().embargo_epochs == 2
