"""esper.resume_rows: the epoch ends a resume's checkpoint covers and metrics.csv lacks, from Kasmina's journal."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import msgspec
import pytest

from actors.kasmina.journal import JOURNAL_FILENAME, BoundaryJournal, JournalBoundary, planner_view
from actors.nissa.metrics import epoch_row
from esper.report_inputs import read_metrics
from esper.resume_rows import renumber_from_1, unwritten_epoch_ends
from esper.runtime.errors import ConfigError
from schemas.enums import SeedLifecycleStage
from schemas.state import SeedState, StepTimings
from tests.nissa_packets import packet, seed

if TYPE_CHECKING:
    from pathlib import Path

    from schemas.state import SystemStatePacket

SLOTS = ("a", "b", "c")
EPOCH_TIMINGS = StepTimings(
    data_wait_ms=0.1, host_to_device_ms=0.2, forward_ms=1.5, backward_ms=3.0, optimizer_ms=0.5, step_ms=5.3
)


def _sent(step: int, epoch: int | None = None) -> SystemStatePacket:
    """A packet as the trainer sends it: a state for every slot (``a`` holds a seed), an epoch end's own figures."""
    states = (
        seed("a", SeedLifecycleStage.BLENDING),
        SeedState(slot="b", stage=SeedLifecycleStage.DORMANT, layer_depth=1),
        SeedState(slot="c", stage=SeedLifecycleStage.DORMANT, layer_depth=2),
    )
    sent = packet(step, epoch=step // 16 if epoch is None else epoch, val=None if epoch is None else 0.5, seeds=states)
    if epoch is None:
        return sent
    return msgspec.structs.replace(
        sent, epoch_timings=EPOCH_TIMINGS, epoch_samples_per_s=700.0, epoch_training_loss=0.25, learning_rate=0.01
    )


def _checkpoints(tmp_path: Path, packets: list[SystemStatePacket], listed: dict[int, int]) -> Path:
    """A checkpoints directory whose journal planned ``packets`` and whose manifest lists step -> epochs trained."""
    checkpoints = tmp_path / "checkpoints"
    journal = BoundaryJournal(checkpoints / JOURNAL_FILENAME)
    journal.load()
    for sent in packets:
        journal.append(JournalBoundary(packet=planner_view(sent)))
    journal.write_pending()
    entries = [
        {"file": f"step-{step}.pt", "sha256": "0" * 64, "size_bytes": 1, "global_step": step, "epoch": epochs}
        | {"batch_index": 0}
        for step, epochs in listed.items()
    ]
    (checkpoints / "manifest.json").write_text(json.dumps({"checkpoints": entries}), encoding="utf-8")
    return checkpoints


def test_the_epoch_ends_after_the_last_row_come_back_as_the_trainer_sent_them(tmp_path: Path) -> None:
    """Epochs 2 and 3 ended at or before the checkpoint (step 48) and metrics.csv stops at epoch 1: their packets,
    whose rows are the rows the live packets made (the journal keeps no dormant slot: it is given back)."""
    sent = [_sent(8), _sent(16, 0), _sent(24), _sent(32, 1), _sent(40), _sent(48, 2), _sent(56), _sent(64, 3)]
    checkpoints = _checkpoints(tmp_path, sent, {32: 2, 48: 3})

    missed = unwritten_epoch_ends(checkpoints, {1: 16}, 48, SLOTS)

    assert [p.global_step for p in missed] == [32, 48]
    assert [epoch_row(p, wall_time_s=1.0) for p in missed] == [
        epoch_row(p, wall_time_s=1.0) for p in (sent[3], sent[5])
    ]
    assert [state.slot for state in missed[0].seed_states] == list(SLOTS)


@pytest.mark.parametrize(
    "written",
    [{1: 16, 2: 32, 3: 48}, {1: 16, 2: 32, 3: 48, 4: 64}],
    ids=["up_to_the_checkpoint", "past_it"],
)
def test_nothing_is_read_when_metrics_csv_reaches_the_checkpoint(tmp_path: Path, written: dict[int, int]) -> None:
    """The usual resume reads no journal (a long run's is tens of MB): a journal that does not decode is not met."""
    checkpoints = _checkpoints(tmp_path, [], {48: 3})
    (checkpoints / JOURNAL_FILENAME).write_bytes(b"not json\n" * 3)
    assert unwritten_epoch_ends(checkpoints, written, 48, SLOTS) == ()


def test_a_checkpoint_inside_an_epoch_misses_only_the_epochs_before_it(tmp_path: Path) -> None:
    """A Ctrl-C's checkpoint (step 40, in epoch 3) covers epoch 2's end: its row is written if missing, none else."""
    sent = [_sent(16, 0), _sent(24), _sent(32, 1), _sent(40)]
    checkpoints = _checkpoints(tmp_path, sent, {40: 2})
    assert unwritten_epoch_ends(checkpoints, {1: 16, 2: 32}, 40, SLOTS) == ()
    assert [p.global_step for p in unwritten_epoch_ends(checkpoints, {1: 16}, 40, SLOTS)] == [32]


def test_a_journal_that_no_longer_decodes_is_one_line(tmp_path: Path) -> None:
    checkpoints = _checkpoints(tmp_path, [_sent(16, 0)], {32: 2})
    with (checkpoints / JOURNAL_FILENAME).open("ab") as journal:
        journal.write(b"{torn\n" + msgspec.json.encode(JournalBoundary(packet=planner_view(_sent(32, 1)))) + b"\n")
    with pytest.raises(ConfigError, match=r"kasmina_journal\.jsonl line 2 does not decode .*metrics\.csv rows"):
        unwritten_epoch_ends(checkpoints, {}, 32, SLOTS)


@pytest.mark.parametrize(
    ("written", "steps"),
    [({0: 16, 1: 32, 2: 48}, []), ({0: 16}, [32, 48])],
    ids=["all_written", "a_kill_after_the_first"],
)
def test_a_metrics_csv_counted_from_0_is_matched_by_step(
    tmp_path: Path, written: dict[int, int], steps: list[int]
) -> None:
    """Versions before 402fcbe counted epochs from 0: by their numbers the last row's epoch was unwritten, and a resume
    after a Ctrl-C wrote it again (``2,48`` then ``3,48``)."""
    sent = [_sent(8), _sent(16, 0), _sent(24), _sent(32, 1), _sent(40), _sent(48, 2)]
    checkpoints = _checkpoints(tmp_path, sent, {48: 3})

    assert [p.global_step for p in unwritten_epoch_ends(checkpoints, written, 48, SLOTS)] == steps


def test_an_earlier_versions_rows_counted_from_0_are_renumbered_in_place(tmp_path: Path) -> None:
    """A resume by a version between appended rows counted from 1 (``5`` then ``7``): only the leading ones change."""
    path = tmp_path / "metrics.csv"
    path.write_bytes(b"epoch,step,val_accuracy\n0,16,0.5\n1,32,0.6\n2,48,0.7\n4,64,0.8\n5,80,0.8\n")

    assert renumber_from_1(path) == (3, 0)
    assert path.read_bytes() == b"epoch,step,val_accuracy\n1,16,0.5\n2,32,0.6\n3,48,0.7\n4,64,0.8\n5,80,0.8\n"
    assert renumber_from_1(path) == (0, 0)  # counted from 1: left alone
    assert renumber_from_1(tmp_path / "none.csv") == (0, 0)


def test_the_report_reads_rows_counted_from_0_as_epochs_from_1(tmp_path: Path) -> None:
    """esper.report said "epochs 7 (last epoch 6, step 140)", and a resume took the host-only baseline's epoch one
    early: both read metrics.csv's epoch column."""
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,val_accuracy\n0,16,0.5\n1,32,0.6\n3,48,0.7\n", encoding="utf-8")

    assert [(row["epoch"], row["step"]) for row in read_metrics(path)] == [(1, 16), (2, 32), (3, 48)]
    path.write_text("epoch,step,val_accuracy\n1,16,0.5\n2,32,0.6\n", encoding="utf-8")
    assert [row["epoch"] for row in read_metrics(path)] == [1, 2]


DAMAGED = (
    "epoch,step,val_accuracy\n"
    + "".join(f"{epoch},{20 * (epoch + 1)},0.5\n" for epoch in range(7))  # 0..6, step 140 last: counted from 0
    + "7,140,0.5\n"  # written again after a Ctrl-C by a version counting from 1 (epoch 7 read as unwritten)
    + "8,160,0.6\n9,180,0.6\n"  # the resumed epochs, counted from 1
)


def test_a_metrics_csv_with_an_epoch_end_written_twice_is_read_and_renumbered_once(tmp_path: Path) -> None:
    """A file a version between 402fcbe and 986d0e9 damaged: rows 0..6, then a row 7 with row 6's step 140. Read
    and renumbered as a run counted from 0, the repeated row became epoch 8, every row after it one too many, and
    the resume counted the epoch twice."""
    path = tmp_path / "metrics.csv"
    path.write_text(DAMAGED, encoding="utf-8")
    expected = [(float(epoch), float(20 * epoch)) for epoch in range(1, 10)]
    assert [(row["epoch"], row["step"]) for row in read_metrics(path)] == expected

    assert renumber_from_1(path) == (7, 1)
    assert [(row["epoch"], row["step"]) for row in read_metrics(path)] == expected
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[7:] == ["7,140,0.5", "8,160,0.6", "9,180,0.6"]
    assert renumber_from_1(path) == (0, 0)


def test_an_epoch_end_written_twice_counts_once(tmp_path: Path) -> None:
    """Two epochs read with one step (a damaged file) counted three rows for two epoch ends: epoch 3's was lost."""
    sent = [_sent(16, 0), _sent(32, 1), _sent(48, 2)]
    checkpoints = _checkpoints(tmp_path, sent, {48: 3})
    assert [p.global_step for p in unwritten_epoch_ends(checkpoints, {1: 16, 2: 32, 3: 32}, 48, SLOTS)] == [48]
