"""Kasmina's boundary journal: every planner input in order, so the lifecycle can be rebuilt as of any boundary.

The planner is deterministic in its inputs (see planner.py), so replaying the journal's boundaries (each packet with
the command and the verifier's verdict it was planned with, and which preparations failed) together with the
receipts and validation reports rebuilds the exact lifecycle, evidence windows and seed bookkeeping. That is how a
restarted Kasmina, a Tolaria rollback and ``--resume`` get the seeds' state back: Tolaria's TrainingRestored names
the step, the journal is cut there and replayed.

Without a path the journal lives in memory (tests, a run without checkpoints). With one it lives only in a JSON-lines
file beside the checkpoints, appended as it grows and rewritten when cut, and memory holds just the lines not written
yet: it is read back only to rebuild, which is rare (a restart, a rollback, a resume), while a long run's journal
grows by a couple of kilobytes a packet. File access blocks: call ``load``, ``write_pending``, ``entries``, ``cut``
and advance ``batches`` on a worker thread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, BinaryIO, final

import msgspec

from esper.runtime.atomic_write import atomic_write_chunks, named_os_errors
from esper.runtime.errors import EsperError
from schemas.base import Message
from schemas.boundary import BoundaryApplied
from schemas.control import AdaptationCommand
from schemas.domain_enums import CommandRejectReason
from schemas.kasmina import SeedValidationReport
from schemas.state import StepTimings, SystemStatePacket

if TYPE_CHECKING:
    from collections.abc import Collection, Generator, Iterator
    from pathlib import Path

JOURNAL_FILENAME = "kasmina_journal.jsonl"


class JournalCorrupt(EsperError):
    """A line of the journal file other than the last does not decode: the lifecycle cannot be rebuilt from it."""


class JournalBoundary(Message, frozen=True):
    """One planned boundary: its packet, the command and verdict it was planned with, the failed preparations.

    ``verdict_mac``: with a command, the MAC of its verdict under the run's key (signing.verdict_mac), so a replay
    can tell a verdict reached on arrival was not edited (journal_check); None on the lines of a journal an earlier
    version began, which had none.
    """

    packet: SystemStatePacket
    command: AdaptationCommand | None = None
    security: CommandRejectReason | None = None
    failed: dict[str, str] = msgspec.field(default_factory=dict)
    verdict_mac: str | None = None


class JournalReceipt(Message, frozen=True):
    """A receipt from Tolaria, as it arrived."""

    receipt: BoundaryApplied


class JournalValidation(Message, frozen=True):
    """A validation report from Tolaria, as it arrived."""

    report: SeedValidationReport


JournalEntry = JournalBoundary | JournalReceipt | JournalValidation

_decoder = msgspec.json.Decoder(JournalEntry)
_TAIL_CHUNK = 1 << 18
_encoder = msgspec.json.Encoder()


_NO_TIMINGS = StepTimings(
    data_wait_ms=0.0, host_to_device_ms=0.0, forward_ms=0.0, backward_ms=0.0, optimizer_ms=0.0, step_ms=0.0
)


def planner_view(packet: SystemStatePacket) -> SystemStatePacket:
    """The packet with only what the planner reads of it (its step, epoch and training loss, the seed gradient norms
    and the attached seeds' states; see BoundaryPlanner.begin): the journal keeps this, a third of a three-slot
    packet's size and independent of how many slots stay dormant. Replaying it plans exactly as the full packet did.
    """
    return msgspec.structs.replace(
        packet,
        timings=_NO_TIMINGS,
        layer_gradient_norms={},
        layers=(),
        seed_states=tuple(state for state in packet.seed_states if state.seed_id is not None),
    )


def entry_step(entry: JournalEntry) -> int:
    """The step an entry describes: a boundary's packet step, a receipt's applied step, a report's step."""
    match entry:
        case JournalBoundary():
            return entry.packet.global_step
        case JournalReceipt():
            return entry.receipt.applied_step
        case JournalValidation():
            return entry.report.step


def kept_by_cut(entry: JournalEntry, step: int, unapplied: Collection[int] = ()) -> bool:
    """Whether a cut at ``step`` keeps ``entry``: it describes ``step`` or earlier and is no receipt applied at ``step``
    of a plan of ``unapplied`` (decided_on_steps the restored state still expects: TrainingRestored.unapplied)."""
    if isinstance(entry, JournalReceipt) and entry.receipt.applied_step == step:
        return entry.receipt.decided_on_step not in unapplied
    return entry_step(entry) <= step


@final
class BoundaryJournal:
    """The entries in arrival order (in memory, or in the file when there is a path) and the lines not yet written.
    One writer at a time (the Kasmina actor); see the module docstring for which methods block."""

    def __init__(self, path: Path | None = None, *, fresh: bool = True) -> None:
        """``fresh``: the file belongs to a new run, so ``load`` empties it instead of reading it."""
        self._path = path
        self._fresh = fresh
        self._entries: list[JournalEntry] = []  # without a path only
        self._count = 0
        self._unwritten: list[bytes] = []
        self._loaded = path is None
        self._sealed = True

    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def loaded(self) -> bool:
        return self._loaded

    @property
    def sealed(self) -> bool:
        """Whether new boundaries carry their verdict's MAC: False once ``load`` found a command journaled without one
        (an earlier version began the journal), which is continued so, as a journal whose lines mix MACs and none is
        refused as tampered with."""
        return self._sealed

    def __len__(self) -> int:
        return self._count

    def append(self, entry: JournalEntry) -> None:
        self._count += 1
        if self._path is None:
            self._entries.append(entry)
        else:
            self._unwritten.append(_encoder.encode(entry) + b"\n")

    def entries(self) -> tuple[JournalEntry, ...]:
        """Every entry in order. With a path: the pending lines are written first, then the file is read (blocking).

        Raises: JournalCorrupt: a line other than the last does not decode.
        """
        if self._path is None:
            return tuple(self._entries)
        self.write_pending()
        return tuple(iter_journal(self._path))

    def batches(self, size: int = 2048) -> Generator[list[JournalEntry]]:
        """Every entry in order, ``size`` at a time, decoded as they are read: a long run's journal decoded whole
        held hundreds of megabytes (30 000 entries took a resume from 380 to 580 MB). With a path the pending lines
        are written first, then each batch is read from the file (blocking: advance it on a worker thread).

        Raises: JournalCorrupt: a line other than the last does not decode.
        """
        if self._path is None:
            entries = list(self._entries)
            for start in range(0, len(entries), size):
                yield entries[start : start + size]
            return
        self.write_pending()
        batch: list[JournalEntry] = []
        for entry in iter_journal(self._path):
            batch.append(entry)
            if len(batch) >= size:
                yield batch
                batch = []
        if batch:
            yield batch

    def cut(self, step: int, unapplied: Collection[int] = ()) -> int:
        """Drop every entry describing a step after ``step`` (a boundary, a receipt's applied step, a report's
        step) and the receipts applied at ``step`` of the plans of ``unapplied`` (see ``kept_by_cut``); returns how
        many were dropped. With a path the file is replaced atomically (blocking)."""
        if self._path is None:
            kept = [entry for entry in self._entries if kept_by_cut(entry, step, unapplied)]
            dropped = len(self._entries) - len(kept)
            self._entries = kept
            self._count = len(kept)
            return dropped
        self.write_pending()
        # A restart before the first boundary was written cuts a journal whose directory may not exist yet.
        self._path.parent.mkdir(parents=True, exist_ok=True)
        counts = [0, 0]  # kept, dropped: line by line, so a long journal is never held whole
        atomic_write_chunks(self._path, _kept_lines(self._path, step, unapplied, counts), shared=True)
        self._count = counts[0]
        return counts[1]

    def load(self) -> None:
        """Open the file (once): a fresh journal empties it; otherwise its entries are counted and a torn last line
        (a crash mid-write) is cut off, so the next append starts a line of its own. Blocking.

        Raises: JournalCorrupt: a line other than the last does not decode.
        """
        if self._loaded:
            return
        self._loaded = True
        path = self._path
        assert path is not None
        if self._fresh:
            # Made (or emptied) now, not at the first boundary: a run stopped in its first steps has a checkpoint
            # and must have a journal beside it for --resume, if an empty one.
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")
            return
        if not path.exists():
            return
        with path.open("r+b") as file:
            whole = _whole_lines_end(file)
            if whole != file.seek(0, 2):
                file.truncate(whole)
        count = 0
        for entry in iter_journal(path):
            count += 1
            if isinstance(entry, JournalBoundary) and entry.command is not None and entry.verdict_mac is None:
                self._sealed = False
        self._count = count

    def write_pending(self) -> None:
        """Append the unwritten lines to the file. Blocking."""
        if self._path is None or not self._unwritten:
            return
        data = b"".join(self._unwritten)
        self._unwritten.clear()
        self._path.parent.mkdir(parents=True, exist_ok=True)
        # Named, the close too (it flushes): a full disk's write error says no file.
        with named_os_errors(self._path), self._path.open("ab") as file:
            # No fsync: a process crash keeps the OS buffers; only a machine crash can lose the tail, which a resume
            # then plans again (the torn line is cut off on load).
            file.write(data)


def _whole_lines_end(file: BinaryIO) -> int:
    """The offset just past the file's last newline (0 without one), read from its end in chunks."""
    end = file.seek(0, 2)
    while end > 0:
        start = max(0, end - _TAIL_CHUNK)
        file.seek(start)
        newline = file.read(end - start).rfind(b"\n")
        if newline != -1:
            return start + newline + 1
        end = start
    return 0


def last_boundary_step(path: Path) -> int | None:
    """The step of the last boundary in a journal file, read from its end (a long run's journal is tens of MB); None
    without one. Blocking, read-only."""
    try:
        with path.open("rb") as file:
            for line in _lines_backwards(file):
                try:
                    entry = _decoder.decode(line)
                except msgspec.DecodeError:
                    continue  # the last line may be torn
                if isinstance(entry, JournalBoundary):
                    return entry.packet.global_step
    except FileNotFoundError:
        return None
    return None


def _lines_backwards(file: BinaryIO) -> Iterator[bytes]:
    """The file's lines, last first, read from its end in chunks."""
    end = file.seek(0, 2)
    # The line the last chunk read began inside, as its chunks (last first): joined once its start is read, so a line
    # spanning many chunks costs linear work (prepending each chunk to it was quadratic).
    cut: list[bytes] = []
    while end > 0:
        start = max(0, end - _TAIL_CHUNK)
        file.seek(start)
        chunk = file.read(end - start)
        end = start
        newline = chunk.find(b"\n") if start > 0 else -1
        if start > 0 and newline == -1:
            cut.append(chunk)
            continue
        lines = chunk[newline + 1 :].split(b"\n")
        cut.append(lines.pop())
        lines.append(b"".join(reversed(cut)))
        cut = [chunk[:newline]] if start > 0 else []
        yield from reversed(lines)


def read_journal(path: Path) -> list[JournalEntry]:
    """The entries of a journal file (none if it does not exist); a torn last line is left out. Blocking, read-only.

    Raises:
        JournalCorrupt: a line before the last does not decode (it names the file and the line).
    """
    return list(iter_journal(path))


def iter_journal(path: Path) -> Iterator[JournalEntry]:
    """read_journal one line at a time (a long run's journal is tens of megabytes of file, several times that
    decoded)."""
    for _, entry in _lines(path):
        yield entry


def _lines(path: Path) -> Iterator[tuple[bytes, JournalEntry]]:
    """Each whole line of the file (with its newline) and its entry; a last line without its newline that does not
    decode is a crash's torn write and is left out.

    Raises:
        JournalCorrupt: a line ended by a newline does not decode.
    """
    try:
        file = path.open("rb")
    except FileNotFoundError:
        return
    with file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                entry = _decoder.decode(line)
            except msgspec.DecodeError as err:
                if not line.endswith(b"\n"):
                    return
                raise JournalCorrupt(f"{path} line {number} does not decode ({err})") from err
            yield (line if line.endswith(b"\n") else line + b"\n"), entry


def _kept_lines(path: Path, step: int, unapplied: Collection[int], counts: list[int]) -> Iterator[bytes]:
    """The lines of the entries a cut at ``step`` keeps; counts[0] and counts[1] count the kept and dropped."""
    for line, entry in _lines(path):
        if kept_by_cut(entry, step, unapplied):
            counts[0] += 1
            yield line
        else:
            counts[1] += 1
