"""The Oona bus contract: topics, lanes, envelopes, limits, statistics and the Bus protocol every backend implements."""

from __future__ import annotations

import enum
from types import MappingProxyType
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

from schemas.base import Message, Record
from schemas.enums import BusMessageType, MessagePriority

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence

    from schemas.runtime import EmergencySignal

PayloadT = TypeVar("PayloadT")


class Topic(enum.StrEnum):
    """The bus topics (REFERENCE.md section 8). A bus is created with a set of them; naming another is UnknownTopic."""

    NORMAL = "oona.normal"
    EMERGENCY = "oona.emergency"
    TELEMETRY = "oona.telemetry"
    POLICY = "oona.policy"
    KERNEL_REQUESTS = "oona.kernels.requests"
    KERNEL_READY = "oona.kernels.ready"
    KERNEL_ERRORS = "oona.kernels.errors"
    DEAD_LETTER = "oona.dead_letter"


class Lane(enum.IntEnum):
    """Drain order: a consumer reading several topics takes from the lowest lane value first."""

    EMERGENCY = 0
    CONTROL = 1
    TELEMETRY = 2


ALL_TOPICS: frozenset[Topic] = frozenset(Topic)

TOPIC_LANES: Mapping[Topic, Lane] = MappingProxyType(
    {
        Topic.EMERGENCY: Lane.EMERGENCY,
        Topic.NORMAL: Lane.CONTROL,
        Topic.POLICY: Lane.CONTROL,
        Topic.KERNEL_REQUESTS: Lane.CONTROL,
        Topic.KERNEL_READY: Lane.CONTROL,
        Topic.KERNEL_ERRORS: Lane.CONTROL,
        Topic.TELEMETRY: Lane.TELEMETRY,
        Topic.DEAD_LETTER: Lane.TELEMETRY,
    }
)

# Only these may be shed under load; everything else (commands, signals, policy updates, field reports, ...) waits.
# State packets on the bus are the observers' copies on the telemetry lane (Tamiyo and Kasmina get theirs directly):
# telemetry, so a topic nobody reads sheds them instead of blocking the publisher once it is full.
DROPPABLE_TYPES: frozenset[BusMessageType] = frozenset(
    {BusMessageType.TELEMETRY, BusMessageType.SYSTEM_STATE, BusMessageType.KERNEL_PREFETCH_REQUEST}
)


def signal_origin_key(signal: EmergencySignal) -> str:
    """What an emergency signal past the rate coalesces by: its run and its origin. Runs sharing a prefix (a Redis
    server) each keep their own: by origin alone, one run's signals folded into another's entry and vanished."""
    return f"{signal.run_id}/{signal.origin}"


def route(topic: Topic, priority: MessagePriority) -> Topic:
    """The topic a publish lands on: HIGH and CRITICAL ride the emergency lane, everything else stays where it was sent.

    This is routing by priority only; overload never moves traffic between lanes.
    """
    return Topic.EMERGENCY if priority >= MessagePriority.HIGH else topic


class PublishStatus(enum.Enum):
    """What a publish did with its message."""

    PUBLISHED = "published"
    DROPPED = "dropped"  # shed under load (telemetry, prefetch), or past the emergency rate limit
    COALESCED = "coalesced"  # merged into the pending emergency signal of the same origin


class PublishResult(Record, frozen=True):
    """The explicit outcome of a publish. ``message_id`` names the stored envelope (the surviving one if coalesced).

    ``unread``: dropped from a topic no consumer group has ever read (the in-process bus only: its groups live in this
    process, so no subscriber existed when it was shed). A networked bus cannot know of a reader that
    subscribes later from another process and never sets it.
    """

    status: PublishStatus
    topic: Topic
    message_id: str | None = None
    unread: bool = False


class DeadLetterInfo(Record, frozen=True):
    """Why and where an envelope left its topic for the dead-letter topic."""

    topic: Topic
    group: str
    message_id: str
    attempts: int
    reason: str


