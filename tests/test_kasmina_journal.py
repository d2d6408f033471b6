"""Kasmina's boundary journal, in its file or in memory: appends, cuts, torn and corrupt lines.

Kept in its file (not in memory) when it has one, cut atomically, a torn last line cut off before the next append, a
corrupt line in the middle refused; the memory-only journal behaves the same."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from actors.kasmina import journal as journal_module
from actors.kasmina.journal import (
    BoundaryJournal,
    JournalBoundary,
    JournalCorrupt,
    JournalReceipt,
    last_boundary_step,
)
from schemas.boundary import BoundaryApplied
from tests._kasmina_harness import make_packet

if TYPE_CHECKING:
    from pathlib import Path


def _receipt(step: int) -> JournalReceipt:
    return JournalReceipt(
        receipt=BoundaryApplied(run_id="r", decided_on_step=step - 8, effect_step=step, applied_step=step)
    )


def _steps(journal: BoundaryJournal) -> list[int]:
    return [e.receipt.applied_step for e in journal.entries() if isinstance(e, JournalReceipt)]


def _filled(path: Path, steps: range) -> BoundaryJournal:
    journal = BoundaryJournal(path)
    journal.load()
    for step in steps:
        journal.append(_receipt(step))
        journal.write_pending()
    return journal


def test_a_file_backed_journal_reads_its_entries_back_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    journal = _filled(path, range(10, 60, 10))
    journal.append(_receipt(60))  # not written yet: entries() writes it first
    assert len(journal) == 6
    assert _steps(journal) == [10, 20, 30, 40, 50, 60]
    assert len(path.read_bytes().splitlines()) == 6
    reopened = BoundaryJournal(path, fresh=False)
    reopened.load()
    assert len(reopened) == 6
    assert reopened.entries() == journal.entries()


def test_cut_drops_later_entries_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    journal = _filled(path, range(10, 60, 10))
    assert journal.cut(30) == 2
    assert len(journal) == 3
    reopened = BoundaryJournal(path, fresh=False)
    reopened.load()
    assert _steps(reopened) == [10, 20, 30]


def test_a_fresh_journal_exists_from_its_load_so_a_run_stopped_before_its_first_boundary_resumes(
    tmp_path: Path,
) -> None:
    """A run stopped in its first steps has a checkpoint; --resume needs the journal beside it, if empty (a trainer
    restart there also cut a journal whose directory did not exist yet)."""
    path = tmp_path / "checkpoints" / "journal.jsonl"
    journal = BoundaryJournal(path)
    journal.load()
    assert path.read_bytes() == b""
    assert journal.cut(0) == 0
    assert path.read_bytes() == b""


@pytest.mark.parametrize("chunk", [7, 1 << 18])
def test_a_torn_last_line_is_cut_off_so_the_next_append_reads_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    """The load reads the file's end in chunks (it read the whole journal, tens of MB, to find its last newline)."""
    monkeypatch.setattr(journal_module, "_TAIL_CHUNK", chunk)
    path = tmp_path / "journal.jsonl"
    _filled(path, range(10, 40, 10))
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"type":"JournalReceipt","rece')  # a crash mid-write
    resumed = BoundaryJournal(path, fresh=False)
    resumed.load()
    assert len(resumed) == 3
    assert path.read_bytes() == whole
    resumed.append(_receipt(40))
    assert _steps(resumed) == [10, 20, 30, 40]


def test_a_corrupt_line_before_the_last_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    _filled(path, range(10, 40, 10))
    lines = path.read_bytes().splitlines()
    path.write_bytes(b"\n".join([lines[0], b"not json", lines[2]]) + b"\n")
    journal = BoundaryJournal(path, fresh=False)
    with pytest.raises(JournalCorrupt, match=rf"^{path} line 2 does not decode \("):
        journal.load()


def test_a_fresh_journal_empties_an_old_file_and_a_memory_journal_needs_none(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    _filled(path, range(10, 40, 10))
    fresh = BoundaryJournal(path)
    fresh.load()
    assert len(fresh) == 0
    assert fresh.entries() == ()
    memory = BoundaryJournal()
    for step in (10, 20, 30):
        memory.append(_receipt(step))
    assert memory.cut(15) == 2
    assert _steps(memory) == [10]
    assert len(memory) == 1


def test_the_last_boundary_step_is_read_from_the_files_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a restarting trainer asks (a long run's journal is tens of MB): read back to front, in small chunks here
    so the boundary sits several chunks before the end, after receipts and a torn line."""
    path = tmp_path / "journal.jsonl"
    assert last_boundary_step(path) is None  # no file yet
    journal = BoundaryJournal(path)
    journal.load()
    assert last_boundary_step(path) is None  # an empty journal
    for step in (4, 8, 12):
        journal.append(JournalBoundary(packet=make_packet(step)))
    for step in range(20, 400, 4):
        journal.append(_receipt(step))
    journal.write_pending()
    with path.open("ab") as file:
        file.write(b'{"type": "JournalBoundary", "packet": {"glob')  # torn by a crash
    monkeypatch.setattr(journal_module, "_TAIL_CHUNK", 300)
    assert last_boundary_step(path) == 12


@pytest.mark.parametrize("chunk", [1, 7, 300, 1 << 18])
def test_the_last_boundary_step_is_found_whatever_the_chunks_cut_and_behind_a_long_torn_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    """Lines spanning many chunks (each boundary here, a long torn last line) are put together from their chunks."""
    path = tmp_path / "journal.jsonl"
    journal = BoundaryJournal(path)
    journal.load()
    for step in (4, 8):
        journal.append(JournalBoundary(packet=make_packet(step)))
    journal.append(_receipt(9))
    journal.write_pending()
    with path.open("ab") as file:
        file.write(b'{"type": "JournalBoundary", "packet": {"global_step": 99, "x": "' + b"x" * 5000)  # torn
    monkeypatch.setattr(journal_module, "_TAIL_CHUNK", chunk)
    assert last_boundary_step(path) == 8
    with path.open("ab") as file:
        file.write(b"\n")  # the torn line, ended: still not an entry
    assert last_boundary_step(path) == 8


@pytest.mark.parametrize("with_file", [True, False])
def test_batches_give_every_entry_in_order_a_few_at_a_time(tmp_path: Path, with_file: bool) -> None:
    """A replay reads the journal a batch at a time (decoded whole, a long run's journal held hundreds of MB)."""
    steps = range(10, 120, 10)
    journal = _filled(tmp_path / "journal.jsonl", steps) if with_file else BoundaryJournal()
    if not with_file:
        for step in steps:
            journal.append(_receipt(step))
    journal.append(_receipt(120))  # pending: written before the file is read
    batches = list(journal.batches(size=5))
    assert [len(b) for b in batches] == [5, 5, 2]
    got = [e.receipt.applied_step for b in batches for e in b if isinstance(e, JournalReceipt)]
    assert got == list(range(10, 130, 10))


def test_a_cut_streams_the_file_and_keeps_a_torn_tail_out(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    journal = _filled(path, range(10, 60, 10))
    with path.open("ab") as file:
        file.write(b'{"type": "JournalRec')  # a crash mid-write
    assert journal.cut(40) == 1  # step 50; the torn line is no entry
    assert path.read_bytes().endswith(b"\n")
    assert _steps(journal) == [10, 20, 30, 40]
    assert len(journal) == 4
