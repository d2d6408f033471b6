"""Fixtures of the tests that use the real Redis server: a client, and a fresh key prefix cleaned up after the test."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING, Any, final

import pytest

from tests.test_bus_conformance import connect_redis

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable

    from redis.asyncio import Redis


@pytest.fixture
async def client() -> AsyncIterator[Redis]:
    redis_client = await connect_redis()
    try:
        yield redis_client
    finally:
        await redis_client.aclose()


@pytest.fixture
async def prefix(client: Redis) -> AsyncIterator[str]:
    """A fresh key prefix; every key under it is deleted after the test."""
    name = f"esper-test-{uuid.uuid4().hex}"
    yield name
    keys = [key async for key in client.scan_iter(match=f"{name}:*")]
    if keys:
        await client.unlink(*keys)


class WentOn(Exception):
    """A task cancelled by CancelOnSend sent another Redis command: it lost the cancel."""


@final
class CancelOnSend:
    """Once armed, cancels the task that sends the next Redis command just as the client has sent it: inside
    redis-py's asyncio.wait_for around the send, where Python 3.11 loses a cancel that arrives after the send
    completed (CPython gh-86296), as a stop's deadline or a user's cancel can. Then counts the commands that task
    still sends (``went_on``): a cancelled caller sends none. With ``refuse``, such a command raises WentOn instead of
    reaching the server (a loop that lost the cancel ends, rather than running on)."""

    def __init__(self) -> None:
        self._armed = False
        self._refuse = False
        self._sender: asyncio.Task[Any] | None = None
        self.victim: asyncio.Task[Any] | None = None
        self.went_on = 0

    def arm(self, *, refuse: bool = False) -> None:
        self._armed = True
        self._refuse = refuse

    async def around_send(self, send: Any, connection: Any, command: Any, check_health: bool = True) -> None:
        """Runs in the calling task: notes who sends, and counts a send after the cancel."""
        task = asyncio.current_task()
        if self.victim is not None and task is self.victim:
            self.went_on += 1
            if self._refuse:
                raise WentOn(f"a command sent by {self.victim.get_name()} after it was cancelled")
        self._sender = task
        await send(connection, command, check_health)

    async def around_write(self, write: Any, connection: Any, command: Iterable[bytes]) -> None:
        """Runs in wait_for's inner task: the write is done when the cancel arrives."""
        await write(connection, command)
        if self._armed and self._sender is not None:
            self._armed = False
            self.victim = self._sender
            self.victim.cancel()


@pytest.fixture
def cancel_on_send(monkeypatch: pytest.MonkeyPatch) -> CancelOnSend:
    from redis.asyncio.connection import AbstractConnection  # the optional dependency

    hook = CancelOnSend()
    send, write = AbstractConnection.send_packed_command, AbstractConnection._send_packed_command

    async def send_packed_command(connection: Any, command: Any, check_health: bool = True) -> None:
        await hook.around_send(send, connection, command, check_health)

    async def send_written(connection: Any, command: Iterable[bytes]) -> None:
        await hook.around_write(write, connection, command)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", send_packed_command)
    monkeypatch.setattr(AbstractConnection, "_send_packed_command", send_written)
    return hook
