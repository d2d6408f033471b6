"""Oona's housekeeping: trim messages past their TTL on a timer, so nothing expired lingers in the queues."""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from esper.runtime.child_spec import ChildSpec
from esper.runtime.errors import BusUnavailable
from esper.runtime.ticker import Ticker

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from esper.runtime.bus import Bus
    from esper.runtime.clock import Clock

_log = structlog.get_logger("actors.oona")


def housekeeping_interval_s(ttl_s: float) -> float:
    """Trim ten times per TTL, but at least every 60 s and at most every second."""
    return min(60.0, max(1.0, ttl_s / 10))


def trimmer(bus: Bus) -> Callable[[], Awaitable[None]]:
    """One housekeeping tick: trim ``bus``'s expired messages. A server that does not answer is the publisher's
    outage to report: the tick logs it once per outage and waits for the next one (never fails the actor, whose
    restart would restart every actor after it)."""
    unanswered = False

    async def trim() -> None:
        nonlocal unanswered
        try:
            trimmed = await bus.trim_expired()
        except BusUnavailable as err:
            if not unanswered:
                _log.warning("oona_trim_skipped", actor="oona", error=str(err))
            unanswered = True
            return
        unanswered = False
        if trimmed:
            _log.info("oona_trimmed_expired", actor="oona", trimmed=trimmed)

    return trim


def oona_spec(bus: Bus, *, clock: Clock, ttl_s: float, shutdown_deadline_s: float) -> ChildSpec:
    """The ``oona`` child: a ticker trimming expired messages from ``bus`` (expired ones go to dead letters)."""
    trim = trimmer(bus)
    return ChildSpec(
        "oona",
        lambda: Ticker(trim, interval_s=housekeeping_interval_s(ttl_s), clock=clock),
        shutdown_deadline_s=shutdown_deadline_s,
    )
