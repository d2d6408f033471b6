"""Reading the Redis bus scripts' replies: typed fields, envelopes and topic statistics, or a one-line ReplyError."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import msgspec

from esper.runtime.bus import DeadLetterInfo, Envelope, Topic, TopicStatistics
from esper.runtime.errors import BusUnavailable
from schemas.base import Message
from schemas.enums import BusMessageType, MessagePriority

if TYPE_CHECKING:
    from collections.abc import Iterator


class ReplyError(BusUnavailable):
    """Raised when a Redis reply does not have the shape the backend's scripts return (a bug, or a value another
    writer stored under the bus's keys). A BusUnavailable: the bus cannot be used, which the publisher's breaker and
    housekeeping already take in their stride, whereas a plain ValueError crashed the publisher and with it the run."""


@contextlib.contextmanager
def reading(script: str) -> Iterator[None]:
    """Turn any failure to read a reply of ``script`` (a number that is none, an unknown topic or enum value, a short
    array, a payload that is no Message) into ReplyError, one line naming the script."""
    try:
        yield
    except ReplyError:
        raise
    except (ValueError, TypeError, IndexError, msgspec.DecodeError) as err:
        raise ReplyError(f"malformed reply to the {script} script: {type(err).__name__}: {err}") from err


def reply_text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode()
    raise ReplyError(f"expected a bulk string in the Redis reply, got {type(value).__name__}")


def reply_int(value: object) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, bytes):
        return int(value)
    raise ReplyError(f"expected an integer in the Redis reply, got {type(value).__name__}")


def reply_list(value: object) -> list[object]:
    if isinstance(value, list):
        return value
    raise ReplyError(f"expected an array in the Redis reply, got {type(value).__name__}")


def read_envelope(
    raw: list[object], decoder: msgspec.msgpack.Decoder[object], group: str, consumer: str
) -> Envelope[Message]:
    """The message a take script delivered (``raw``: its fields), its payload decoded with ``decoder``."""
    topic, message_id, message_type, priority, published_at, data, attempts, last_error = raw[:8]
    source, source_group, source_id, source_attempts = raw[8:12]
    if not isinstance(data, bytes):
        raise ReplyError(f"expected the payload as bytes, got {type(data).__name__}")
    payload = decoder.decode(data)
    if not isinstance(payload, Message):
        raise ReplyError(f"payload of {reply_text(message_id)} decoded to {type(payload).__name__}, not a Message")
    error = None if last_error is None else reply_text(last_error)
    info = None
    if source is not None and source_group is not None and source_id is not None and source_attempts is not None:
        info = DeadLetterInfo(
            topic=Topic(reply_text(source)),
            group=reply_text(source_group),
            message_id=reply_text(source_id),
            attempts=reply_int(source_attempts),
            reason=error or "",
        )
    return Envelope[Message](
        message_id=reply_text(message_id),
        topic=Topic(reply_text(topic)),
        priority=MessagePriority(reply_int(priority)),
        message_type=BusMessageType(reply_int(message_type)),
        payload=payload,
        published_at_s=float(reply_text(published_at)),
        attempts=reply_int(attempts),
        last_error=error,
        group=group,
        consumer=consumer,
        dead_letter=info,
    )


def topic_statistics(raw: object, topics: frozenset[Topic]) -> Iterator[tuple[TopicStatistics, int]]:
    """Each row of a script's statistics reply for one of ``topics`` (other topics' rows are skipped), read row by
    row: its figures, and how many of its counters the script found not to be counts and reset."""
    for row in reply_list(raw):
        fields = reply_list(row)
        topic = Topic(reply_text(fields[0]))
        if topic not in topics:
            continue
        depth, pending, groups, shedding, *counters, repaired = (reply_int(value) for value in fields[1:13])
        published, delivered, acked, dropped, dead, rate_dropped, expired = counters
        statistics = TopicStatistics(
            topic=topic,
            depth=depth,
            pending=pending,
            groups=groups,
            shedding=bool(shedding),
            published=published,
            delivered=delivered,
            acked=acked,
            publish_dropped=dropped,
            dead_letter_total=dead,
            emergency_rate_dropped=rate_dropped,
            expired_trimmed=expired,
        )
        yield statistics, repaired


def zero_statistics(topic: Topic) -> TopicStatistics:
    return TopicStatistics(
        topic=topic,
        depth=0,
        pending=0,
        groups=0,
        shedding=False,
        published=0,
        delivered=0,
        acked=0,
        publish_dropped=0,
        dead_letter_total=0,
        emergency_rate_dropped=0,
        expired_trimmed=0,
    )
