"""One topic of the in-process bus: its retained messages, consumer groups, pending deliveries and claims.

Pure and synchronous: every method takes ``now_s`` from the caller's clock. All waiting lives in bus_inproc, so this
state machine can be read, and reasoned about, on its own.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, final

import msgspec

from esper.runtime.bus import BusLimits, DeadLetterInfo, Envelope, Topic

if TYPE_CHECKING:
    from schemas.base import Message


@dataclass
class _Entry:
    envelope: Envelope[Message]
    done_by: set[str] = field(default_factory=set)  # groups that acked or dead-lettered it
    origin: str | None = None  # set for an emergency signal while it may still be coalesced


@dataclass
class _Pending:
    consumer: str
    since_s: float  # last delivery or claim: idleness counts from here
    attempts: int
    last_error: str | None = None


@dataclass
class _Group:
    name: str
    next_seq: int
    pending: OrderedDict[int, _Pending] = field(default_factory=OrderedDict)  # oldest `since_s` first
    claimed: dict[str, deque[int]] = field(default_factory=dict)  # claimed for a consumer, not yet handed out


@dataclass
class _Counters:
    published: int = 0
    delivered: int = 0
    acked: int = 0
    publish_dropped: int = 0
    dead_letter_total: int = 0
    emergency_rate_dropped: int = 0
    expired_trimmed: int = 0


@final
class TopicLog:
    """The retained messages of one topic, in publish order, and each group's progress through them.

    A message leaves the log when every existing group has acked or dead-lettered it, when it expires and is trimmed,
    or (dead-letter topic only) when the log is full and it is the oldest.
    """

    def __init__(self, topic: Topic, limits: BusLimits) -> None:
        self.topic = topic
        self._limits = limits
        self._log: OrderedDict[int, _Entry] = OrderedDict()
        self._seq_of: dict[str, int] = {}
        self._groups: dict[str, _Group] = {}
        self._signal_of: dict[str, int] = {}  # origin -> seq of its undelivered signal
        self._next_seq = 0
        self.shedding = False
        self.counters = _Counters()

    # ------------------------------------------------------------------ sizes

    @property
    def depth(self) -> int:
        return len(self._log)

    @property
    def pending(self) -> int:
        return sum(len(group.pending) for group in self._groups.values())

    @property
    def groups(self) -> int:
        return len(self._groups)

    def load(self) -> int:
        return max(self.depth, self.pending)

    def should_shed(self) -> bool:
        """Update the shedding hysteresis and say whether a droppable message is shed now."""
        load = self.load()
        if self.shedding and load <= self._limits.depth_recovery:
            self.shedding = False
        elif not self.shedding and load >= self._limits.depth_high:
            self.shedding = True
        return self.shedding or self.depth >= self._limits.capacity

    def has_space(self) -> bool:
        return self.depth < self._limits.capacity

    # ------------------------------------------------------------------ publish side

    def append(self, envelope: Envelope[Message], origin: str | None = None) -> None:
        """Store an envelope whose message_id is new; the caller checked space."""
        seq = self._next_seq
        self._next_seq += 1
        self._log[seq] = _Entry(envelope=envelope, origin=origin)
        self._seq_of[envelope.message_id] = seq
        if origin is not None:
            self._signal_of[origin] = seq
        self.counters.published += 1

    def undelivered_signal(self, origin: str) -> Envelope[Message] | None:
        """The signal from ``origin`` that no group has received yet, if any."""
        seq = self._signal_of.get(origin)
        return None if seq is None else self._log[seq].envelope

    def replace_signal(self, origin: str, envelope: Envelope[Message]) -> None:
        """Swap the undelivered signal of ``origin`` for a coalesced one, keeping its place in the log."""
        entry = self._log[self._signal_of[origin]]
        entry.envelope = envelope

    def drop_oldest(self) -> Envelope[Message] | None:
        """Make room by forgetting the oldest message (dead-letter topic only: dead letters never wait)."""
        if not self._log:
            return None
        seq = next(iter(self._log))
        envelope = self._log[seq].envelope
        self._remove(seq)
        self.counters.publish_dropped += 1
        return envelope

    # ------------------------------------------------------------------ consume side

    def subscribe(self, name: str) -> None:
        self._group(name)

    def _group(self, name: str) -> _Group:
        group = self._groups.get(name)
        if group is None:
            start = next(iter(self._log), self._next_seq)
            group = self._groups[name] = _Group(name=name, next_seq=start)
        return group

    def take(
        self, group_name: str, consumer: str, now_s: float, dead: list[Envelope[Message]]
    ) -> Envelope[Message] | None:
        """Hand the next envelope to ``consumer``: its claimed backlog, then newly claimed idle ones, then new ones.

        Expired or exhausted messages met on the way are dead-lettered into ``dead`` (to be published by the caller)
        and skipped.
        """
        group = self._group(group_name)
        while True:
            seq = self._next_claimed(group, consumer)
            if seq is None:
                seq = self._claim(group, consumer, now_s, dead)
            if seq is None:
                seq = self._next_new(group)
                if seq is None:
                    return None
                group.next_seq = seq + 1
                group.pending[seq] = _Pending(consumer=consumer, since_s=now_s, attempts=0)
            entry = self._log[seq]
            state = group.pending[seq]
            if now_s - entry.envelope.published_at_s > self._limits.ttl_s:
                dead.append(self._dead_letter(group_name, seq, f"expired: older than ttl_s={self._limits.ttl_s}"))
                continue
            state.attempts += 1
            state.consumer = consumer
            state.since_s = now_s
            group.pending.move_to_end(seq)
            if entry.origin is not None:
                self._signal_of.pop(entry.origin, None)
                entry.origin = None
            self.counters.delivered += 1
            return msgspec.structs.replace(
                entry.envelope,
                attempts=state.attempts,
                last_error=state.last_error or entry.envelope.last_error,
                group=group_name,
                consumer=consumer,
            )

    def _next_claimed(self, group: _Group, consumer: str) -> int | None:
        queue = group.claimed.get(consumer)
        while queue:
            seq = queue.popleft()
            state = group.pending.get(seq)
            if state is not None and state.consumer == consumer:
                return seq
        return None

    def _claim(self, group: _Group, consumer: str, now_s: float, dead: list[Envelope[Message]]) -> int | None:
        """Move up to claim_batch idle pending messages to ``consumer`` and return the first of them.

        Idle means ``now_s >= since_s + claim_idle_s``, the very expression next_claim_at() returns, so a receive
        woken at that deadline always finds the message claimable.
        """
        idle: list[int] = []
        for seq, state in group.pending.items():  # oldest `since_s` first, so stop at the first busy one
            if len(idle) >= self._limits.claim_batch or now_s < state.since_s + self._limits.claim_idle_s:
                break
            idle.append(seq)
        claimed: list[int] = []
        for seq in idle:
            state = group.pending[seq]
            if state.attempts >= self._limits.max_attempts:
                reason = state.last_error or f"not acked after {state.attempts} deliveries"
                dead.append(self._dead_letter(group.name, seq, reason))
                continue
            state.consumer = consumer
            state.since_s = now_s
            group.pending.move_to_end(seq)
            claimed.append(seq)
        if not claimed:
            return None
        group.claimed.setdefault(consumer, deque()).extend(claimed[1:])
        return claimed[0]

    def _next_new(self, group: _Group) -> int | None:
        if group.next_seq >= self._next_seq:
            return None
        if group.next_seq in self._log:
            return group.next_seq
        # Only trimming and dead-letter overflow leave gaps, and both remove the oldest messages first.
        first = next(iter(self._log), None)
        return first if first is not None and first > group.next_seq else None

    def next_claim_at(self, group_name: str) -> float | None:
        """When the group's oldest pending message becomes claimable (None if nothing is pending)."""
        group = self._groups.get(group_name)
        if group is None or not group.pending:
            return None
        first = next(iter(group.pending.values()))
        return first.since_s + self._limits.claim_idle_s

    def ack(self, group_name: str, message_id: str) -> bool:
        seq = self._seq_of.get(message_id)
        group = self._groups.get(group_name)
        if seq is None or group is None or group.pending.pop(seq, None) is None:
            return False
        self.counters.acked += 1
        self._done(group_name, seq)
        return True

    def nack(self, group_name: str, message_id: str, error: str) -> Envelope[Message] | None:
        """Record ``error``; returns the dead letter if that was the last allowed attempt."""
        seq = self._seq_of.get(message_id)
        group = self._groups.get(group_name)
        state = None if seq is None or group is None else group.pending.get(seq)
        if seq is None or state is None:
            return None
        state.last_error = error
        if state.attempts >= self._limits.max_attempts:
            return self._dead_letter(group_name, seq, error)
        return None

    def backlog(self, group_name: str) -> int:
        return sum(1 for entry in self._log.values() if group_name not in entry.done_by)

    # ------------------------------------------------------------------ removal

    def _dead_letter(self, group_name: str, seq: int, reason: str) -> Envelope[Message]:
        envelope = self._log[seq].envelope
        state = self._groups[group_name].pending.pop(seq)
        self.counters.dead_letter_total += 1
        info = DeadLetterInfo(
            topic=self.topic, group=group_name, message_id=envelope.message_id, attempts=state.attempts, reason=reason
        )
        self._done(group_name, seq)
        return msgspec.structs.replace(envelope, attempts=state.attempts, last_error=reason, dead_letter=info)

    def _done(self, group_name: str, seq: int) -> None:
        entry = self._log.get(seq)
        if entry is None:
            return
        entry.done_by.add(group_name)
        if len(entry.done_by) >= len(self._groups):
            self._remove(seq)

    def trim_expired(self, now_s: float) -> int:
        trimmed = 0
        while self._log:
            seq, entry = next(iter(self._log.items()))
            if now_s - entry.envelope.published_at_s <= self._limits.ttl_s:
                break
            self._remove(seq)
            trimmed += 1
        self.counters.expired_trimmed += trimmed
        return trimmed

    def _remove(self, seq: int) -> None:
        entry = self._log.pop(seq)
        del self._seq_of[entry.envelope.message_id]
        if entry.origin is not None:
            self._signal_of.pop(entry.origin, None)
        for group in self._groups.values():
            group.pending.pop(seq, None)
