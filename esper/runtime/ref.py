"""ActorRef, the only handle anyone holds on an actor, and the dead-letter count for what it could not deliver."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Generic, TypeVar, final

import msgspec
import structlog

from esper.runtime.errors import ActorStopped, MailboxClosed, ReplyTypeError

if TYPE_CHECKING:
    from esper.runtime.mailbox import Mailbox, Reply

M_contra = TypeVar("M_contra", bound=msgspec.Struct, contravariant=True)
R = TypeVar("R")

_log = structlog.get_logger("esper.runtime")


@final
class DeadLetters:
    """Counts messages that could not be delivered and logs the first few.

    Dead letters are: tells and asks to a stopped actor, messages still queued when an actor stops for good, and
    replies nobody waits for any more (the asker was cancelled or its deadline passed). One instance per ActorSystem.
    Event-loop only.
    """

    __slots__ = ("_count", "_log_limit")

    def __init__(self, log_limit: int = 10) -> None:
        """Args: log_limit: how many dead letters are logged (structlog warning) before they are only counted."""
        if log_limit < 0:
            raise ValueError(f"log_limit must be >= 0, got {log_limit}")
        self._count = 0
        self._log_limit = log_limit

    @property
    def count(self) -> int:
        return self._count

    def record(self, actor: str, msg: object, reason: str) -> None:
        """Count one undeliverable message; log it if it is among the first log_limit."""
        self._count += 1
        if self._count <= self._log_limit:
            _log.warning(
                "dead_letter",
                actor=actor,
                message_type=type(msg).__name__,
                reason=reason,
                dead_letters=self._count,
                last_logged=self._count == self._log_limit,
            )


@final
class ActorRef(Generic[M_contra]):
    """The address of one supervised actor; stays valid across its restarts (the mailbox outlives incarnations).

    Contravariant in the message type: a ref that accepts ``A | B`` may be used where a ref accepting ``A`` is
    expected. Event-loop only: call it from the loop the actor system runs on.
    """

    __slots__ = ("_dead_letters", "_mailbox", "_name")

    def __init__(self, name: str, mailbox: Mailbox[M_contra], dead_letters: DeadLetters) -> None:
        self._name = name
        self._mailbox = mailbox
        self._dead_letters = dead_letters

    @property
    def name(self) -> str:
        """The actor's path in its tree (``"tolaria"``, ``"prefetch/worker-0"``)."""
        return self._name

    @property
    def stopped(self) -> bool:
        """Whether the actor has stopped taking messages (a tell would be refused and counted as a dead letter)."""
        return self._mailbox.closed

    def __repr__(self) -> str:
        return f"ActorRef({self._name!r})"

    async def tell(self, msg: M_contra) -> None:
        """Send msg without waiting for it to be handled; waits only while the mailbox is full.

        A failure while the actor handles a tell crashes the actor; its supervisor decides (the sender never sees it).
        Cancellation while waiting for space leaves nothing queued.

        Raises:
            MessageTypeError: msg is not in the actor's inbox union.
            ActorStopped: the actor has stopped for good (counted as a dead letter).
        """
        mailbox = self._mailbox
        # Fast path inlined: this is the hot path of every actor conversation.
        if not mailbox._closed and len(mailbox._items) < mailbox._capacity and isinstance(msg, mailbox._accepts):
            mailbox._put(msg, None)
            return
        try:
            await mailbox.send(msg)
        except MailboxClosed as err:
            self._dead_letters.record(self._name, msg, "actor stopped")
            raise ActorStopped(f"actor {self._name} has stopped; tell {type(msg).__name__} refused") from err

    def tell_nowait(self, msg: M_contra) -> None:
        """Send msg without waiting at all.

        Raises:
            MessageTypeError: msg is not in the actor's inbox union.
            MailboxFull: the actor's mailbox is at capacity.
            ActorStopped: the actor has stopped for good (counted as a dead letter).
        """
        try:
            self._mailbox.send_nowait(msg)
        except MailboxClosed as err:
            self._dead_letters.record(self._name, msg, "actor stopped")
            raise ActorStopped(f"actor {self._name} has stopped; tell {type(msg).__name__} refused") from err

    async def ask(self, msg: M_contra, reply_type: type[R]) -> R:
        """Send msg and wait for the handler's reply, which must be an instance of reply_type.

        The caller owns the deadline: wrap the call in ``asyncio.timeout``. A cancelled ask that was already queued
        is skipped by the actor (counted as a dead letter); one being handled completes and its reply is a dead letter.

        Raises:
            MessageTypeError: msg is not in the actor's inbox union.
            ActorStopped: the actor has stopped, or stopped before answering.
            ReplyTypeError: the reply is not an instance of reply_type.
            Exception: whatever the handler raised while answering this ask (the actor keeps running).
        """
        mailbox = self._mailbox
        reply: Reply = asyncio.get_running_loop().create_future()
        if not mailbox._closed and len(mailbox._items) < mailbox._capacity and isinstance(msg, mailbox._accepts):
            mailbox._put(msg, reply)
        else:
            try:
                await mailbox.send(msg, reply)
            except MailboxClosed as err:
                self._dead_letters.record(self._name, msg, "actor stopped")
                raise ActorStopped(f"actor {self._name} has stopped; ask {type(msg).__name__} refused") from err
        result = await reply
        if not isinstance(result, reply_type):
            raise ReplyTypeError(
                f"actor {self._name} answered {type(msg).__name__} with {type(result).__name__}, "
                f"expected {reply_type.__name__}"
            )
        return result
