"""Tamiyo's state journal: the controller state after every epoch-end packet, so a resume after a crash is exact.

Tolaria checkpoints at epoch ends, right after sending that epoch's last packet. Tamiyo appends its exported state
once it has handled such a packet, keyed by the packet's step, and only then sends that packet's decision; a run
resumed from the checkpoint of step S (after kill -9 as much as after Ctrl-C) starts Tamiyo from the newest entry at
or before S, which is exactly the state an uninterrupted run had when it decided on the packets that followed: a
resume continues only from a checkpoint whose boundary Kasmina journaled, which it does only with that decision.

File format: one line per entry, ``<crc32 of the JSON, 8 hex digits> <JSON of StateEntry>`` (state_codec.py: a NaN stays
NaN, so a resume decides as the uninterrupted run did). A line whose checksum or JSON does not hold (a write torn by the
crash) is skipped; earlier lines are untouched. Appends go through aiofiles from the event loop; the file is rewritten
atomically, keeping the newest ``keep`` entries, once it holds twice that many. No fsync: the entries must survive the
process, not the machine (a power cut loses at most the newest entries, and the resume then starts from an older one,
which the selection reports).
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING, final

import aiofiles
import anyio
import msgspec

from actors.tamiyo import state_codec
from actors.tamiyo.state import TamiyoState
from esper.runtime.atomic_write import atomic_write_bytes, named_os_errors
from schemas.base import Record

if TYPE_CHECKING:
    from pathlib import Path

STATE_JOURNAL_FILENAME = "tamiyo_states.jsonl"
DEFAULT_KEEP = 16

__all__ = [
    "DEFAULT_KEEP",
    "STATE_JOURNAL_FILENAME",
    "StateEntry",
    "TamiyoStateJournal",
    "entries_to_keep",
    "read_entries",
    "resume_state",
    "state_at",
]


class StateEntry(Record, frozen=True):
    """The controller state right after Tamiyo handled the packet of ``step``."""

    step: int
    state: TamiyoState


_DECODER = state_codec.decoder(StateEntry)


def _line(entry: StateEntry) -> bytes:
    payload = state_codec.encode(entry)
    return b"%08x " % zlib.crc32(payload) + payload + b"\n"


def read_entries(path: Path) -> tuple[list[StateEntry], int]:
    """The good entries in file order and how many lines were skipped (torn or damaged). Blocking.

    A missing file has no entries.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], 0
    entries: list[StateEntry] = []
    skipped = 0
    for raw in data.split(b"\n"):
        if not raw:
            continue
        checksum, _, payload = raw.partition(b" ")
        try:
            if int(checksum, 16) != zlib.crc32(payload):
                raise ValueError("checksum")
            entries.append(_DECODER.decode(payload))
        except (ValueError, msgspec.DecodeError):
            skipped += 1
    return entries, skipped


def state_at(path: Path, step: int) -> StateEntry | None:
    """The newest entry whose step is at or before ``step`` (None if there is none). Blocking."""
    entries, _ = read_entries(path)
    best: StateEntry | None = None
    for entry in entries:
        if entry.step <= step and (best is None or entry.step >= best.step):
            best = entry
    return best


def entries_to_keep(checkpoint_every_epochs: int, checkpoint_keep_last: int) -> int:
    """How many entries (one an epoch end) the journal keeps: back to the oldest checkpoint Tolaria keeps, which a
    resume may pick, and no fewer than DEFAULT_KEEP. With checkpoints 25 epochs apart the newest 16 entries no longer
    reached the newest checkpoint: a kill -9 resume started Tamiyo fresh and the run went another way."""
    return max(DEFAULT_KEEP, (checkpoint_keep_last + 1) * max(1, checkpoint_every_epochs) + 1)


@final
class TamiyoStateJournal:
    """Appends StateEntry lines from the event loop; see the module docstring."""

    def __init__(self, path: Path, *, keep: int = DEFAULT_KEEP) -> None:
        if keep < 1:
            raise ValueError(f"keep: expected >= 1, got {keep}")
        self._path = path
        self._keep = keep
        self._lines: int | None = None

    @property
    def path(self) -> Path:
        return self._path

    async def append(self, step: int, state: TamiyoState) -> None:
        """Record ``state`` as the state after the packet of ``step``; compacts the file when it has grown."""
        if self._lines is None:
            entries, skipped = await anyio.to_thread.run_sync(read_entries, self._path)
            self._lines = len(entries) + skipped
            await anyio.to_thread.run_sync(lambda: self._path.parent.mkdir(parents=True, exist_ok=True))
        # Named: a full disk's write error says no file, and the run's failure blamed Tamiyo without one.
        with named_os_errors(self._path):
            async with aiofiles.open(self._path, "ab") as file:
                await file.write(_line(StateEntry(step=step, state=state)))
        self._lines += 1
        if self._lines >= 2 * self._keep:
            self._lines = await anyio.to_thread.run_sync(self._compact)

    def _compact(self) -> int:
        entries, _ = read_entries(self._path)
        kept = entries[-self._keep :]
        atomic_write_bytes(self._path, b"".join(_line(entry) for entry in kept), shared=True)
        return len(kept)


def resume_state(graceful: TamiyoState | None, journal: Path, step: int | None) -> tuple[TamiyoState | None, str]:
    """The state a run resumed from the checkpoint of ``step`` starts Tamiyo with, and where it came from.

    Candidates are the state the last graceful stop saved (``graceful``) and the journal's newest entry at or before
    ``step``; the newer one (by the step it covers) wins, the graceful one on a tie (its open outcome windows were
    already reported as aborted). ``step`` None (no checkpoint: training starts over) gives a fresh controller.
    Blocking (reads the journal).

    Returns: (state or None, "graceful_stop" | "journal" | "fresh").
    """
    if step is None:
        return None, "fresh"
    usable = (
        graceful if graceful is not None and graceful.last_step is not None and graceful.last_step <= step else None
    )
    entry = state_at(journal, step)
    if entry is not None and (usable is None or entry.step > (usable.last_step or 0)):
        return entry.state, "journal"
    if usable is not None:
        return usable, "graceful_stop"
    return None, "fresh"
