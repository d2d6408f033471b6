"""The Redis bus's Lua scripts on one client: each call one round trip, with server failures as BusUnavailable."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, TypeVar, final

from esper.runtime.bus import Topic
from esper.runtime.bus_redis_lua import ACK, BACKLOG, NACK, PUBLISH, STATS, SUBSCRIBE, TAKE, TRIM
from esper.runtime.bus_waiters import wake
from esper.runtime.errors import BusUnavailable

if TYPE_CHECKING:
    from collections.abc import Awaitable, Sequence

    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

    from esper.runtime.bus import BusLimits
    from esper.runtime.clock import Clock

T = TypeVar("T")


async def cancel_safe(call: Awaitable[T]) -> T:
    """Await one call of the Redis client; a cancel of this task that arrived meanwhile raises CancelledError even
    when the client lost it.

    redis-py sends each command under asyncio.wait_for(socket_timeout) (redis/asyncio/connection.py,
    send_packed_command; redis_client always sets the timeout), and Python 3.11's wait_for returns the inner result
    when its task is cancelled just after the send completed (CPython gh-86296, fixed in 3.12): the call then reads
    its reply and returns as if nothing happened, and the loop that made it (an observer's consume, the publisher
    emptying its queue at a stop past its deadline) goes on. A lost cancel leaves ``cancelling()`` raised, which is
    what this checks, after a reply or a failure alike (a failure would otherwise be taken for an outage).
    """
    task = asyncio.current_task()
    before = 0 if task is None else task.cancelling()
    try:
        result = await call
    except Exception as err:
        if task is not None and task.cancelling() > before:
            raise asyncio.CancelledError from err
        raise
    if task is not None and task.cancelling() > before:
        raise asyncio.CancelledError
    return result


@final
class RedisScripts:
    """The scripts registered on ``client``, called with the arguments every script starts with (the prefix, the
    clock's reading and ``limits``), and a count of the round trips in flight. Event-loop only."""

    def __init__(self, clock: Clock, client: Redis, *, prefix: str, limits: BusLimits) -> None:
        # Imported here: redis is an optional dependency, and a RedisBus exists only where it is installed.
        import redis.exceptions

        # A server that refuses the call (out of memory under noeviction, a read-only replica, a failed snapshot) is
        # as unusable as one that does not answer: the publisher's breaker opens and training goes on.
        self._refusing = redis.exceptions.ResponseError
        # Every other client error too: a timeout, or something at the address that does not speak Redis
        # (InvalidResponse), must not crash the publisher (a restart of it restarted the trainer with it).
        self._unreachable = redis.exceptions.RedisError
        self._clock = clock
        self.by_name: dict[str, AsyncScript] = {
            name: client.register_script(source)
            for name, source in (
                ("publish", PUBLISH),
                ("take", TAKE),
                ("ack", ACK),
                ("nack", NACK),
                ("subscribe", SUBSCRIBE),
                ("backlog", BACKLOG),
                ("trim", TRIM),
                ("stats", STATS),
            )
        }
        self._header = [
            prefix,
            Topic.DEAD_LETTER.value,
            "",  # the clock reading, filled per call
            str(limits.depth_high),
            str(limits.depth_recovery),
            str(limits.capacity),
            repr(limits.emergency_rate_per_min),
            repr(limits.claim_idle_s),
            str(limits.claim_batch),
            str(limits.max_attempts),
            repr(limits.ttl_s),
            f"expired: older than ttl_s={limits.ttl_s}",
        ]
        self._in_flight = 0
        self._idle: set[asyncio.Future[None]] = set()

    @property
    def in_flight(self) -> int:
        """How many Redis round trips this object has started and not yet seen answered."""
        return self._in_flight

    async def run(self, name: str, args: Sequence[str | bytes]) -> object:
        """The reply of script ``name`` called with ``args`` after the common ones.

        Raises:
            BusUnavailable: the server refused the call or did not answer.
        """
        self._in_flight += 1
        try:
            now = repr(float(self._clock.now()))
            call = self.by_name[name](keys=[], args=[*self._header[:2], now, *self._header[3:], *args])
            return await cancel_safe(call)
        except self._refusing as err:
            raise BusUnavailable(f"the Redis server refused the call: {err}") from err
        except self._unreachable as err:
            raise BusUnavailable(f"the Redis server did not answer: {type(err).__name__}: {err}") from err
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                wake(self._idle)

    async def wait_idle(self) -> None:
        """Return once no round trip started by this object is in flight."""
        while self._in_flight:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._idle.add(future)
            try:
                await future
            finally:
                self._idle.discard(future)
