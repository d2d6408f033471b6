"""A resume's metrics.csv: the epoch-end rows the file misses, and an earlier version's epochs renumbered.

The epoch ends its checkpoint covers and the file has no row for (read back from Kasmina's journal), and an earlier
version's epochs counted from 0 renumbered."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from actors.kasmina.journal import JOURNAL_FILENAME, JournalBoundary, JournalCorrupt, iter_journal
from actors.tolaria.checkpoints import CheckpointError, read_manifest
from esper.runtime.atomic_write import atomic_write_bytes
from esper.runtime.errors import ConfigError
from schemas.enums import SeedLifecycleStage
from schemas.state import SeedState

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

    from schemas.state import SystemStatePacket


def unwritten_epoch_ends(
    checkpoints: Path, written: Mapping[int, int], resume_step: int, slots: Sequence[str]
) -> tuple[SystemStatePacket, ...]:
    """The epoch-end packets of the epochs that ended at or before ``resume_step`` (the checkpoint the resume
    continues from) after metrics.csv's last row, in order: a kill -9 after an epoch's checkpoint and before Nissa
    handled its packet left no row, and the trainer, which continues after it, never sends that packet again.

    Kasmina's journal holds them: a resume continues from a checkpoint only once the journal holds the boundary of its
    last packet (esper.resume_checkpoints.resume_point). ``written``: metrics.csv's rows, epoch to step, matched by
    step (a file an earlier version wrote counts epochs from 0: by their numbers, its last row's epoch was written
    again); ``slots``: the host's slots in order (the journal keeps the attached seeds' states only: the other slots
    were dormant).
    Blocking: reads the manifest, and the journal only when a row is missing.

    Raises:
        ConfigError: the manifest or the journal cannot be read (one line naming it; the resume's checks read both
            before, so only a change since gets here).
    """
    try:
        listed = read_manifest(checkpoints)
    except CheckpointError as err:
        raise ConfigError(f"--resume: {err}") from err
    epochs = next((info.epoch for info in listed if info.global_step == resume_step), None)
    # Distinct steps: an epoch written twice (a file an earlier version damaged, see renumber_from_1) is one epoch.
    rows = {step for step in written.values() if step <= resume_step}
    if epochs is None or len(rows) >= epochs:
        return ()
    last = max(rows, default=-1)  # the step of the last epoch end with a row
    missed: list[SystemStatePacket] = []
    journal = checkpoints / JOURNAL_FILENAME
    try:
        for entry in iter_journal(journal):
            if not isinstance(entry, JournalBoundary):
                continue
            packet = entry.packet
            ends_epoch = packet.epoch_progress >= 1.0 and packet.validation_loss is not None
            if ends_epoch and last < packet.global_step <= resume_step:
                missed.append(_with_dormant_slots(packet, slots))
    except JournalCorrupt as err:
        raise ConfigError(f"--resume: {err}, so the metrics.csv rows it holds cannot be written") from err
    except OSError as err:
        raise ConfigError(
            f"--resume: {journal}: unreadable ({err}), so the metrics.csv rows it holds cannot be written"
        ) from err
    return tuple(missed)


def _with_dormant_slots(packet: SystemStatePacket, slots: Sequence[str]) -> SystemStatePacket:
    """The packet with a state for every slot, as the trainer sent it: planner_view kept the attached seeds' only."""
    held = {state.slot: state for state in packet.seed_states}
    states = [
        held.get(slot) or SeedState(slot=slot, stage=SeedLifecycleStage.DORMANT, layer_depth=depth)
        for depth, slot in enumerate(slots)
    ]
    states += [state for state in packet.seed_states if state.slot not in slots]
    return msgspec.structs.replace(packet, seed_states=tuple(states))


def renumber_from_1(path: Path) -> tuple[int, int]:
    """Renumber the rows of a metrics.csv an earlier version counted from 0 (before 402fcbe) from 1, as this version
    counts and appends them: the resumed rows followed ``5`` with ``7``. Only the leading rows numbered 0, 1, 2 ...
    change (a resume by a version between appended rows counted from 1), and only their first cell; the file is
    replaced atomically. A row right after them with the last one's step is the same epoch end written again (after a
    Ctrl-C, a version between 402fcbe and 986d0e9 took the last 0-counted row's epoch for unwritten and wrote it as the
    next number): it is dropped, and the rows after it, counted from 1, stay. Returns how many rows were renumbered and
    how many dropped ((0, 0): the file counts from 1, or there is none). Blocking.

    Raises:
        OSError: the file cannot be read or replaced.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0, 0
    lines = data.split(b"\n")
    column = _step_column(lines[0])
    count = 0
    dropped = 0
    previous: bytes | None = None
    for index in range(1, len(lines)):
        epoch, comma, rest = lines[index].partition(b",")
        if not comma or epoch != str(count).encode():
            break
        step = _cell(lines[index], column)
        if count and step is not None and step == previous:
            del lines[index]
            dropped = 1
            break
        previous = step
        lines[index] = str(count + 1).encode() + comma + rest
        count += 1
    if count:
        atomic_write_bytes(path, b"\n".join(lines), shared=True)
    return count, dropped


def _step_column(header: bytes) -> int | None:
    """The index of metrics.csv's ``step`` column in its header line; None without one."""
    names = [name.strip() for name in header.split(b",")]
    return names.index(b"step") if b"step" in names else None


def _cell(line: bytes, column: int | None) -> bytes | None:
    if column is None:
        return None
    cells = line.split(b",")
    return cells[column] if column < len(cells) else None
