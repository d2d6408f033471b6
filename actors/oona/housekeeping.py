"""Oona's housekeeping: trim messages past their TTL on a timer, so nothing expired lingers in the queues."""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from esper.runtime.supervisor import ChildSpec
from esper.runtime.ticker import Ticker

if TYPE_CHECKING:
    from esper.runtime.bus import Bus
    from esper.runtime.clock import Clock

_log = structlog.get_logger("actors.oona")


def housekeeping_interval_s(ttl_s: float) -> float:
    """Trim ten times per TTL, but at least every 60 s and at most every second."""
    return min(60.0, max(1.0, ttl_s / 10))


def oona_spec(bus: Bus, *, clock: Clock, ttl_s: float, shutdown_deadline_s: float) -> ChildSpec:
    """The ``oona`` child: a ticker trimming expired messages from ``bus`` (expired ones go to dead letters)."""

    async def trim() -> None:
        trimmed = await bus.trim_expired()
        if trimmed:
            _log.info("oona_trimmed_expired", actor="oona", trimmed=trimmed)

    return ChildSpec(
        "oona",
        lambda: Ticker(trim, interval_s=housekeeping_interval_s(ttl_s), clock=clock),
        shutdown_deadline_s=shutdown_deadline_s,
    )
