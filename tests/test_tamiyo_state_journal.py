"""Tamiyo's state journal: one entry per epoch-end packet, torn lines skipped, compaction, and the resume choice."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import anyio
import msgspec
import pytest
import structlog.testing

from actors.tamiyo import state_codec
from actors.tamiyo.field_reports import FieldReportWal
from actors.tamiyo.heuristic import HeuristicState
from actors.tamiyo.outcomes import OutcomeState, OutcomeWindow
from actors.tamiyo.state import TamiyoCounters, TamiyoState
from actors.tamiyo.state_journal import (
    DEFAULT_KEEP,
    TamiyoStateJournal,
    entries_to_keep,
    read_entries,
    resume_state,
    state_at,
)
from actors.tamiyo.stop_state import read_stop_state, write_stop_state
from schemas.config import TamiyoConfig
from schemas.domain_enums import PolicyAction
from schemas.runtime import ChildFailed
from schemas.telemetry import TelemetryEvent
from tests._tamiyo_harness import TamiyoHarness, packet, plateau_run

if TYPE_CHECKING:
    from pathlib import Path

    from esper.runtime.events import RecordingSink


def _state(step: int, decisions: int = 0) -> TamiyoState:
    return TamiyoState(
        policy="heuristic",
        policy_version="heuristic-1",
        fallback=HeuristicState(),
        outcomes=OutcomeState(),
        counters=TamiyoCounters(decisions=decisions),
        last_step=step,
    )


async def test_entries_round_trip_and_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "states.jsonl"
    journal = TamiyoStateJournal(path)
    for step in (10, 20, 30):
        await journal.append(step, _state(step, decisions=step))
    whole = path.read_bytes()
    path.write_bytes(whole + whole.splitlines(keepends=True)[0][:40])  # a write cut short by kill -9
    entries, skipped = read_entries(path)
    assert [e.step for e in entries] == [10, 20, 30]
    assert entries[2].state == _state(30, decisions=30)
    assert skipped == 1


def test_a_damaged_line_costs_only_itself(tmp_path: Path) -> None:
    path = tmp_path / "states.jsonl"

    async def write() -> None:
        journal = TamiyoStateJournal(path)
        for step in (10, 20, 30):
            await journal.append(step, _state(step))

    anyio.run(write)
    lines = path.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"decisions":0', b'"decisions":7')  # valid JSON, wrong checksum
    path.write_bytes(b"".join(lines))
    entries, skipped = read_entries(path)
    assert [e.step for e in entries] == [10, 30]
    assert skipped == 1


async def test_the_file_is_compacted_to_the_newest_entries(tmp_path: Path) -> None:
    path = tmp_path / "states.jsonl"
    journal = TamiyoStateJournal(path, keep=3)
    for step in range(1, 8):
        await journal.append(step * 10, _state(step * 10))
    entries, _ = read_entries(path)
    assert [e.step for e in entries] == [40, 50, 60, 70]  # compacted to 3 at the 6th append, then one more
    assert len(path.read_bytes().splitlines()) == 4


async def test_compaction_keeps_the_state_of_every_checkpoint_tolaria_keeps(tmp_path: Path) -> None:
    """With checkpoints 25 epochs apart, the newest 16 entries no longer reached the newest checkpoint: a kill -9
    resume started Tamiyo fresh (tamiyo_state_behind, source fresh) and the run went another way."""
    every, keep_last = 25, 3
    path = tmp_path / "states.jsonl"
    journal = TamiyoStateJournal(path, keep=entries_to_keep(every, keep_last))
    epochs = 120
    for epoch in range(1, epochs + 1):  # one entry an epoch end, 20 steps an epoch
        await journal.append(epoch * 20, _state(epoch * 20))
    kept_checkpoints = [epoch * 20 for epoch in range(every, epochs + 1, every)][-keep_last:]
    for step in kept_checkpoints:
        found = state_at(path, step)
        assert found is not None
        assert found.step == step
    assert entries_to_keep(1, 3) == DEFAULT_KEEP  # the default run keeps what it always did


async def test_state_at_picks_the_newest_entry_at_or_before_a_step_later_lines_winning_ties(tmp_path: Path) -> None:
    path = tmp_path / "states.jsonl"
    journal = TamiyoStateJournal(path)
    await journal.append(10, _state(10, decisions=1))
    await journal.append(20, _state(20, decisions=2))
    await journal.append(20, _state(20, decisions=3))  # a resumed incarnation passing the same step again
    await journal.append(30, _state(30, decisions=4))
    at_25 = state_at(path, 25)
    assert at_25 is not None
    assert at_25.state.counters.decisions == 3
    assert state_at(path, 9) is None
    assert state_at(tmp_path / "missing.jsonl", 100) is None


async def test_resume_state_prefers_the_newest_covering_state_and_the_graceful_one_on_a_tie(tmp_path: Path) -> None:
    path = tmp_path / "states.jsonl"
    journal = TamiyoStateJournal(path)
    await journal.append(16, _state(16, decisions=1))
    await journal.append(32, _state(32, decisions=2))
    graceful = _state(24, decisions=9)
    assert resume_state(graceful, path, None) == (None, "fresh")  # no checkpoint: training starts over
    assert resume_state(graceful, path, 32) == (_state(32, decisions=2), "journal")
    assert resume_state(graceful, path, 30) == (graceful, "graceful_stop")
    assert resume_state(_state(32, decisions=9), path, 32) == (_state(32, decisions=9), "graceful_stop")
    assert resume_state(_state(40), path, 32) == (_state(32, decisions=2), "journal")  # graceful is past the step
    assert resume_state(None, tmp_path / "missing.jsonl", 32) == (None, "fresh")


async def test_the_actor_journals_its_exported_state_after_each_epoch_end_packet(
    tmp_path: Path, sink: RecordingSink
) -> None:
    path = tmp_path / "checkpoints" / "states.jsonl"
    config = TamiyoConfig(plateau_patience_epochs=2, germinate_cooldown_epochs=1)
    packets = plateau_run(epochs=5)
    async with TamiyoHarness(tmp_path, sink, config=config, state_journal=path) as h:
        await h.run(packets)
        final = await h.state()
    entries, skipped = read_entries(path)
    assert skipped == 0
    epoch_ends = [p.global_step for p in packets if p.validation_loss is not None]
    assert [e.step for e in entries] == epoch_ends  # mid-epoch packets are not journaled
    assert entries[-1].state == final
    assert all(e.state.last_step == e.step for e in entries)


async def test_a_journaled_state_resumes_to_the_decisions_of_an_uninterrupted_run(
    tmp_path: Path, sink: RecordingSink
) -> None:
    config = TamiyoConfig(plateau_patience_epochs=2, germinate_cooldown_epochs=1)
    packets = plateau_run(epochs=9)
    cut = 8  # after the epoch-end packet of epoch 3: where a checkpoint would be
    assert packets[cut - 1].validation_loss is not None
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    path = tmp_path / "a" / "states.jsonl"
    async with TamiyoHarness(tmp_path / "a", sink, config=config, state_journal=path) as uninterrupted:
        expected = await uninterrupted.run(packets)
    # As after kill -9: only the journal is left; resume from the entry at the checkpoint's step.
    state, source = resume_state(None, path, packets[cut - 1].global_step)
    assert source == "journal"
    assert state is not None
    async with TamiyoHarness(tmp_path / "b", sink, config=config, state=state) as resumed:
        got = await resumed.run(packets[cut:])
    assert got == expected[cut:]
    assert any(d.command is not None for d in got), "the tail should contain a germination to be a real test"


def test_keep_below_one_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="keep"):
        TamiyoStateJournal(tmp_path / "x", keep=0)


async def test_after_a_rollback_the_controller_decides_the_retrained_epochs_as_before(
    tmp_path: Path, sink: RecordingSink
) -> None:
    """The trainer went back to an epoch end (a rollback, a restart) and trains the next epochs again: the controller
    kept the undone attempt's state, so it took the rerun's epoch end as already seen (not_epoch_end) and its plateau
    counted the undone epochs. It goes back to the state it journaled there and decides as it did the first time."""
    config = TamiyoConfig(plateau_patience_epochs=2, germinate_cooldown_epochs=1)
    packets = plateau_run(epochs=6)
    back = 6  # after the epoch-end packet of epoch 2 (step 30): the fast snapshot the trainer restores
    assert packets[back - 1].validation_loss is not None
    path = tmp_path / "states.jsonl"
    async with TamiyoHarness(tmp_path, sink, config=config, state_journal=path) as h:
        first = await h.run(packets)
        again = await h.run(packets[back:])  # the same steps, trained again after the rollback
    assert again == first[back:]
    assert any(d.command is not None for d in again), "the rerun should germinate to be a real test"
    assert [e.attributes.get("state_step") for e in sink.of_type(TelemetryEvent) if e.name == "tamiyo_rewound"] == [
        packets[back - 1].global_step
    ]


async def test_after_a_rollback_the_rerun_windows_start_from_the_restored_validation_loss(
    tmp_path: Path, sink: RecordingSink
) -> None:
    """The rewound controller kept the undone epoch's validation loss (9.0), so the rerun's field-report windows
    started from it; a resume from the restored epoch end (step 10) starts them from that epoch's (1.0)."""
    path = tmp_path / "states.jsonl"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with TamiyoHarness(tmp_path / "a", sink, state_journal=path) as h:
        await h.run(
            [
                packet(5, 0),
                packet(10, 0, validation_loss=1.0),
                packet(15, 1),
                packet(20, 1, validation_loss=9.0, loss_delta=8.0),  # the failed epoch, then the rollback to step 10
                packet(15, 1),  # the rerun
            ]
        )
        rewound = (await h.state()).outcomes
    entry = state_at(path, 10)
    assert entry is not None
    assert entry.step == 10
    async with TamiyoHarness(tmp_path / "b", sink, state=entry.state) as h:
        await h.run([packet(15, 1)])
        resumed = (await h.state()).outcomes
    assert resumed.windows[-1].start_validation_loss == 1.0
    assert rewound.windows[-1].start_validation_loss == 1.0
    assert (rewound.last_validation_loss, rewound.last_step) == (resumed.last_validation_loss, resumed.last_step)


