"""The run's events as a user reads them: the hub and the sink.

The hub fans them out to events() streams, and the sink stamps and forwards them."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Final, final

import anyio
import msgspec
import structlog

from schemas.base import Message, Record
from schemas.nissa import SeedStageChanged
from schemas.runtime import BreakerTransition, ChildFailed, ChildRestarted, SupervisorEscalated
from schemas.telemetry import TelemetryEvent

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

    from esper.runtime.events import EventSink

_log = structlog.get_logger("esper.session")


@final
class EventHub:
    """Fans typed events out to subscribers, each through its own bounded anyio memory stream.

    emit() never blocks: a subscriber whose buffer is full misses the event, which is counted in ``dropped`` (and
    logged once per subscriber when the hub closes, if it was ever read: a stream made and never iterated is not a
    consumer that fell behind). One slot of each buffer is kept for ``close``'s last event, so a subscriber that fell
    behind still learns how the run ended. Event loop only.
    """

    def __init__(self, buffer_size: int = 1024) -> None:
        self._buffer_size = buffer_size
        self._subscribers: list[_Subscription] = []
        self._closed = False
        self.dropped = 0

    def emit(self, event: Message | Record) -> None:
        for subscription in list(self._subscribers):
            if subscription.stream.statistics().current_buffer_used >= self._buffer_size:
                subscription.missed += 1
                self.dropped += 1
                continue
            try:
                subscription.stream.send_nowait(event)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                # Its reader left (a loop that broke out of events()): this end is closed too, or it was left for the
                # garbage collector to find unclosed (a ResourceWarning).
                subscription.stream.close()
                self._subscribers.remove(subscription)

    def subscribe(self) -> AsyncIterator[Message | Record]:
        """Every event emitted from this call on (not from the first iteration: nothing emitted in between is
        missed), until close()."""
        send, receive = anyio.create_memory_object_stream[Message | Record](max_buffer_size=self._buffer_size + 1)
        subscription = _Subscription(send)
        if self._closed:
            send.close()
        else:
            self._subscribers.append(subscription)
        return _EventStream(receive, subscription)

    def end_streams(self) -> None:
        """End the current subscriptions after the events already buffered; later ones run until ``close``."""
        for subscription in self._subscribers:
            subscription.stream.close()
        self._subscribers.clear()

    def close(self, last: Message | Record | None = None) -> None:
        """End every subscription after the events already buffered and ``last`` (which no subscriber misses)."""
        self._closed = True
        for subscription in self._subscribers:
            if last is not None:
                with contextlib.suppress(anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
                    subscription.stream.send_nowait(last)
            if subscription.missed and subscription.read:
                detail = f"an events() consumer fell {self._buffer_size} events behind"
                _log.warning("events_missed", missed=subscription.missed, detail=detail)
            subscription.stream.close()
        self._subscribers.clear()


@final
class _Subscription:
    __slots__ = ("missed", "read", "stream")

    def __init__(self, stream: MemoryObjectSendStream[Message | Record]) -> None:
        self.stream = stream
        self.missed = 0
        self.read = False  # iterated at least once: only then is a full buffer a consumer that fell behind


@final
class _EventStream:
    """One subscriber's events, as events() returns them: iterate it (``async for``), or let it go.

    Its receiving end is closed when the stream ends, on aclose(), or when the stream is garbage-collected (never
    iterated, or left after a break): the hub then drops the subscription at its next event, and no unclosed stream
    is left for a ResourceWarning.
    """

    __slots__ = ("_receive", "_subscription")

    def __init__(self, receive: MemoryObjectReceiveStream[Message | Record], subscription: _Subscription) -> None:
        self._receive = receive
        self._subscription = subscription

    def __aiter__(self) -> _EventStream:
        return self

    async def __anext__(self) -> Message | Record:
        self._subscription.read = True
        try:
            return await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            self._receive.close()
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        self._receive.close()

    def __del__(self) -> None:
        self._receive.close()


_RUN_STAMPED: Final = (
    TelemetryEvent,
    SeedStageChanged,
    BreakerTransition,
    ChildFailed,
    ChildRestarted,
    SupervisorEscalated,
)
"""The events whose makers do not know the run they are in: the run's sink writes its id into them (the other
published messages carry it already), so observers on a Redis prefix several runs share can tell the runs apart."""


@final
class FanoutSink:
    """An EventSink that forwards each event to several sinks in order; with ``run_id``, an event of the kinds in
    _RUN_STAMPED that names no run is given that one first."""

    def __init__(self, *sinks: EventSink, run_id: str | None = None) -> None:
        self._sinks = sinks
        self._run_id = run_id

    def emit(self, event: Message | Record) -> None:
        if self._run_id is not None and isinstance(event, _RUN_STAMPED) and event.run_id is None:
            event = msgspec.structs.replace(event, run_id=self._run_id)
        for sink in self._sinks:
            sink.emit(event)
