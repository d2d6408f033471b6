"""A bounded, typed mailbox: a deque plus waiter futures, checked at the sender, atomic under cancellation."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar, final

import msgspec

from esper.runtime.errors import MailboxClosed, MailboxFull, MessageTypeError
from schemas.runtime import MailboxStatistics

M = TypeVar("M", bound=msgspec.Struct)

Reply = asyncio.Future[object]
"""The future an ask waits on; the actor sets its result (or exception) once it has handled the message."""


@final
class Mailbox(Generic[M]):
    """A bounded FIFO of messages with one receiver (the actor) and any number of senders.

    Every item is an envelope ``(msg, reply)``: ``reply`` is the future an ask waits on, ``None`` for a tell.
    Event-loop only: every method must be called on the loop that the senders and the receiver run on.

    ``close()`` is final for the senders: pending and later sends raise MailboxClosed. Messages already queued stay
    until drained or received; a receive on a closed, empty mailbox raises MailboxClosed.

    ``dropped`` in statistics() counts messages refused by send_nowait because the mailbox was full, plus messages
    discarded unread by drain().
    """

    __slots__ = (
        "_accepts",
        "_capacity",
        "_closed",
        "_dropped",
        "_getter",
        "_items",
        "_putters",
        "_received",
        "_sent",
    )

    def __init__(self, capacity: int, accepts: tuple[type[M], ...]) -> None:
        """Create an empty, open mailbox.

        Args:
            capacity: how many messages it holds before senders wait (send) or are refused (send_nowait); > 0.
            accepts: the members of the inbox union; anything else is refused at the sender.

        Raises:
            ValueError: capacity is not positive or accepts is empty.
        """
        if capacity <= 0:
            raise ValueError(f"capacity must be > 0, got {capacity}")
        if not accepts:
            raise ValueError("accepts must name at least one message type")
        self._accepts = accepts
        self._capacity = capacity
        self._items: deque[tuple[M, Reply | None]] = deque()
        self._getter: asyncio.Future[None] | None = None
        self._putters: deque[asyncio.Future[None]] = deque()
        self._closed = False
        self._sent = 0
        self._received = 0
        self._dropped = 0

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def accepts(self) -> tuple[type[M], ...]:
        return self._accepts

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return len(self._items)

    def check(self, msg: object) -> None:
        """Raise MessageTypeError unless msg is one of the accepted types (a cheap isinstance check)."""
        if not isinstance(msg, self._accepts):
            names = ", ".join(t.__name__ for t in self._accepts)
            raise MessageTypeError(f"mailbox accepts {names}; refused {type(msg).__name__}")

    def send_nowait(self, msg: M, reply: Reply | None = None) -> None:
        """Queue msg (and, for an ask, its reply future) without waiting.

        Raises:
            MessageTypeError: msg is not one of the accepted types.
            MailboxClosed: the mailbox is closed.
            MailboxFull: the mailbox is at capacity (counted as dropped).
        """
        if not isinstance(msg, self._accepts):
            self.check(msg)
        if self._closed:
            raise MailboxClosed(f"mailbox closed; refused {type(msg).__name__}")
        if len(self._items) >= self._capacity:
            self._dropped += 1
            raise MailboxFull(f"mailbox full at capacity {self._capacity}; refused {type(msg).__name__}")
        self._put(msg, reply)

    async def send(self, msg: M, reply: Reply | None = None) -> None:
        """Queue msg, waiting for space if the mailbox is full.

        Cancellation while waiting leaves nothing queued (and passes a wake-up it received on to the next sender).

        Raises:
            MessageTypeError: msg is not one of the accepted types (raised before any waiting).
            MailboxClosed: the mailbox is closed, or closed while this send waited.
        """
        if not isinstance(msg, self._accepts):
            self.check(msg)
        if self._closed:
            raise MailboxClosed(f"mailbox closed; refused {type(msg).__name__}")
        while len(self._items) >= self._capacity:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._putters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    # We were woken for a free slot we will not use: hand the wake-up on.
                    self._wake_putter()
                else:
                    waiter.cancel()
                    try:
                        self._putters.remove(waiter)
                    except ValueError:
                        pass
                raise
        self._put(msg, reply)

    def _put(self, msg: M, reply: Reply | None) -> None:
        self._items.append((msg, reply))
        self._sent += 1
        getter = self._getter
        if getter is not None:
            self._getter = None
            if not getter.done():
                getter.set_result(None)

    def _wake_putter(self) -> None:
        putters = self._putters
        while putters:
            waiter = putters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def receive_nowait(self) -> tuple[M, Reply | None] | None:
        """The oldest envelope, or None if the mailbox is empty (closed or not). Never waits."""
        if not self._items:
            return None
        item = self._items.popleft()
        self._received += 1
        if self._putters:
            self._wake_putter()
        return item

    async def receive(self) -> tuple[M, Reply | None]:
        """Wait for the oldest envelope and take it.

        Atomic under cancellation: a cancelled receive has taken nothing.

        Raises:
            MailboxClosed: the mailbox is closed and empty.
        """
        while not self._items:
            if self._closed:
                raise MailboxClosed("mailbox closed and empty")
            await self.wait_nonempty()
        item = self.receive_nowait()
        assert item is not None
        return item

    async def wait_nonempty(self) -> None:
        """Wait until a message is queued, the mailbox closes, or interrupt() is called; may return spuriously.

        Only one task may wait at a time (the mailbox has one receiver).
        """
        if self._items or self._closed:
            return
        getter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._getter = getter
        try:
            await getter
        finally:
            if self._getter is getter:
                self._getter = None

    def interrupt(self) -> None:
        """Wake a receiver blocked in wait_nonempty() without a message (used to ask an actor to stop)."""
        getter = self._getter
        if getter is not None:
            self._getter = None
            if not getter.done():
                getter.set_result(None)

    def close(self) -> None:
        """Refuse further sends, fail every waiting sender with MailboxClosed and wake the receiver. Idempotent."""
        if self._closed:
            return
        self._closed = True
        while self._putters:
            waiter = self._putters.popleft()
            if not waiter.done():
                waiter.set_exception(MailboxClosed("mailbox closed while the sender waited for space"))
        self.interrupt()

    def reopen(self) -> None:
        """Accept sends again after close() (a restarted actor keeps its mailbox, so refs stay valid)."""
        self._closed = False

    def drain(self) -> list[tuple[M, Reply | None]]:
        """Take every queued envelope at once (counted as dropped); the caller fails their asks."""
        items = list(self._items)
        self._items.clear()
        self._dropped += len(items)
        self._wake_all_putters()
        return items

    def _wake_all_putters(self) -> None:
        # Every woken sender re-checks for space, so waking all of them is safe.
        while self._putters:
            self._wake_putter()

    def statistics(self) -> MailboxStatistics:
        """The mailbox at this instant; never blocks and changes nothing."""
        return MailboxStatistics(
            capacity=self._capacity,
            depth=len(self._items),
            sent=self._sent,
            received=self._received,
            dropped=self._dropped,
            waiting_senders=sum(1 for waiter in self._putters if not waiter.done()),
            closed=self._closed,
        )
