"""Mailbox: capacity, waiting and refused senders, close, type checks at the sender, cancellation atomicity."""

from __future__ import annotations

import asyncio

import pytest

from esper.runtime.errors import MailboxClosed, MailboxFull, MessageTypeError
from esper.runtime.mailbox import Mailbox
from tests.test_kernel_support import Get, Inc, Stranger


def make(capacity: int = 2) -> Mailbox[Inc | Get]:
    return Mailbox[Inc | Get](capacity, (Inc, Get))


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity"):
        make(0)


async def test_fifo_and_statistics() -> None:
    mailbox = make(4)
    mailbox.send_nowait(Inc(by=1))
    await mailbox.send(Get())
    assert [msg for msg, _ in (await mailbox.receive(), await mailbox.receive())] == [Inc(by=1), Get()]
    stats = mailbox.statistics()
    assert (stats.capacity, stats.depth, stats.sent, stats.received, stats.dropped) == (4, 0, 2, 2, 0)
    assert not stats.closed


def test_send_nowait_raises_when_full_and_counts_dropped() -> None:
    mailbox = make(1)
    mailbox.send_nowait(Inc())
    with pytest.raises(MailboxFull):
        mailbox.send_nowait(Inc(by=2))
    stats = mailbox.statistics()
    assert (stats.depth, stats.dropped) == (1, 1)


async def test_send_waits_until_space() -> None:
    mailbox = make(1)
    mailbox.send_nowait(Inc(by=1))
    entered = asyncio.Event()

    async def sender() -> None:
        entered.set()
        await mailbox.send(Inc(by=2))

    async with asyncio.timeout(1), asyncio.TaskGroup() as tg:
        task = tg.create_task(sender())
        await entered.wait()
        # The sender ran up to its wait in the same step that set the event.
        assert mailbox.statistics().waiting_senders == 1
        assert not task.done()
        assert mailbox.receive_nowait() == (Inc(by=1), None)
    assert mailbox.receive_nowait() == (Inc(by=2), None)


def test_wrong_type_refused_at_sender() -> None:
    mailbox = make()
    with pytest.raises(MessageTypeError, match="Stranger"):
        mailbox.send_nowait(Stranger())  # type: ignore[arg-type]  # the point: a message outside the union
    with pytest.raises(TypeError):
        mailbox.send_nowait(Stranger())  # type: ignore[arg-type]  # MessageTypeError is also a TypeError
    assert mailbox.statistics().sent == 0


async def test_wrong_type_refused_before_waiting() -> None:
    mailbox = make(1)
    mailbox.send_nowait(Inc())
    with pytest.raises(MessageTypeError):
        await mailbox.send(Stranger())  # type: ignore[arg-type]  # refused even though the mailbox is full


async def test_close_fails_pending_senders_and_keeps_queued_messages() -> None:
    mailbox = make(1)
    mailbox.send_nowait(Inc(by=1))
    entered = asyncio.Event()
    outcome: list[str] = []

    async def sender() -> None:
        entered.set()
        try:
            await mailbox.send(Inc(by=2))
        except MailboxClosed:
            outcome.append("closed")

    async with asyncio.timeout(1), asyncio.TaskGroup() as tg:
        tg.create_task(sender())
        await entered.wait()
        mailbox.close()
    assert outcome == ["closed"]
    with pytest.raises(MailboxClosed):
        mailbox.send_nowait(Get())
    assert await mailbox.receive() == (Inc(by=1), None)
    with pytest.raises(MailboxClosed):
        await mailbox.receive()
    assert mailbox.statistics().closed


async def test_close_wakes_waiting_receiver() -> None:
    mailbox = make()
    entered = asyncio.Event()

    async def receiver() -> None:
        entered.set()
        with pytest.raises(MailboxClosed):
            await mailbox.receive()

    async with asyncio.timeout(1), asyncio.TaskGroup() as tg:
        tg.create_task(receiver())
        await entered.wait()
        mailbox.close()


async def test_cancelled_receive_takes_nothing() -> None:
    mailbox = make()
    entered = asyncio.Event()

    async def receiver() -> None:
        entered.set()
        await mailbox.receive()

    async with asyncio.timeout(1), asyncio.TaskGroup() as tg:
        task = tg.create_task(receiver())
        await entered.wait()
        task.cancel()
    mailbox.send_nowait(Inc(by=7))
    assert mailbox.statistics().depth == 1
    assert await mailbox.receive() == (Inc(by=7), None)


async def test_cancelled_woken_sender_hands_its_slot_on() -> None:
    mailbox = make(1)
    mailbox.send_nowait(Inc(by=1))
    first_in, second_in = asyncio.Event(), asyncio.Event()

    async def sender(by: int, entered: asyncio.Event) -> None:
        entered.set()
        await mailbox.send(Inc(by=by))

    async with asyncio.timeout(1), asyncio.TaskGroup() as tg:
        first = tg.create_task(sender(2, first_in))
        await first_in.wait()
        tg.create_task(sender(3, second_in))
        await second_in.wait()
        mailbox.receive_nowait()  # wakes the first sender ...
        first.cancel()  # ... which is cancelled before it can use the slot
    assert mailbox.receive_nowait() == (Inc(by=3), None)
    assert mailbox.statistics().waiting_senders == 0