def _non_finite_state() -> TamiyoState:
    window = OutcomeWindow(
        command_id="c1",
        training_run_id="r",
        decided_on_step=10,
        start_epoch=0,
        issued_at=math.nan,
        policy_version="h",
        action=PolicyAction.NO_OP,
        log_prob=-math.inf,
        start_validation_loss=math.nan,
        hook_latencies_ms=(1.0, math.inf),
        notes="nan",
    )
    return msgspec.structs.replace(
        _state(10),
        fallback=HeuristicState(best_validation_loss=math.nan),
        outcomes=OutcomeState(windows=(window,), last_step=10, last_validation_loss=math.nan),
    )


def _check_non_finite(state: TamiyoState) -> None:
    (window,) = state.outcomes.windows
    assert state.outcomes.last_validation_loss is not None
    assert math.isnan(state.outcomes.last_validation_loss)
    assert state.fallback.best_validation_loss is not None
    assert math.isnan(state.fallback.best_validation_loss)
    assert window.start_validation_loss is not None
    assert math.isnan(window.start_validation_loss)
    assert math.isnan(window.issued_at)
    assert window.log_prob == -math.inf
    assert window.hook_latencies_ms == (1.0, math.inf)
    assert window.notes == "nan"


async def test_the_journal_and_the_stop_state_give_non_finite_floats_back_exactly(tmp_path: Path) -> None:
    """msgspec's JSON writes NaN as null: an optional NaN came back None (a resumed controller then reported and
    decided from a known-nothing loss where the uninterrupted one had NaN) and a plain float NaN did not decode."""
    state = _non_finite_state()
    journal = TamiyoStateJournal(tmp_path / "states.jsonl")
    await journal.append(10, state)
    (entry,), skipped = read_entries(tmp_path / "states.jsonl")
    assert skipped == 0
    _check_non_finite(entry.state)
    write_stop_state(tmp_path / "tamiyo_state.json", state)
    stopped = read_stop_state(tmp_path / "tamiyo_state.json")
    assert stopped is not None
    _check_non_finite(stopped)


