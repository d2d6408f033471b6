"""A start that stops half way: what it set up so far, closed in order, and the line that ends its events."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, final

import structlog

if TYPE_CHECKING:
    from esper.assembly import StoreCloser
    from esper.bus_resource import BusResource
    from esper.runtime.lanes import Lanes
    from esper.runtime.system import ActorSystem

_log = structlog.get_logger("esper.run")


@final
class StartUndo:
    """What a start has set up so far, closed in order (the tree, the lanes, the store, the bus) if it goes no
    further."""

    def __init__(self) -> None:
        self.actors: ActorSystem | None = None
        self.lanes: Lanes | None = None
        self.store: StoreCloser | None = None
        self.bus: BusResource | None = None

    async def aclose(self) -> None:
        if self.actors is not None:
            # A start cancelled while the tree starts leaves it starting: stop it before its lanes close under it
            # (the trainer would fail on a closed lane and be restarted, again and again).
            await self.actors.stop()
        if self.lanes is not None:
            await self.lanes.aclose()
        if self.store is not None:
            await self.store.aclose()
        if self.bus is not None:
            await self.bus.aclose()


_STOPPED_BY = "stopped by "


def stopped_by(signal_name: str) -> str:
    """The message a start is cancelled with when a stop signal came (``Task.cancel(msg=...)``): its
    ``run_finished`` line names the signal, as a started run's summary does."""
    return f"{_STOPPED_BY}{signal_name}"


def log_start_abandoned(run_id: str, err: BaseException) -> None:
    """The ``run_finished`` line of a run that ended while starting (a Ctrl-C, a failure), so that the events file
    ends as every run's does and ``esper.tail --follow`` stops; ``signal`` names a stop signal's (see stopped_by),
    the only record of it where no summary.json is written."""
    interrupted = isinstance(err, asyncio.CancelledError | KeyboardInterrupt)
    status = "interrupted" if interrupted else "failed"
    error = None if interrupted else f"{type(err).__name__}: {err}"
    said = str(err.args[0]) if isinstance(err, asyncio.CancelledError) and err.args else ""
    signal = said.removeprefix(_STOPPED_BY) if said.startswith(_STOPPED_BY) else None
    _log.info("run_finished", run_id=run_id, status=status, duration_s=None, error=error, started=False, signal=signal)
