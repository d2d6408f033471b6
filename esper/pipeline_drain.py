"""Draining the controller pipeline at a stop: every packet sent before the checkpoint planned and journaled."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import structlog

from actors.kasmina.actor import KasminaActor
from actors.tamiyo.actor import TamiyoActor
from esper.runtime.errors import EsperError
from schemas.kasmina import GetKasminaStatistics, KasminaStatistics
from schemas.tamiyo import GetTamiyoStatistics, TamiyoStatistics

if TYPE_CHECKING:
    from esper.runtime.system import ActorSystem

_log = structlog.get_logger("esper.assemble")


async def drain_pipeline(actors: ActorSystem, deadline_s: float) -> None:
    """Let Tamiyo and Kasmina handle everything queued, so that every packet the trainer sent before its checkpoint
    is planned and journaled (a resume then resends its plan). An ask after the tells is a barrier; one round plans at
    least one more packet (Kasmina shows Tamiyo the next packet only once the one before is planned), so the rounds go
    on until Kasmina holds no packet or decision, or a round plans nothing (a packet whose decision will not come: the
    rounds spun, hundreds of thousands of asks, until the deadline). Bounded by ``deadline_s``; an actor already gone
    ends it."""
    tamiyo = actors.ref("tamiyo", TamiyoActor)
    kasmina = actors.ref("kasmina", KasminaActor)
    planned: int | None = None
    waiting, pending = "tamiyo", ""
    try:
        async with asyncio.timeout(deadline_s):
            while True:
                waiting = "tamiyo"
                await tamiyo.ask(GetTamiyoStatistics(request_id="drain"), TamiyoStatistics)
                waiting = "kasmina"
                stats = await kasmina.ask(GetKasminaStatistics(request_id="drain"), KasminaStatistics)
                pending = f"; kasmina last held {stats.pending_packets} packets and {stats.pending_decisions} decisions"
                if not (stats.pending_packets or stats.pending_decisions):
                    return
                if stats.boundaries == planned:
                    _log.warning(
                        "pipeline_drain_incomplete",
                        error=f"no progress: {stats.pending_packets} packets and {stats.pending_decisions} decisions"
                        " wait for their partner",
                    )
                    return
                planned = stats.boundaries
    except TimeoutError:
        # Its message is empty: say what the drain waited for, and how long.
        error = (
            f"TimeoutError: the packets queued before the stop were not all planned within {deadline_s} s "
            f"(still waiting for {waiting} to answer its barrier{pending})"
        )
        _log.warning("pipeline_drain_incomplete", error=error)
    except (EsperError, ValueError) as err:
        _log.warning("pipeline_drain_incomplete", error=f"{type(err).__name__}: {err}")
