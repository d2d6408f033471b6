"""LoopOutbox: the trainer's Outbox, which schedules each message on the event loop and never blocks training."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar, final

import structlog

from esper.runtime.errors import ActorError, MailboxError
from schemas.boundary import TrainingRestored
from schemas.kasmina import SeedValidationReport

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable, Sequence

    from esper.runtime.events import EventSink
    from schemas.base import Message, Record
    from schemas.boundary import BoundaryApplied
    from schemas.state import SystemStatePacket

_log = structlog.get_logger("actors.tolaria")

T = TypeVar("T")

PlannerNote = SeedValidationReport | TrainingRestored
"""What the step loop tells the planner besides packets and receipts (in order with them)."""


@final
class LoopOutbox:
    """The lane thread's way out: each call schedules delivery on the event loop and returns at once.

    Subscribers (e.g. ``ref.tell_nowait`` of Tamiyo and Kasmina) run on the event loop and must not block; one that
    raises (a full mailbox) loses that packet, which is counted and logged, never retried: training does not wait.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        subscribers: Sequence[Callable[[SystemStatePacket], None]],
        on_applied: Callable[[BoundaryApplied], None] | None,
        sink: EventSink,
        to_planner: Callable[[PlannerNote], None] | None = None,
    ) -> None:
        self._loop = loop
        self._subscribers = tuple(subscribers)
        self._on_applied = on_applied
        self._sink = sink
        self._to_planner = to_planner
        self.dropped = 0
        self.packets = 0

    def packet(self, packet: SystemStatePacket) -> None:
        self._post(self._deliver_packet, packet)

    def applied(self, receipt: BoundaryApplied) -> None:
        if self._on_applied is not None:
            self._post(self._on_applied, receipt)

    def event(self, event: Message | Record) -> None:
        # Validation evidence and restores are the planner's input (in order with packets); restores are logged too.
        if isinstance(event, SeedValidationReport | TrainingRestored) and self._to_planner is not None:
            self._post(self._to_planner, event)
            if isinstance(event, SeedValidationReport):
                return
        self._post(self._sink.emit, event)

    def _post(self, fn: Callable[[T], None], arg: T) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, arg)
        except RuntimeError:
            self.dropped += 1  # the loop has closed: nobody is left to read it

    def _deliver_packet(self, packet: SystemStatePacket) -> None:
        self.packets += 1
        for subscriber in self._subscribers:
            try:
                subscriber(packet)
            except (MailboxError, ActorError) as err:  # a full or stopped subscriber loses it; training never waits
                self.dropped += 1
                _log.warning("state_packet_dropped", error=f"{type(err).__name__}: {err}")
