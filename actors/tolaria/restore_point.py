"""Which saved state a starting (or restarting) trainer continues from.

The newest of the fast snapshot and the checkpoints, among those whose plans in flight the planner's journal holds when
that is known."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Literal, final

import structlog

from actors.tolaria.checkpoint_verify import DigestMemo, load_latest
from actors.tolaria.plans import plans_covered

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from actors.tolaria.checkpoints import CheckpointInfo
    from actors.tolaria.snapshots import TrainState

_log = structlog.get_logger("actors.tolaria")


@final
class RestorePoint:
    """A chosen state: the fast snapshot, or a checkpoint with its manifest entry and the seconds its read took."""

    __slots__ = ("info", "read_s", "state", "tier")

    def __init__(
        self, tier: Literal["fast", "full"], state: TrainState, info: CheckpointInfo | None = None, read_s: float = 0.0
    ) -> None:
        self.tier = tier
        self.state = state
        self.info = info
        self.read_s = read_s


def journal_check(journaled_step: Callable[[], int | None] | None) -> Callable[[TrainState], bool]:
    """Whether a saved state's plans in flight were all decided at boundaries the planner's journal holds (its last
    boundary read once, now); every state passes when the journal is not known. Each state refused is logged."""
    if journaled_step is None:
        return lambda state: True
    journaled = journaled_step()

    def covered(state: TrainState) -> bool:
        ok = plans_covered(state.counters.get("expected_plans"), state.global_step, journaled)
        if not ok:
            _log.warning(
                "restore_point_skipped",
                step=state.global_step,
                journal_last_boundary=journaled,
                detail="its plans in flight were decided past the planner journal's end; an older state is used",
            )
        return ok

    return covered


def choose_restore(
    snapshot: TrainState | None,
    directory: Path | None,
    *,
    at_most: int | None,
    covered: Callable[[TrainState], bool],
    journal_known: bool = False,
    checksums_said: int | None = None,
    memo: DigestMemo | None = None,
) -> RestorePoint | None:
    """The newest covered state of ``snapshot`` and the checkpoints in ``directory`` (None: not read) of step
    ``at_most`` or earlier. With none covered: None when the journal is known (``journal_known``: training starts
    over), else the newest of them all. None also when there is nothing to continue from. ``checksums_said``: the
    step the caller's ``latest_good`` has just returned, having warned of the newer checkpoints that fail their
    checksum (see load_latest); an older one the search reaches is said here. ``memo``: see DigestMemo (a start's
    checks only). Blocking (reads checkpoints).

    Raises:
        CheckpointError: checkpoints are listed but none is usable.
    """
    checkpoint: RestorePoint | None = None
    newest: RestorePoint | None = None
    if directory is not None and directory.is_dir():
        started = time.perf_counter()
        found = load_latest(directory, at_most=at_most, checksums_said=checksums_said, memo=memo)
        if found is not None:
            newest = RestorePoint("full", found[0], found[2], time.perf_counter() - started)
        while found is not None and not covered(found[0]) and found[2].global_step > 0:
            found = load_latest(directory, at_most=found[2].global_step - 1, checksums_said=checksums_said, memo=memo)
        if found is not None and covered(found[0]):
            checkpoint = RestorePoint("full", found[0], found[2], time.perf_counter() - started)
    fast = RestorePoint("fast", snapshot) if snapshot is not None else None
    candidates = [
        point for point in (fast, checkpoint) if point is not None and (point is checkpoint or covered(point.state))
    ]
    if not candidates and journal_known:
        # Nothing the journal covers (a crash before the first epoch end's boundary was journaled): training starts
        # over, deterministically, rather than continue into a stall on plans nobody can send again.
        if fast is not None or newest is not None:
            _log.warning("restore_point_uncovered", detail="no saved state's plans are all in the journal: from step 0")
        return None
    if not candidates:
        candidates = [point for point in (fast, newest) if point is not None]
    if not candidates:
        return None
    # The snapshot wins a tie: it is in memory already.
    return max(candidates, key=lambda point: (point.state.global_step, point.tier == "fast"))
