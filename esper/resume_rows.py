"""The epoch ends a resume's checkpoint covers and metrics.csv has no row for, read back from Kasmina's journal."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from actors.kasmina.journal import JOURNAL_FILENAME, JournalBoundary, JournalCorrupt, iter_journal
from actors.tolaria.checkpoints import CheckpointError, read_manifest
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
    last packet (esper.resume.resume_point). ``written``: metrics.csv's rows, epoch (from 1) to step; ``slots``: the
    host's slots in order (the journal keeps the attached seeds' states only: the other slots were dormant). Blocking:
    reads the manifest, and the journal only when a row is missing.

    Raises:
        ConfigError: the manifest or the journal cannot be read (one line naming it; the resume's checks read both
            before, so only a change since gets here).
    """
    try:
        listed = read_manifest(checkpoints)
    except CheckpointError as err:
        raise ConfigError(f"--resume: {err}") from err
    epochs = next((info.epoch for info in listed if info.global_step == resume_step), None)
    last = max((epoch for epoch, step in written.items() if step <= resume_step), default=0)
    if epochs is None or last >= epochs:
        return ()
    missed: list[SystemStatePacket] = []
    journal = checkpoints / JOURNAL_FILENAME
    try:
        for entry in iter_journal(journal):
            if not isinstance(entry, JournalBoundary):
                continue
            packet = entry.packet
            ends_epoch = packet.epoch_progress >= 1.0 and packet.validation_loss is not None
            if ends_epoch and packet.epoch + 1 > last and packet.global_step <= resume_step:
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
