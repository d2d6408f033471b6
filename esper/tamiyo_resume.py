"""Where a resumed run's controller starts: Tamiyo's state saved at the stop or journaled, and the resume point."""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from actors.tamiyo.state_journal import STATE_JOURNAL_FILENAME, read_entries, resume_state
from actors.tamiyo.stop_state import STOP_STATE_FILENAME, StopStateDamaged, read_stop_state
from actors.tolaria.checkpoints import CheckpointError, read_manifest
from esper.resume_checkpoints import resume_point
from esper.run_history import summary_problem
from esper.runtime.errors import ConfigError
from schemas.domain_enums import TelemetryLevel
from schemas.telemetry import TelemetryEvent

if TYPE_CHECKING:
    from pathlib import Path

    from actors.tamiyo.state import TamiyoState
    from actors.tolaria.checkpoint_verify import DigestMemo

_log = structlog.get_logger("esper.tamiyo_resume")

TAMIYO_STATE_FILE = STOP_STATE_FILENAME
"""Tamiyo's exported state at the last stop, beside the checkpoints; ``--resume`` starts Tamiyo from it."""


def load_tamiyo_state(path: Path, policy: str) -> tuple[TamiyoState | None, str | None]:
    """Tamiyo's state saved at the last stop and why it was refused: (None, None) when absent; (None, why) when it
    fails its checksum, cannot be read or is the state of a policy other than ``policy`` (the run's: the resume
    check refuses a changed tamiyo.policy, so such a file was made elsewhere, and the controller refused it at its
    build, which ended the resume with exit 1). A warning says why, and the resume takes Tamiyo's journaled state
    instead, as after a kill."""
    try:
        state = read_stop_state(path)
    except StopStateDamaged as err:
        _log.warning("tamiyo_state_unreadable", file=str(path), error=str(err))
        return None, str(err)
    if state is not None and state.policy != policy:
        why = f"it is the state of policy {state.policy!r}, this run's tamiyo.policy is {policy!r}"
        _log.warning("tamiyo_state_unreadable", file=str(path), error=why)
        return None, why
    return state, None


def tamiyo_resume_state(
    checkpoints: Path, first_packet: int, policy: str, memo: DigestMemo | None = None
) -> tuple[TamiyoState | None, str, int | None]:
    """Tamiyo's state for a resume from the checkpoint Tolaria will load: (state, source, that checkpoint's step).
    ``first_packet`` is the step of the run's first state packet: a checkpoint before it leaves the controller
    nothing to restore. ``policy``: the run's tamiyo.policy, the only one whose state the controller takes.
    ``memo``: the start's checks' (see actors.tolaria.checkpoint_verify.DigestMemo).

    Raises:
        ConfigError: checkpoints are listed but none passes its checksum, so there is nothing to resume from; or the
            stop state is damaged and the journal holds no state at or before the checkpoint to use instead; or the
            journal's state is of another policy.
    """
    try:
        step = resume_point(checkpoints, memo) if checkpoints.is_dir() else None
    except CheckpointError as err:
        # Before any actor starts: otherwise the trainer fails to load, again at every restart.
        raise ConfigError(
            f"--resume {checkpoints.parent}: {err}; nothing to resume from (a new run needs another --run-dir)"
        ) from err
    graceful, damaged = load_tamiyo_state(checkpoints / TAMIYO_STATE_FILE, policy)
    state, source = resume_state(graceful, checkpoints / STATE_JOURNAL_FILENAME, step)
    if state is not None and state.policy != policy:
        # Only a journal written elsewhere holds one (each entry is checksummed): the controller would refuse it.
        raise ConfigError(
            f"--resume {checkpoints.parent}: {checkpoints / STATE_JOURNAL_FILENAME}: its controller state at or before"
            f" step {step} is of policy {state.policy!r}, this run's tamiyo.policy is {policy!r}"
        )
    if damaged is not None and state is None and step is not None and step >= first_packet:
        # The controller would start over beside a lifecycle that goes on: the seeds it grew, its cooldowns and the
        # blueprints it was offered forgotten. Said and refused; removing the file accepts exactly that.
        raise ConfigError(
            f"--resume {checkpoints.parent}: {checkpoints / TAMIYO_STATE_FILE}: {damaged}, and"
            f" {STATE_JOURNAL_FILENAME} holds no controller state at or before step {step} to use instead"
            " (remove the file to resume with a fresh controller)"
        )
    return state, source, step


RESUME_POINT = "esper.resume_point"


def resume_point_event(checkpoints: Path, step: int | None, epochs: int, halt: str | None = None) -> TelemetryEvent:
    """Where a resume continues: the checkpoint (its step, epoch and batch), or the start when none is usable; or, when
    that checkpoint ended the run's last epoch (``epochs``: tolaria.epochs), that the resume only finishes the run:
    as a halted run when ``halt`` (the reason of the L4 halt that wrote it, see finishing_halt), and replacing the
    summary.json an earlier session left, when there is one. Blocking: reads the manifest and the summary."""
    if step is None:
        return TelemetryEvent(
            name=RESUME_POINT,
            level=TelemetryLevel.WARNING,
            description="no checkpoint to continue from: training starts again at step 0",
        )
    info = next((e for e in read_manifest(checkpoints) if e.global_step == step), None)
    if info is not None and info.epoch >= epochs and info.batch_index == 0:
        # Killed after its last checkpoint, before its summary: the run's end is all that is left to do.
        where = f"finishing from step {step} ({info.file}, the end of epoch {info.epoch} of {epochs})"
        end = "scoring the test split and writing the summary"
        if halt is not None:
            where += f", which an emergency halt at L4 wrote ({halt})"
            end = "writing the halted run's summary (no test score)"
        stale = summary_problem(checkpoints.parent, info)
        if stale is not None and not stale.startswith("no "):
            end += f", in place of the stale one ({stale})"
        return TelemetryEvent(
            name=RESUME_POINT,
            level=TelemetryLevel.WARNING if halt is not None else TelemetryLevel.INFO,
            description=f"{where}: no step to train; {end}",
        )
    where = ""
    if info is not None:
        batch = f"the start of epoch {info.epoch + 1}" if info.batch_index == 0 else f"epoch {info.epoch + 1}"
        where = f" ({batch}, {info.file})"
    return TelemetryEvent(
        name=RESUME_POINT, level=TelemetryLevel.INFO, description=f"continuing from step {step}{where}"
    )


def recorded_policy_version(directory: Path) -> str | None:
    """The policy version the run in ``directory`` last decided with, as its controller's state records it (for the
    GNN with ``tamiyo.gnn_checkpoint``, ``file-`` and the file's SHA-256 prefix): the state saved at its last stop,
    else its newest journaled state; None when neither can be read. Blocking."""
    checkpoints = directory / "checkpoints"
    try:
        state = read_stop_state(checkpoints / TAMIYO_STATE_FILE)
    except (StopStateDamaged, OSError):
        state = None
    if state is None:
        try:
            entries, _ = read_entries(checkpoints / STATE_JOURNAL_FILENAME)
        except OSError:
            entries = []
        state = max(entries, key=lambda entry: entry.step).state if entries else None
    return state.policy_version if state is not None else None