class Envelope(Record, Generic[PayloadT], frozen=True):
    """One message on the bus.

    ``payload`` is a live Struct in the in-process backend (``Envelope[Message]``); a networked backend stores
    ``Envelope[bytes]`` (msgspec-encoded payload) and decodes before delivery. ``attempts`` counts deliveries to the
    receiving group, this one included; ``group`` and ``consumer`` name the receiver and are None until delivered.
    """

    message_id: str
    topic: Topic
    priority: MessagePriority
    message_type: BusMessageType
    payload: PayloadT
    published_at_s: float
    attempts: int = 0
    last_error: str | None = None
    group: str | None = None
    consumer: str | None = None
    dead_letter: DeadLetterInfo | None = None


class BusLimits(Record, frozen=True):
    """Bus limits and timings (REFERENCE.md section 1, Oona delivery). Times in seconds; depths in messages.

    Droppable messages are shed once a topic's max(length, pending) reaches ``depth_high`` until it falls to
    ``depth_recovery``; messages that may not drop wait while the topic holds ``capacity`` messages.
    """

    depth_high: int = 4000
    depth_recovery: int = 1000
    capacity: int = 8000
    emergency_rate_per_min: float = 120.0
    claim_idle_s: float = 60.0
    claim_batch: int = 50
    max_attempts: int = 5
    ttl_s: float = 900.0

    def __post_init__(self) -> None:
        if not 0 <= self.depth_recovery < self.depth_high <= self.capacity:
            raise ValueError(
                f"BusLimits needs 0 <= depth_recovery < depth_high <= capacity, got "
                f"{self.depth_recovery}, {self.depth_high}, {self.capacity}"
            )
        for name in ("emergency_rate_per_min", "claim_idle_s", "ttl_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"BusLimits.{name} must be > 0, got {getattr(self, name)}")
        if self.claim_batch < 1 or self.max_attempts < 1:
            raise ValueError(
                f"BusLimits.claim_batch and max_attempts must be >= 1, got {self.claim_batch}, {self.max_attempts}"
            )


class TopicStatistics(Record, frozen=True):
    """One topic at one instant. ``depth`` counts retained messages; ``pending`` delivered-but-unacked, all groups."""

    topic: Topic
    depth: int
    pending: int
    groups: int
    shedding: bool
    published: int
    delivered: int
    acked: int
    publish_dropped: int
    dead_letter_total: int
    emergency_rate_dropped: int
    expired_trimmed: int


class BusStatistics(Record, frozen=True):
    """The whole bus at one instant; the totals sum the topics. Returned by statistics(), which never blocks."""

    closed: bool
    topics: tuple[TopicStatistics, ...]
    waiting_publishers: int
    waiting_receivers: int
    published: int
    delivered: int
    acked: int
    publish_dropped: int
    dead_letter_total: int
    emergency_rate_dropped: int

    def of(self, topic: Topic) -> TopicStatistics:
        """The statistics of one topic; KeyError if the bus does not have it."""
        for stats in self.topics:
            if stats.topic is topic:
                return stats
        raise KeyError(f"topic {topic.value} is not on this bus")


class Bus(Protocol):
    """Oona: topics with priority lanes, backpressure, an emergency rate limit and at-least-once group delivery.

    Every method runs on the event loop. Consumer groups are per topic: each group receives every message of the
    topic, and within a group one consumer receives it. A group is created the first time a consumer names it and
    starts at the oldest message the topic still holds; subscribe() creates it ahead of the first receive.
    """

    @property
    def topics(self) -> frozenset[Topic]:
        """The topics this bus was created with (the dead-letter topic always among them)."""
        ...

    async def publish(
        self,
        topic: Topic,
        payload: Message,
        *,
        message_type: BusMessageType,
        priority: MessagePriority = MessagePriority.NORMAL,
    ) -> PublishResult:
        """Publish one message; HIGH and CRITICAL go to the emergency topic (see route()).

        Telemetry and prefetch requests are DROPPED under load or past the emergency rate; emergency signals past the
        rate are COALESCED per origin; everything else waits for space. Cancelling a waiting publish publishes nothing.

        Raises:
            UnknownTopic: the topic (or the emergency topic it routes to) is not on this bus.
            BusClosed: the bus is closed, or closed while this publish waited.
            BusUnavailable: the bus's server did not answer (never the in-process bus); a later publish may succeed.
            PayloadTooLarge: the encoded payload is over the bus's size limit (never the in-process bus).
            TypeError: payload is not a Message.
        """
        ...

    async def subscribe(self, topics: Topic | Sequence[Topic], *, group: str) -> None:
        """Create the group on each topic if it does not exist yet (idempotent), starting at the oldest message held.

        Messages are kept only for groups that exist, so a subscriber that must not miss messages published before
        its first receive subscribes first (in its on_start, before its publishers start).

        Raises:
            UnknownTopic: a topic is not on this bus.
            BusClosed: the bus is closed.
        """
        ...

    async def receive(self, topics: Topic | Sequence[Topic], *, group: str, consumer: str) -> Envelope[Message]:
        """Wait for the next envelope for this consumer: emergency lane first, then control, then telemetry.

        The group is created (as by subscribe()) on any topic where it does not exist yet.

        Within a topic, pending messages idle for claim_idle_s are claimed (up to claim_batch at a time) before new
        ones. Cancellation while waiting leaves the bus unchanged.

        Raises:
            UnknownTopic: a topic is not on this bus.
            BusClosed: the bus is closed, or closed while this receive waited.
        """
        ...

    def consume(
        self, topics: Topic | Sequence[Topic], *, group: str, consumer: str
    ) -> AsyncIterator[Envelope[Message]]:
        """``async for envelope in bus.consume(...)``: receive() in a loop; ends when the bus closes under it.

        Raises:
            BusClosed: at the first iteration if the bus was already closed.
        """
        ...

    async def ack(self, envelope: Envelope[Message]) -> bool:
        """Mark a delivered envelope handled by its group. Returns False if it was no longer pending (acked already,
        dead-lettered or trimmed). Any consumer of the group may ack it.

        Raises:
            ValueError: the envelope was never delivered (it names no group).
            BusClosed: the bus is closed; the message stays pending for whoever reads the topic next.
        """
        ...

    async def nack(self, envelope: Envelope[Message], error: str) -> None:
        """Record a handler failure. The message stays pending and is claimed again after claim_idle_s; a failure on
        the last allowed attempt sends it to the dead-letter topic now, with this error.

        Raises:
            ValueError: the envelope was never delivered (it names no group).
            BusClosed: the bus is closed.
        """
        ...

    async def backlog(self, topic: Topic, group: str) -> int:
        """How many messages of the topic the group has not acked yet (undelivered plus pending)."""
        ...

    async def trim_expired(self) -> int:
        """Housekeeping: drop every message older than ttl_s from every topic; returns how many were dropped."""
        ...

    def statistics(self) -> BusStatistics:
        """Counters and depths now. Never blocks, never changes state."""
        ...

    async def close(self) -> None:
        """Close the bus: waiting publishers and receivers raise BusClosed; later calls raise BusClosed. Idempotent."""
        ...


async def handle_each(
    bus: Bus,
    fn: Callable[[Envelope[Message]], Awaitable[None]],
    topics: Topic | Sequence[Topic],
    *,
    group: str,
    consumer: str,
) -> None:
    """Run ``fn`` on every envelope until the bus closes: ack on success; on failure nack with the error and re-raise.

    The re-raise lets the owning actor's supervisor (or a consume-side breaker wrapping ``fn``) decide; the message
    stays pending and is redelivered, so handlers must deduplicate. Handler failures never touch publish.
    If the bus closes while ``fn`` runs, the ack raises BusClosed out of this function.
    """
    async for envelope in bus.consume(topics, group=group, consumer=consumer):
        try:
            await fn(envelope)
        except Exception as err:
            await bus.nack(envelope, f"{type(err).__name__}: {err}")
            raise
        await bus.ack(envelope)
