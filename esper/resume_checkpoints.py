"""Which checkpoint a resume continues from, and whether the run's checkpoints are its own and fit its model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import structlog

from actors.kasmina.journal import JOURNAL_FILENAME, last_boundary_step
from actors.tolaria.checkpoint_codec import checkpoint_run_id, model_shapes
from actors.tolaria.checkpoint_verify import DigestMemo, latest_good, verified_newest_first
from actors.tolaria.checkpoints import CheckpointError
from actors.tolaria.restore_point import choose_restore, journal_check
from esper.runtime.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

_log = structlog.get_logger("esper.resume")


def resume_point(checkpoints: Path, memo: DigestMemo | None = None) -> int | None:
    """The step a resume continues from: the newest good checkpoint whose plans in flight were all decided at
    boundaries Kasmina's journal holds (the trainer's own rule at a restart, actors.tolaria.restore_point). A kill -9
    (or a machine crash: the journal is not fsynced) between a checkpoint and the journaling of its last boundaries
    left the trainer waiting for plans nobody could send again (a stall to its deadline, a missed plan, an
    emergency); an older checkpoint the journal covers resumes exactly. None when there is no checkpoint, or none the
    journal covers (the run then starts over). ``memo``: see DigestMemo. Blocking (reads the journal's tail and
    decodes up to every checkpoint).

    Raises:
        CheckpointError: checkpoints are listed but none is usable.
    """
    newest = latest_good(checkpoints, memo=memo)  # raises, naming the checksums, when none passes
    if newest is None:
        return None
    journaled = last_boundary_step(checkpoints / JOURNAL_FILENAME)
    # latest_good has said which of those newer than its own fail their checksum: said again here, one corrupt file
    # was five warnings a resume.
    point = choose_restore(
        None,
        checkpoints,
        at_most=None,
        covered=journal_check(lambda: journaled),
        journal_known=True,
        checksums_said=newest.global_step,
        memo=memo,
    )
    if point is None:
        # No checkpoint's plans are all in the journal (a kill -9 right after the first checkpoint): training starts
        # over, deterministically, rather than continue into a stall, a missed plan and another run.
        _log.warning(
            "resume_point_uncovered",
            newest_checkpoint=newest.global_step,
            journal_last_boundary=journaled,
            detail="no checkpoint's plans in flight are all in the lifecycle journal: training starts over",
        )
        return None
    step = point.state.global_step
    if step != newest.global_step:
        # Its plans in flight were decided at or before its own step: a journal reaching that far covers them, so
        # the newest was passed over because it did not load (it passed its checksum; a checkpoint_corrupt line says
        # why), not for the journal's sake, as the warning used to say.
        covered = journaled is not None and journaled >= newest.global_step
        _log.warning(
            "resume_point_behind",
            newest_checkpoint=newest.global_step,
            resume_from=step,
            journal_last_boundary=journaled,
            detail=(
                f"the newest checkpoint ({newest.file}) did not load"
                if covered
                else "the newest checkpoint's plans in flight were decided past the lifecycle journal's end"
            ),
        )
    return step


SEED_KEY: Final = ".esper_slot.seed."  # a grafted seed's tensors: the graft log rebuilds them before the weights load


def check_checkpoint_fits(
    checkpoints: Path,
    host_tensors: dict[str, tuple[int, ...] | None],
    host_model: str,
    memo: DigestMemo | None = None,
) -> None:
    """Refuse a resume whose newest good checkpoint's host weights do not fit the host as it builds now (a user model
    whose code or slot_targets changed): the load failed in the trainer and in each of its restarts. Only a checkpoint
    that passes its size and SHA-256 is read, as the trainer loads only those: a damaged newest one's header made a
    false "does not fit" of a run the trainer resumes from the one before. ``memo``: see DigestMemo. Blocking.

    Raises:
        ConfigError: one line naming the first tensor that differs.
    """
    if not checkpoints.is_dir():
        return
    info, data = next(verified_newest_first(checkpoints, memo=memo), (None, b""))
    if info is None:
        return  # none passes its checksum: the trainer's load says so
    path = checkpoints / info.file
    try:
        saved = {key: shape for key, shape in model_shapes(data).items() if SEED_KEY not in key}
    except CheckpointError:
        return  # the trainer's load falls back to an older checkpoint, saying why
    if saved == host_tensors:
        return
    raise ConfigError(
        f"--resume: the checkpoint {path} does not fit tolaria.host_model = {host_model!r} as it builds now:"
        f" {misfit(saved, host_tensors)} ({MODEL_CHANGED} a resume continues the same model)"
    )


MODEL_CHANGED: Final = "was the model's code or its slot targets changed?"


def misfit(saved: Mapping[str, tuple[int, ...] | None], model: Mapping[str, tuple[int, ...] | None]) -> str:
    """The first difference between a checkpoint's model entries and the model's (key -> tensor shape, None: not a
    tensor), as --resume and load_model both say it: "it holds X, which the model no longer has", "the model now has
    X, which it does not hold" or "X is [..] there and [..] in the model"; "" when they are the same."""
    missing = sorted(saved.keys() - model.keys())
    extra = sorted(model.keys() - saved.keys())
    if missing:
        return f"it holds {missing[0]}, which the model no longer has"
    if extra:
        return f"the model now has {extra[0]}, which it does not hold"
    key = next((k for k in sorted(saved) if saved[k] != model[k]), None)
    return "" if key is None else f"{key} is {_shape(saved[key])} there and {_shape(model[key])} in the model"


def check_checkpoint_run(checkpoints: Path, run_id: str) -> None:
    """Refuse a resume whose checkpoints another run wrote (copied in from another run directory): it was continued
    without a word, another run's weights under this run's history. Checkpoints that do not say which run wrote them
    (older ones) pass, and so do those that fail their size or SHA-256: the trainer never loads them (a damaged header
    read as another run's refused a resume the trainer makes from the checkpoint before). Blocking: hashes each
    listed checkpoint.

    Raises:
        ConfigError: one line naming the checkpoint and both runs.
    """
    if not checkpoints.is_dir():
        return
    # Every good one: the trainer falls back to an older checkpoint when the newest does not decode, and a damaged
    # newest copy let another run's older checkpoint through.
    for info, data in verified_newest_first(checkpoints):
        try:
            writer = checkpoint_run_id(data)
        except CheckpointError:
            continue  # the trainer's load falls back to an older checkpoint, saying why
        if writer is not None and writer != run_id:
            raise ConfigError(
                f"--resume: the checkpoint {checkpoints / info.file} was written by run {writer!r}, not by this"
                f" directory's run {run_id!r} (copied from another run directory?); resume that run from its own"
                " directory"
            )


def _shape(shape: tuple[int, ...] | None) -> str:
    return "not a tensor" if shape is None else str(list(shape))