def test_a_state_without_non_finite_floats_is_written_as_before() -> None:
    """Journals and stop states written before keep decoding, and finite states keep their bytes."""
    state = msgspec.structs.replace(_state(10), outcomes=OutcomeState(last_step=10, last_validation_loss=1.5))
    assert state_codec.encode(state) == msgspec.json.encode(state)
    old = msgspec.json.encode(msgspec.structs.replace(state, outcomes=OutcomeState(last_validation_loss=math.nan)))
    assert state_codec.decoder(TamiyoState).decode(old).outcomes.last_validation_loss is None


@pytest.mark.parametrize("failing", ["state_journal", "field_report_wal"])
async def test_an_epoch_end_whose_journaling_fails_still_sends_its_decision(
    tmp_path: Path, sink: RecordingSink, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """The WAL or state-journal write raised before the epoch end's Decision was sent: the actor crashed with it
    unsent, so Kasmina never journaled the boundary, the trainer missed the plan and the checkpoint was lost."""

    async def full(*_: object) -> None:
        raise OSError(28, "No space left on device")

    owner = TamiyoStateJournal if failing == "state_journal" else FieldReportWal
    monkeypatch.setattr(owner, "append" if owner is TamiyoStateJournal else "append_many", full)
    config = TamiyoConfig(field_report_window_epochs=1)  # the second epoch end closes the first one's window
    # The state journal fails at the first epoch end; the WAL at the second, the first to have a report to write.
    failing_step = 10 if failing == "state_journal" else 20
    run = [packet(10, 0, validation_loss=1.0), packet(20, 1, validation_loss=1.0)]
    with structlog.testing.capture_logs() as logs:
        async with TamiyoHarness(tmp_path, sink, config=config, state_journal=tmp_path / "states.jsonl") as h:
            sent = [await h.decide(p) for p in run if p.global_step <= failing_step]
    assert [d.decided_on_step for d in sent] == [p.global_step for p in run if p.global_step <= failing_step]
    [not_journaled] = [e for e in logs if e["event"] == "tamiyo_state_not_journaled"]
    assert (not_journaled["step"], not_journaled["reason"], not_journaled["error"]) == (
        failing_step,
        "journal_error",
        "OSError: [Errno 28] No space left on device",
    )
    [crash] = [e for e in sink.of_type(ChildFailed) if e.child == "tamiyo"]
    assert "No space left on device" in crash.error
