"""Where the runtime reports what happened: a typed event sink, with a null, a recording and a mutable sink."""

from __future__ import annotations

from typing import Protocol, TypeVar, final

from schemas.base import Message, Record

E = TypeVar("E", bound=Message | Record)


class EventSink(Protocol):
    """Receives typed runtime events (ChildFailed, BreakerTransition, EmergencySignal, ActorState records, ...).

    emit() is called on the event loop thread and must not block; a sink that does I/O buffers or hands off.
    """

    def emit(self, event: Message | Record) -> None: ...


@final
class NullSink:
    """Discards every event; the default where nobody is listening."""

    def emit(self, event: Message | Record) -> None:
        return None


@final
class RecordingSink:
    """Keeps every event in order; for tests and for in-process observers that poll."""

    def __init__(self) -> None:
        self.events: list[Message | Record] = []

    def emit(self, event: Message | Record) -> None:
        self.events.append(event)

    def of_type(self, kind: type[E]) -> list[E]:
        """The recorded events of one type, in order."""
        return [event for event in self.events if isinstance(event, kind)]


@final
class MutableSink:
    """Forwards to ``sink`` unless ``muted``: a replay of past inputs (a journal, a restored state) must not report
    that past again."""

    def __init__(self, sink: EventSink) -> None:
        self.sink = sink
        self.muted = False

    def emit(self, event: Message | Record) -> None:
        if not self.muted:
            self.sink.emit(event)
