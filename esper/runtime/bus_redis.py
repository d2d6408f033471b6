"""The Redis Streams Oona backend: one stream per topic, consumer groups, every operation one atomic Lua script."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Union, final

import msgspec
import structlog

from esper.runtime.bus import (
    ALL_TOPICS,
    DROPPABLE_TYPES,
    TOPIC_LANES,
    BusLimits,
    BusStatistics,
    Envelope,
    PublishResult,
    PublishStatus,
    Topic,
    TopicStatistics,
    route,
    signal_origin_key,
)
from esper.runtime.bus_redis_reply import (
    read_envelope,
    reading,
    reply_int,
    reply_list,
    reply_text,
    topic_statistics,
    zero_statistics,
)
from esper.runtime.bus_redis_scripts import RedisScripts, cancel_safe
from esper.runtime.bus_waiters import delivered_group, wait_woken, wake
from esper.runtime.errors import BusClosed, PayloadTooLarge, UnknownTopic
from schemas.base import Message
from schemas.enums import MessagePriority
from schemas.registry import message_types
from schemas.runtime import EmergencySignal

if TYPE_CHECKING:
    import asyncio
    from collections.abc import AsyncIterator, Iterable, Sequence

    from redis.asyncio import Redis

    from esper.runtime.clock import Clock
    from schemas.enums import BusMessageType

DEFAULT_MAX_PAYLOAD_BYTES = 1_048_576
_log = structlog.get_logger("esper.runtime.bus_redis")

# The userinfo runs to the last "@" before the query or fragment (urllib splits there): a user name or a password may
# hold "@", a password "/".
_PASSWORD = re.compile(r"://([^\s:/?#]*):[^\s?#]*@")
_PASSWORD_PARAMETER = re.compile(r"([?&]password=)[^&\s#]*", re.IGNORECASE)  # redis-py reads ?password= too


def schema_message_types() -> tuple[type[Message], ...]:
    """Every Message type of the schemas package: what a RedisBus decodes by default."""
    return message_types()


@final
class RedisBus:
    """The Redis Streams Oona backend (implements esper.runtime.bus.Bus); see that Protocol for the contract.

    Event-loop only. The bus owns no tasks and does not own ``client`` (the caller closes it; open_redis_bus() does
    both). Several RedisBus objects, in one process or many, sharing a server and a ``prefix`` form one bus; they
    must read comparable clocks (one host's monotonic clock, or wall time across hosts), since publish stamps, claim
    deadlines, TTL and the emergency bucket all use the injected clock rather than Redis's own.

    Waiting: a local publish, ack or trim wakes this object's waiters at once; work done by other processes is seen
    by polling, backing off from ``poll_min_s`` to ``poll_max_s`` on the injected clock. A waiting receive also wakes
    when the next pending message becomes claimable. statistics() returns the figures the last script of this object
    reported for each topic (Redis counters are shared by the whole bus); fetch_statistics() reads them fresh.

    Cancellation: a cancelled wait leaves the bus unchanged. A receive cancelled while its script is in flight may
    have taken a message: it stays pending for that consumer and is claimed again after claim_idle_s (at least once).
    A cancel the Redis client loses (see cancel_safe) raises CancelledError when the call's reply or failure comes.
    """

    def __init__(
        self,
        clock: Clock,
        client: Redis,
        *,
        prefix: str,
        topics: Iterable[Topic] = ALL_TOPICS,
        limits: BusLimits | None = None,
        message_types: Iterable[type[Message]] | None = None,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        poll_min_s: float = 0.002,
        poll_max_s: float = 0.05,
    ) -> None:
        """Args:
        clock: the time source for publish stamps, claim deadlines, TTL, the emergency bucket and polling.
        client: a redis.asyncio.Redis made with decode_responses=False (payloads are binary).
        prefix: the key prefix; every key of this bus starts with f"{prefix}:".
        topics: the topics of this bus; the dead-letter topic is always added.
        limits: depths, rates and timings; BusLimits() if None. Every process on the prefix should use the same.
        message_types: the Message types payloads may have (decoding is closed over them);
            schema_message_types() if None.
        max_payload_bytes: the largest encoded payload publish accepts.
        poll_min_s, poll_max_s: the backoff bounds of waits for other processes' work, in seconds.

        Raises:
            ValueError: an empty prefix, a client that decodes responses, or bad sizes or poll bounds.
        """
        if not prefix:
            raise ValueError("prefix must be non-empty")
        if client.connection_pool.connection_kwargs.get("decode_responses"):
            raise ValueError("client must be made with decode_responses=False: payloads are binary")
        if max_payload_bytes < 1 or not 0 < poll_min_s <= poll_max_s:
            raise ValueError(
                f"need max_payload_bytes >= 1 and 0 < poll_min_s <= poll_max_s, got "
                f"{max_payload_bytes}, {poll_min_s}, {poll_max_s}"
            )
        self._clock = clock
        self._client = client
        self._prefix = prefix
        self._limits = limits if limits is not None else BusLimits()
        self._scripts = RedisScripts(clock, client, prefix=prefix, limits=self._limits)
        names = {*topics, Topic.DEAD_LETTER}
        self._topics = frozenset(topic for topic in Topic if topic in names)
        types = tuple(dict.fromkeys(message_types if message_types is not None else schema_message_types()))
        if not types:
            raise ValueError("message_types must name at least one Message type")
        self._types = frozenset(types)
        self._encoder = msgspec.msgpack.Encoder()
        # The decoder is closed over the union, so a payload decodes back to its own schema by its type tag.
        self._decoder = msgspec.msgpack.Decoder(Union[types])  # noqa: UP007 - a union built at runtime has no `|` form
        self._max_payload_bytes = max_payload_bytes
        self._poll_min_s = poll_min_s
        self._poll_max_s = poll_max_s
        self._stats: dict[Topic, TopicStatistics] = {topic: zero_statistics(topic) for topic in self._topics}
        self._closed = False
        self._receivers: set[asyncio.Future[None]] = set()
        self._publishers: set[asyncio.Future[None]] = set()
        # Bumped on every local event that may unblock a waiter, so a script reply that raced the event is retried.
        self._receive_epoch = 0
        self._space_epoch = 0
        self._repaired_values = 0

    @property
    def topics(self) -> frozenset[Topic]:
        return self._topics

    @property
    def limits(self) -> BusLimits:
        return self._limits

    @property
    def prefix(self) -> str:
        return self._prefix

    @property
    def repaired_values(self) -> int:
        """How many stored counters the scripts found not to be counts (written by another process) and reset to 0;
        the first is logged (``oona_bus_counter_repaired``)."""
        return self._repaired_values

    @property
    def in_flight(self) -> int:
        """How many Redis round trips this object has started and not yet seen answered."""
        return self._scripts.in_flight

    # ------------------------------------------------------------------ publish

    async def publish(
        self,
        topic: Topic,
        payload: Message,
        *,
        message_type: BusMessageType,
        priority: MessagePriority = MessagePriority.NORMAL,
    ) -> PublishResult:
        """See Bus.publish. Also raises TypeError for a Message type outside message_types, and PayloadTooLarge."""
        if not isinstance(payload, Message):
            raise TypeError(f"payload must be a schemas.base.Message, got {type(payload).__name__}")
        if type(payload) not in self._types:
            raise TypeError(f"payload type {type(payload).__name__} is not among this bus's message_types")
        self._check_topic(topic)
        target = route(topic, priority)
        self._check_topic(target)
        data = self._encoder.encode(payload)
        if len(data) > self._max_payload_bytes:
            raise PayloadTooLarge(type(payload).__name__, len(data), self._max_payload_bytes)
        signal = payload if isinstance(payload, EmergencySignal) and target is Topic.EMERGENCY else None
        args = [
            target.value,
            str(int(message_type)),
            str(int(priority)),
            data,
            "1" if message_type in DROPPABLE_TYPES else "0",
            "" if signal is None else signal_origin_key(signal),
            "0" if signal is None else str(int(signal.level)),
            "1" if target is Topic.EMERGENCY else "0",
        ]
        backoff_s = self._poll_min_s
        while True:
            self._check_open()
            epoch = self._space_epoch
            raw = await self._scripts.run("publish", args)
            with reading("publish"):
                reply = reply_list(raw)
                self._store_stats(reply[2])
                status = PublishStatus(reply_text(reply[0])) if reply_text(reply[0]) != "wait" else None
                message_id = None if reply[1] is None else reply_text(reply[1])
            if status is not None:
                if status is PublishStatus.PUBLISHED:
                    self._receive_epoch += 1
                    wake(self._receivers)
                return PublishResult(status=status, topic=target, message_id=message_id)
            if self._space_epoch == epoch:
                await self._wait(self._publishers, self._clock.now() + backoff_s)
                backoff_s = min(backoff_s * 2, self._poll_max_s)

    # ------------------------------------------------------------------ consume

    async def subscribe(self, topics: Topic | Sequence[Topic], *, group: str) -> None:
        ordered = self._ordered(topics)
        if not group:
            raise ValueError("group must be non-empty")
        self._check_open()
        raw = await self._scripts.run("subscribe", [group, *(topic.value for topic in ordered)])
        with reading("subscribe"):
            self._store_stats(raw)

    async def receive(self, topics: Topic | Sequence[Topic], *, group: str, consumer: str) -> Envelope[Message]:
        ordered = self._ordered(topics)
        if not group or not consumer:
            raise ValueError(f"group and consumer must be non-empty, got {group!r}, {consumer!r}")
        args = [group, consumer, *(topic.value for topic in ordered)]
        backoff_s = self._poll_min_s
        while True:
            self._check_open()
            epoch = self._receive_epoch
            raw = await self._scripts.run("take", args)
            with reading("take"):
                reply = reply_list(raw)
                self._store_stats(reply[1])
                buried = reply_int(reply[3])
                envelope = (
                    None if reply[0] is None else read_envelope(reply_list(reply[0]), self._decoder, group, consumer)
                )
                claimable_s = None if reply[2] is None else float(reply_text(reply[2]))
            if buried:
                self._freed_space()
            if envelope is not None:
                # Other local receivers recompute when this delivery becomes claimable.
                self._receive_epoch += 1
                wake(self._receivers)
                return envelope
            if self._receive_epoch != epoch:
                continue
            deadline_s = self._clock.now() + backoff_s
            if claimable_s is not None:
                deadline_s = min(deadline_s, claimable_s)
            await self._wait(self._receivers, deadline_s)
            backoff_s = min(backoff_s * 2, self._poll_max_s)

    async def consume(
        self, topics: Topic | Sequence[Topic], *, group: str, consumer: str
    ) -> AsyncIterator[Envelope[Message]]:
        self._check_open()
        while True:
            try:
                envelope = await self.receive(topics, group=group, consumer=consumer)
            except BusClosed:
                return
            yield envelope

    async def ack(self, envelope: Envelope[Message]) -> bool:
        self._check_open()
        group = delivered_group(envelope)
        self._check_topic(envelope.topic)
        raw = await self._scripts.run("ack", [envelope.topic.value, group, envelope.message_id])
        with reading("ack"):
            reply = reply_list(raw)
            self._store_stats(reply[1])
            acked = reply_int(reply[0]) == 1
        if acked:
            self._freed_space()
        return acked

    async def nack(self, envelope: Envelope[Message], error: str) -> None:
        self._check_open()
        group = delivered_group(envelope)
        self._check_topic(envelope.topic)
        raw = await self._scripts.run("nack", [envelope.topic.value, group, envelope.message_id, error])
        with reading("nack"):
            reply = reply_list(raw)
            self._store_stats(reply[1])
            buried = reply_int(reply[0])
        if buried:
            self._freed_space()
            self._receive_epoch += 1
            wake(self._receivers)

    async def backlog(self, topic: Topic, group: str) -> int:
        self._check_topic(topic)
        raw = await self._scripts.run("backlog", [topic.value, group])
        with reading("backlog"):
            return reply_int(raw)

    async def trim_expired(self) -> int:
        raw = await self._scripts.run("trim", [topic.value for topic in self._topics])
        with reading("trim"):
            reply = reply_list(raw)
            self._store_stats(reply[1])
            trimmed = reply_int(reply[0])
        if trimmed:
            self._freed_space()
        return trimmed

    # ------------------------------------------------------------------ lifecycle and introspection

    def statistics(self) -> BusStatistics:
        """See Bus.statistics: each topic's figures as of this object's last script touching it."""
        topics = tuple(self._stats[topic] for topic in Topic if topic in self._topics)
        return BusStatistics(
            closed=self._closed,
            topics=topics,
            waiting_publishers=len(self._publishers),
            waiting_receivers=len(self._receivers),
            published=sum(t.published for t in topics),
            delivered=sum(t.delivered for t in topics),
            acked=sum(t.acked for t in topics),
            publish_dropped=sum(t.publish_dropped for t in topics),
            dead_letter_total=sum(t.dead_letter_total for t in topics),
            emergency_rate_dropped=sum(t.emergency_rate_dropped for t in topics),
        )

    async def fetch_statistics(self) -> BusStatistics:
        """Read every topic's figures from Redis now (including other processes' work), then return statistics()."""
        raw = await self._scripts.run("stats", [topic.value for topic in self._topics])
        with reading("stats"):
            self._store_stats(raw)
        return self.statistics()

    async def wait_idle(self) -> None:
        """Return once no Redis round trip started by this object is in flight (a barrier for tests and shutdown)."""
        await self._scripts.wait_idle()

    async def close(self) -> None:
        """See Bus.close. Closes this object only: the streams stay on the server for other processes (purge())."""
        self._closed = True
        wake(self._receivers)
        wake(self._publishers)

    async def purge(self) -> int:
        """Delete every key under this bus's prefix (allowed after close()); returns how many were deleted."""
        pattern = "".join(f"[{ch}]" if ch in "*?[]\\" else ch for ch in self._prefix) + ":*"
        deleted = 0
        cursor = 0
        while True:  # SCAN by hand, not scan_iter: each call goes through cancel_safe
            cursor, keys = await cancel_safe(self._client.scan(cursor, match=pattern, count=500))
            if keys:
                deleted += await cancel_safe(self._client.unlink(*keys))
            if not cursor:
                return deleted

    # ------------------------------------------------------------------ helpers

    def _store_stats(self, raw: object) -> None:
        for statistics, repaired in topic_statistics(raw, self._topics):
            if repaired:
                self._repaired(statistics.topic, repaired)
            self._stats[statistics.topic] = statistics

    def _repaired(self, topic: Topic, count: int) -> None:
        """The scripts found counters of ``topic`` that were not counts (another writer's values) and reset them."""
        if not self._repaired_values:
            _log.warning(
                "oona_bus_counter_repaired",
                actor="oona",
                topic=topic.value,
                counters=count,
                reason="a statistics counter on the server was not a count; reset to 0",
            )
        self._repaired_values += count

    def _freed_space(self) -> None:
        self._space_epoch += 1
        wake(self._publishers)

    def _check_open(self) -> None:
        if self._closed:
            raise BusClosed("the bus is closed")

    def _check_topic(self, topic: Topic) -> None:
        if topic not in self._topics:
            raise UnknownTopic(f"topic {topic!r} is not on this bus")

    def _ordered(self, topics: Topic | Sequence[Topic]) -> list[Topic]:
        names = [topics] if isinstance(topics, str) else list(dict.fromkeys(topics))
        if not names:
            raise ValueError("topics must name at least one topic")
        for topic in names:
            self._check_topic(topic)
        return sorted(names, key=lambda topic: TOPIC_LANES[topic])

    async def _wait(self, waiters: set[asyncio.Future[None]], deadline_s: float) -> None:
        """Wait until woken (publish, delivery, space, close) or until the clock reaches deadline_s."""
        await wait_woken(waiters, self._clock, deadline_s)


def redacted(text: str) -> str:
    """``text`` with the password of every URL in it (``scheme://user:password@host`` or a ``?password=`` query
    parameter) replaced by ``***``."""
    return _PASSWORD_PARAMETER.sub(r"\1***", _PASSWORD.sub(r"://\1:***@", text))
