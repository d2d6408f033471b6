"""Records of a whole run: the summary written to summary.json and returned by ``await system.wait()``."""

from __future__ import annotations

from typing import Literal

from schemas.base import Record
from schemas.runtime import ActorState

RunStatus = Literal["completed", "stopped", "interrupted", "failed"]
"""completed: the run ended on its own; stopped: stop() was called; interrupted: SIGINT/SIGTERM; failed: the root
supervisor gave up."""


class RunSummary(Record, frozen=True):
    """The final figures of a run; later issues add training figures as optional fields."""

    run_id: str
    run_dir: str
    status: RunStatus
    started_at: str
    duration_s: float
    exit_code: int
    dead_letters: int
    actors: tuple[ActorState, ...] = ()
    error: str | None = None
