"""What both bus backends share: waking waiting tasks, a clock-bounded wait, an envelope's consumer group.

Waking the tasks that wait on one, a wait bounded by the injected clock, and the consumer group an envelope was
delivered to."""

from __future__ import annotations

import asyncio
import functools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from esper.runtime.bus import Envelope
    from esper.runtime.clock import Clock
    from schemas.base import Message


def wake(waiters: set[asyncio.Future[None]]) -> None:
    """Wake every task waiting in ``wait_woken`` on ``waiters`` (a publish, a delivery, freed space, a close)."""
    for future in waiters:
        if not future.done():
            future.set_result(None)


async def wait_woken(waiters: set[asyncio.Future[None]], clock: Clock, deadline_s: float | None) -> None:
    """Wait until ``wake(waiters)`` or until ``clock`` reaches ``deadline_s`` (None: no deadline)."""
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    waiters.add(future)
    try:
        if deadline_s is None:
            await future
            return
        async with asyncio.TaskGroup() as timers:
            timer = timers.create_task(clock.sleep(max(0.0, deadline_s - clock.now())))
            timer.add_done_callback(functools.partial(_settle, future))
            try:
                await future
            finally:
                timer.cancel()
    finally:
        waiters.discard(future)


def delivered_group(envelope: Envelope[Message]) -> str:
    """The consumer group ``envelope`` was delivered to (what an ack or nack is for).

    Raises:
        ValueError: it was never delivered.
    """
    if envelope.group is None:
        raise ValueError(f"envelope {envelope.message_id} was never delivered, so it cannot be acked or nacked")
    return envelope.group


def _settle(future: asyncio.Future[None], _timer: asyncio.Task[None]) -> None:
    if not future.done():
        future.set_result(None)
