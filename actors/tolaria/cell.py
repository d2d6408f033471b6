"""The TolariaCell: what the Tolaria actors share and keep across their restarts, built once per run."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, final

from actors.tolaria.failure_streak import FailureStreak
from actors.tolaria.plans import PlanInbox
from actors.tolaria.snapshots import SnapshotStore

if TYPE_CHECKING:
    from collections.abc import Callable

    from actors.tolaria.loop import TrainingLoop
    from actors.tolaria.loop_options import LoopResult
    from schemas.config import TolariaConfig
    from schemas.run import TrainingFigures


@final
@dataclass(slots=True)
class TolariaCell:
    """State shared by the Tolaria actors and kept across their restarts; built once per run on the event loop.

    ``finished`` is set (event loop) when training ends for good: completed, halted, or stopped because the run
    asked (``request_run_stop``). A stop that only restarts Tolaria (its supervisor's) is not an end.
    """

    inbox: PlanInbox
    snapshots: SnapshotStore
    incarnations: int = 0
    result: LoopResult | None = None
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    last_loop: TrainingLoop | None = None
    run_stop: str | None = None
    failures: FailureStreak = field(default_factory=FailureStreak)

    def request_run_stop(self, reason: str) -> None:
        """End training for good: the loop finishes its step, checkpoints and returns. Any thread."""
        self.run_stop = reason
        self.inbox.request_stop(reason)

    @property
    def figures(self) -> TrainingFigures | None:
        return None if self.result is None else self.result.figures

    @property
    def ended(self) -> bool:
        return self.finished.is_set()

    async def wait_finished(self) -> TrainingFigures:
        """Wait until training has ended and return its figures. Event loop only."""
        await self.finished.wait()
        assert self.result is not None
        return self.result.figures


def new_cell(config: TolariaConfig, *, on_wait: Callable[[int, tuple[int, ...]], None] | None = None) -> TolariaCell:
    """A fresh cell: an empty plan inbox and a snapshot store with the configured memory cap."""
    return TolariaCell(
        inbox=PlanInbox(on_wait=on_wait),
        snapshots=SnapshotStore(int(config.snapshot_memory_cap_mb * 1024 * 1024)),
    )
