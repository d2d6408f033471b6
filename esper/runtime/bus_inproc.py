"""The in-process Oona backend: bounded per-topic logs passing live Structs, waiting on the event loop."""

from __future__ import annotations

from typing import TYPE_CHECKING, final

import msgspec

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
from esper.runtime.bus_log import TopicLog
from esper.runtime.bus_waiters import delivered_group, wait_woken, wake
from esper.runtime.errors import BusClosed, UnknownTopic
from schemas.base import Message
from schemas.enums import BusMessageType, MessagePriority
from schemas.runtime import EmergencySignal

if TYPE_CHECKING:
    import asyncio
    from collections.abc import AsyncIterator, Iterable, Sequence

    from esper.runtime.clock import Clock


@final
class InProcessBus:
    """The default Oona backend (implements esper.runtime.bus.Bus); see that Protocol for the contract.

    Event-loop only: every method must be called from the loop that runs the bus's publishers and consumers. It runs
    no tasks of its own: a waiting receive sleeps on the injected clock until the next pending message becomes
    claimable, and expired messages are trimmed when the owner calls trim_expired().
    """

    def __init__(self, clock: Clock, *, topics: Iterable[Topic] = ALL_TOPICS, limits: BusLimits | None = None) -> None:
        """Args:
        clock: the time source for publish stamps, idleness, TTL and the emergency token bucket.
        topics: the topics of this bus; the dead-letter topic is always added.
        limits: depths, rates and timings; BusLimits() (the resolved defaults) if None.
        """
        self._clock = clock
        self._limits = limits if limits is not None else BusLimits()
        names = {*topics, Topic.DEAD_LETTER}
        self._logs: dict[Topic, TopicLog] = {topic: TopicLog(topic, self._limits) for topic in Topic if topic in names}
        self._closed = False
        self._next_id = 0
        self._tokens = self._limits.emergency_rate_per_min
        self._refilled_at_s = clock.now()
        self._receivers: set[asyncio.Future[None]] = set()
        self._publishers: set[asyncio.Future[None]] = set()

    @property
    def topics(self) -> frozenset[Topic]:
        return frozenset(self._logs)

    @property
    def limits(self) -> BusLimits:
        return self._limits

    # ------------------------------------------------------------------ publish

    async def publish(
        self,
        topic: Topic,
        payload: Message,
        *,
        message_type: BusMessageType,
        priority: MessagePriority = MessagePriority.NORMAL,
    ) -> PublishResult:
        if not isinstance(payload, Message):
            raise TypeError(f"payload must be a schemas.base.Message, got {type(payload).__name__}")
        self._log_of(topic)
        log = self._log_of(route(topic, priority))
        while True:
            self._check_open()
            result = self._try_publish(log, payload, message_type, priority)
            if result is not None:
                return result
            await self._wait(self._publishers, None)

    def _try_publish(
        self, log: TopicLog, payload: Message, message_type: BusMessageType, priority: MessagePriority
    ) -> PublishResult | None:
        """Publish now, drop, or coalesce; None means the message may not drop and must wait for space."""
        droppable = message_type in DROPPABLE_TYPES
        signal = payload if isinstance(payload, EmergencySignal) and log.topic is Topic.EMERGENCY else None
        over_rate = False
        if log.topic is Topic.EMERGENCY:
            self._refill()
            over_rate = self._tokens < 1.0
        if over_rate and signal is not None:
            current = log.undelivered_signal(signal_origin_key(signal))
            if current is not None:
                log.counters.emergency_rate_dropped += 1
                held = current.payload
                if isinstance(held, EmergencySignal) and signal.level > held.level:
                    log.replace_signal(
                        signal_origin_key(signal),
                        msgspec.structs.replace(current, payload=signal, priority=max(current.priority, priority)),
                    )
                return PublishResult(status=PublishStatus.COALESCED, topic=log.topic, message_id=current.message_id)
            # The first signal of an origin past the rate still goes through: signals never drop, and coalescing
            # bounds each origin to one undelivered signal while the lane is over its rate.
        elif over_rate and droppable:
            log.counters.emergency_rate_dropped += 1
            return PublishResult(status=PublishStatus.DROPPED, topic=log.topic)
        if droppable and log.should_shed():
            log.counters.publish_dropped += 1
            return PublishResult(status=PublishStatus.DROPPED, topic=log.topic, unread=log.groups == 0)
        if not log.has_space():
            return None
        if log.topic is Topic.EMERGENCY and not over_rate:
            self._tokens -= 1.0
        envelope = Envelope[Message](
            message_id=self._new_id(),
            topic=log.topic,
            priority=priority,
            message_type=message_type,
            payload=payload,
            published_at_s=self._clock.now(),
        )
        log.append(envelope, origin=None if signal is None else signal_origin_key(signal))
        wake(self._receivers)
        return PublishResult(status=PublishStatus.PUBLISHED, topic=log.topic, message_id=envelope.message_id)

    def _refill(self) -> None:
        now_s = self._clock.now()
        rate = self._limits.emergency_rate_per_min
        self._tokens = min(rate, self._tokens + (now_s - self._refilled_at_s) * rate / 60.0)
        self._refilled_at_s = now_s

    def _new_id(self) -> str:
        self._next_id += 1
        return f"m{self._next_id}"

    # ------------------------------------------------------------------ consume

    async def subscribe(self, topics: Topic | Sequence[Topic], *, group: str) -> None:
        logs = self._ordered(topics)
        if not group:
            raise ValueError("group must be non-empty")
        self._check_open()
        for log in logs:
            log.subscribe(group)

    async def receive(self, topics: Topic | Sequence[Topic], *, group: str, consumer: str) -> Envelope[Message]:
        logs = self._ordered(topics)
        if not group or not consumer:
            raise ValueError(f"group and consumer must be non-empty, got {group!r}, {consumer!r}")
        while True:
            self._check_open()
            envelope = self._take(logs, group, consumer)
            if envelope is not None:
                # Other receivers recompute when this delivery becomes claimable.
                wake(self._receivers)
                return envelope
            deadlines = [at for log in logs if (at := log.next_claim_at(group)) is not None]
            await self._wait(self._receivers, min(deadlines, default=None))

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

    def _take(self, logs: Sequence[TopicLog], group: str, consumer: str) -> Envelope[Message] | None:
        for log in logs:
            dead: list[Envelope[Message]] = []
            envelope = log.take(group, consumer, self._clock.now(), dead)
            if dead:
                self._bury(dead)
            if envelope is not None:
                return envelope
        return None

    async def ack(self, envelope: Envelope[Message]) -> bool:
        self._check_open()
        group = delivered_group(envelope)
        acked = self._log_of(envelope.topic).ack(group, envelope.message_id)
        if acked:
            wake(self._publishers)
        return acked

    async def nack(self, envelope: Envelope[Message], error: str) -> None:
        self._check_open()
        group = delivered_group(envelope)
        dead = self._log_of(envelope.topic).nack(group, envelope.message_id, error)
        if dead is not None:
            self._bury([dead])

    async def backlog(self, topic: Topic, group: str) -> int:
        return self._log_of(topic).backlog(group)

    async def trim_expired(self) -> int:
        now_s = self._clock.now()
        trimmed = sum(log.trim_expired(now_s) for log in self._logs.values())
        if trimmed:
            wake(self._publishers)
        return trimmed

    def _bury(self, dead: list[Envelope[Message]]) -> None:
        """Publish dead letters; dead letters of the dead-letter topic itself are only counted, never re-published."""
        letters = self._logs[Topic.DEAD_LETTER]
        for envelope in dead:
            if envelope.topic is Topic.DEAD_LETTER:
                continue
            if not letters.has_space():
                letters.drop_oldest()
            letters.append(
                msgspec.structs.replace(
                    envelope,
                    message_id=self._new_id(),
                    topic=Topic.DEAD_LETTER,
                    published_at_s=self._clock.now(),
                    attempts=0,
                    group=None,
                    consumer=None,
                )
            )
        wake(self._receivers)
        wake(self._publishers)

    # ------------------------------------------------------------------ lifecycle and introspection

    def statistics(self) -> BusStatistics:
        topics = tuple(
            TopicStatistics(
                topic=log.topic,
                depth=log.depth,
                pending=log.pending,
                groups=log.groups,
                shedding=log.shedding,
                published=log.counters.published,
                delivered=log.counters.delivered,
                acked=log.counters.acked,
                publish_dropped=log.counters.publish_dropped,
                dead_letter_total=log.counters.dead_letter_total,
                emergency_rate_dropped=log.counters.emergency_rate_dropped,
                expired_trimmed=log.counters.expired_trimmed,
            )
            for log in self._logs.values()
        )
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

    async def close(self) -> None:
        self._closed = True
        wake(self._receivers)
        wake(self._publishers)

    # ------------------------------------------------------------------ helpers

    def _check_open(self) -> None:
        if self._closed:
            raise BusClosed("the bus is closed")

    def _log_of(self, topic: Topic) -> TopicLog:
        log = self._logs.get(topic)
        if log is None:
            raise UnknownTopic(f"topic {topic!r} is not on this bus")
        return log

    def _ordered(self, topics: Topic | Sequence[Topic]) -> list[TopicLog]:
        names = [topics] if isinstance(topics, str) else list(dict.fromkeys(topics))
        if not names:
            raise ValueError("topics must name at least one topic")
        logs = [self._log_of(topic) for topic in names]
        return sorted(logs, key=lambda log: TOPIC_LANES[log.topic])

    async def _wait(self, waiters: set[asyncio.Future[None]], deadline_s: float | None) -> None:
        """Wait until woken (publish, delivery, space, close) or until the clock reaches deadline_s."""
        await wait_woken(waiters, self._clock, deadline_s)
