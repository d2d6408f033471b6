"""The train lane thread's view of the event loop it reports to: stopped (wait for it), closed (stop), or silent."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, final

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable

# How often a lane thread waiting for a stopped loop looks whether it has closed instead (a closed loop runs nothing
# that could wake the wait).
_CLOSED_POLL_S = 0.1
_GONE = "the event loop the trainer reports to has closed: training ends without another checkpoint"


def silent_detail(silent_s: float) -> str:
    """Why a plan was missed when the loop ran nothing for ``silent_s``: the planner never had a turn."""
    return f"the event loop ran nothing for {silent_s:.1f} s (a blocking call in the notebook or the caller's code?)"


class LoopGone(RuntimeError):
    """The event loop the trainer reports to has closed: no plan, receipt or journal entry can follow."""


@final
class LoopWatch:
    """What the lane thread knows of the event loop: ``hold`` before it relies on the loop (a plan's wait, a
    checkpoint), ``silent_s`` to say why a plan did not come.

    Why: with its loop stopped (a kernel between its shutdown request and its kill, a script between two
    ``run_until_complete`` calls) the lane thread would go on training and checkpointing while the planner's journal,
    written on the loop, stands still; checkpoint pruning then removed the last states the journal covers, and a
    resume started over. A loop that runs but is blocked (a notebook cell in ``time.sleep``) still runs: only late.
    ``loop`` None: no loop to watch (a loop driven by hand in tests and benchmarks).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop | None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._loop = loop
        self._clock = clock
        self._lock = threading.Lock()
        # When the oldest marker posted to the loop and not yet run was posted (monotonic s); None: all have run.
        self._posted_at: float | None = None

    def hold(self) -> bool:
        """Block while the loop is stopped; True if it had to (the loop runs again now), False if it was running.

        Raises:
            LoopGone: the loop is (or becomes) closed.
        """
        loop = self._loop
        if loop is None:
            return False
        if loop.is_running():
            self.post()  # a wait on the loop starts (or goes on): silent_s says whether the loop ran anything meanwhile
            return False
        ran = threading.Event()
        try:
            loop.call_soon_threadsafe(ran.set)
        except RuntimeError:
            raise LoopGone(_GONE) from None
        # A stopped loop runs the callback once it runs again: that is the wake-up; the timeout looks for a close.
        while not ran.wait(_CLOSED_POLL_S):
            if loop.is_closed():
                raise LoopGone(_GONE)
        return True

    def post(self) -> None:
        """Post a marker the loop runs at its next iteration (``hold`` does, as a wait starts): ``silent_s`` measures
        from the oldest one still waiting."""
        loop = self._loop
        if loop is None:
            return
        with self._lock:
            if self._posted_at is not None:
                return
            self._posted_at = self._clock()
        try:
            loop.call_soon_threadsafe(self._ran)
        except RuntimeError:
            pass  # closed: silent_s keeps counting, hold raises

    def silent_s(self) -> float:
        """How long the loop has left the oldest marker unrun (0.0: it ran them all): a loop that runs nothing for
        about a decision's deadline is blocked by its own caller, not slow in the planner."""
        with self._lock:
            posted = self._posted_at
        return 0.0 if posted is None else self._clock() - posted

    def _ran(self) -> None:
        with self._lock:
            self._posted_at = None
