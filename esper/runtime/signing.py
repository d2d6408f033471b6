"""Signed commands: HMAC-SHA256 over a canonical encoding, and the ordered verifier with its nonce ledger.

Canonical encoding: ``msgspec.json.encode(cmd, order="sorted")`` of the command with ``security.signature`` set to
"" (every other field, key id and nonce included, is covered). Sorted keys make the bytes independent of field
order in the class; msgspec writes floats in their shortest round-trip form, so the bytes are the same in every
process that holds the same values. ``sign_command`` signs the command as a decoder reads it back (an int in a float
field made a float), so a copy decoded from JSON (Kasmina's journal, replayed by a resumed run) verifies as the
original did. The signature is the lower-case hex HMAC-SHA256 of those bytes. PolicyUpdate is
signed the same way over its top-level ``signature`` field.

Time: the verifier compares ``issued_at`` with its own clock, so issuer and verifier must share a time base (the
same clock object in one process; wall time across processes).
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections import OrderedDict
from typing import TYPE_CHECKING, final

import msgspec

from schemas.base import Record
from schemas.domain_enums import CommandKind, CommandRejectReason, TelemetryLevel
from schemas.telemetry import TelemetryEvent

if TYPE_CHECKING:
    from collections.abc import Mapping

    from esper.runtime.clock import Clock
    from esper.runtime.events import EventSink
    from schemas.control import AdaptationCommand
    from schemas.reports import PolicyUpdate

_SEED_VERBS = frozenset(
    {CommandKind.CULL, CommandKind.FOSSILIZE, CommandKind.CANCEL, CommandKind.PAUSE, CommandKind.RESUME}
)


def canonical_command_bytes(cmd: AdaptationCommand) -> bytes:
    """The bytes a command's signature covers: sorted-key JSON with ``security.signature`` blanked."""
    blank = msgspec.structs.replace(cmd, security=msgspec.structs.replace(cmd.security, signature=""))
    return msgspec.json.encode(blank, order="sorted")


def _hmac_hex(key: bytes, data: bytes) -> str:
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def sign_command(cmd: AdaptationCommand, key: bytes, key_id: str) -> AdaptationCommand:
    """A copy of ``cmd`` whose security block names ``key_id`` and carries the HMAC of the canonical encoding.

    Raises:
        ValueError: ``key`` or ``key_id`` is empty.
    """
    if not key:
        raise ValueError("key must not be empty")
    if not key_id:
        raise ValueError("key_id must not be empty")
    keyed = _as_decoded(
        msgspec.structs.replace(cmd, security=msgspec.structs.replace(cmd.security, key_id=key_id, signature=""))
    )
    signature = _hmac_hex(key, canonical_command_bytes(keyed))
    return msgspec.structs.replace(keyed, security=msgspec.structs.replace(keyed.security, signature=signature))


def _as_decoded(cmd: AdaptationCommand) -> AdaptationCommand:
    """``cmd`` with each value of the type its field declares (an int held in a float field becomes a float), as a
    decoder reads it back: Kasmina's journal keeps the command as JSON, and the copy a replay decodes must encode to
    the very bytes that were signed. A command the schema refuses is signed as it is (the verifier refuses it)."""
    try:
        return msgspec.convert(msgspec.to_builtins(cmd), type=type(cmd))
    except msgspec.ValidationError:
        return cmd


def command_signature_valid(cmd: AdaptationCommand, keys: Mapping[str, bytes]) -> bool:
    """Whether the command's signature matches its key id's key (constant-time compare); unknown key id: False."""
    key = keys.get(cmd.security.key_id)
    if key is None:
        return False
    expected = _hmac_hex(key, canonical_command_bytes(cmd))
    return hmac.compare_digest(expected, cmd.security.signature)


# Leads the verdict's canonical bytes: a JSON array, so they can equal no command's or update's (JSON objects) under
# the same key.
_VERDICT_DOMAIN = "esper.kasmina.verdict.v1"


def canonical_verdict_bytes(
    run_id: str, step: int, cmd: AdaptationCommand, verdict: CommandRejectReason | None
) -> bytes:
    """The bytes a journaled verdict's MAC covers: the run, the boundary's step, the command's id and signature (which
    covers the rest of it) and the verdict ("accepted" for none)."""
    said = "accepted" if verdict is None else verdict.value
    return msgspec.json.encode([_VERDICT_DOMAIN, run_id, step, cmd.command_id, cmd.security.signature, said])


def verdict_mac(
    keys: Mapping[str, bytes], run_id: str, step: int, cmd: AdaptationCommand, verdict: CommandRejectReason | None
) -> str | None:
    """The hex HMAC-SHA256 of ``canonical_verdict_bytes`` under the run's key: Kasmina journals it with a verdict it
    reached on arrival (a stale issue time, a spent nonce) so a replay can tell it was not edited. A run has one key;
    with several the first key id in sorted order keys it (not the command's: a forged one names any). None without
    a key."""
    if not keys:
        return None
    return _hmac_hex(keys[min(keys)], canonical_verdict_bytes(run_id, step, cmd, verdict))


def canonical_update_bytes(update: PolicyUpdate) -> bytes:
    """The bytes a PolicyUpdate's signature covers: sorted-key JSON with ``signature`` blanked."""
    return msgspec.json.encode(msgspec.structs.replace(update, signature=""), order="sorted")


def sign_policy_update(update: PolicyUpdate, key: bytes, key_id: str) -> PolicyUpdate:
    """A copy of ``update`` naming ``key_id`` and carrying the HMAC of its canonical encoding.

    Raises:
        ValueError: ``key`` or ``key_id`` is empty.
    """
    if not key:
        raise ValueError("key must not be empty")
    if not key_id:
        raise ValueError("key_id must not be empty")
    keyed = msgspec.structs.replace(update, key_id=key_id, signature="")
    return msgspec.structs.replace(keyed, signature=_hmac_hex(key, canonical_update_bytes(keyed)))


def policy_update_signature_valid(update: PolicyUpdate, keys: Mapping[str, bytes]) -> bool:
    """Whether a PolicyUpdate's signature matches its key id's key; unknown key id: False."""
    key = keys.get(update.key_id)
    if key is None or not update.signature:
        return False
    return hmac.compare_digest(_hmac_hex(key, canonical_update_bytes(update)), update.signature)


def missing_command_fields(cmd: AdaptationCommand) -> tuple[str, ...]:
    """Names of the fields a command lacks: the security block's, then those its kind needs (check 1)."""
    missing: list[str] = []
    sec = cmd.security
    if not cmd.command_id:
        missing.append("command_id")
    if not sec.signature:
        missing.append("security.signature")
    if not sec.key_id:
        missing.append("security.key_id")
    if not sec.nonce or sec.nonce != cmd.command_id:
        missing.append("security.nonce")
    if not math.isfinite(cmd.issued_at) or sec.issued_at != cmd.issued_at:
        missing.append("issued_at")
    if not math.isfinite(sec.freshness_window_s) or sec.freshness_window_s <= 0:
        missing.append("security.freshness_window_s")
    kind = cmd.kind
    if kind is CommandKind.GERMINATE:
        required = (("target_slot", cmd.target_slot), ("blueprint_id", cmd.blueprint_id), ("blend", cmd.blend))
        missing.extend(name for name, value in required if value is None)
    elif kind in _SEED_VERBS and cmd.target_seed_id is None:
        missing.append("target_seed_id")
    elif kind is CommandKind.OPTIMIZER and cmd.lr_delta is None:
        missing.append("lr_delta")
    return tuple(missing)


class VerifierStatistics(Record, frozen=True):
    """A CommandVerifier at one instant; ``rejected`` counts by reason value. Never blocks, never changes state."""

    accepted: int
    rejected: dict[str, int]
    ledger_entries: int
    ledger_capacity: int
    expired: int
    evicted: int


@final
class CommandVerifier:
    """Checks signed commands in the order of REFERENCE.md section 11 and remembers nonces to refuse replays.

    Checks, first failure wins: (1) fields present (MISSING_FIELDS); (2) signature valid, unknown key id included
    (BAD_SIGNATURE); (3) nonce unseen (NONCE_REPLAYED); (4) issued at most ``future_skew_s`` ahead of the clock
    (ISSUED_IN_FUTURE); (5) issued at most ``freshness_s`` ago (STALE); then the nonce is recorded, and a ledger that
    cannot take it fails closed (NONCE_LEDGER_FULL). Only accepted commands enter the ledger.

    Ledger: an entry lives ``nonce_ttl_s`` seconds from its arrival; ``purge()`` drops expired entries and should
    be called on a timer by the owner (every insert also purges). When the ledger is at capacity, entries whose
    command would already fail check (5) are evicted early (a replay of them is refused as STALE anyway); entries
    still inside the freshness window are never evicted, so a ledger full of fresh nonces refuses new commands and
    emits one CRITICAL ``nonce_ledger_full`` event per episode. Every rejection emits a CRITICAL
    ``command_rejected`` event with the reason. Event-loop thread only (or any single thread): it holds no lock.
    """

    __slots__ = (
        "_accepted",
        "_clock",
        "_evicted",
        "_expired",
        "_freshness_s",
        "_full_alarm_raised",
        "_future_skew_s",
        "_keys",
        "_ledger",
        "_ledger_size",
        "_name",
        "_nonce_ttl_s",
        "_rejected",
        "_sink",
    )

    def __init__(
        self,
        keys: Mapping[str, bytes],
        clock: Clock,
        *,
        sink: EventSink | None = None,
        name: str = "verifier",
        freshness_s: float = 60.0,
        future_skew_s: float = 5.0,
        nonce_ttl_s: float = 300.0,
        ledger_size: int = 4096,
    ) -> None:
        """Build a verifier with an empty ledger.

        Args:
            keys: key id -> secret; a command naming another key id is refused as BAD_SIGNATURE.
            clock: source of "now", on the issuer's time base, in seconds.
            sink: receives the CRITICAL events; None discards them.
            name: reported in events (the owning actor).
            freshness_s: oldest accepted age of ``issued_at``, in seconds.
            future_skew_s: how far ahead of the clock ``issued_at`` may be, in seconds.
            nonce_ttl_s: how long a nonce is remembered, in seconds; must exceed freshness_s + future_skew_s.
            ledger_size: most nonces remembered at once.

        Raises:
            ValueError: a duration or size is out of range, or the TTL does not outlast freshness plus skew.
        """
        if freshness_s <= 0:
            raise ValueError(f"freshness_s must be > 0, got {freshness_s}")
        if future_skew_s < 0:
            raise ValueError(f"future_skew_s must be >= 0, got {future_skew_s}")
        if nonce_ttl_s <= freshness_s + future_skew_s:
            raise ValueError(f"nonce_ttl_s ({nonce_ttl_s}) must exceed freshness_s + future_skew_s")
        if ledger_size < 1:
            raise ValueError(f"ledger_size must be >= 1, got {ledger_size}")
        self._keys = dict(keys)
        self._clock = clock
        self._sink = sink
        self._name = name
        self._freshness_s = freshness_s
        self._future_skew_s = future_skew_s
        self._nonce_ttl_s = nonce_ttl_s
        self._ledger_size = ledger_size
        # nonce -> (arrival time, issued_at, decision step); arrival times grow, so the oldest arrival is always first.
        self._ledger: OrderedDict[str, tuple[float, float, int]] = OrderedDict()
        self._accepted = 0
        self._rejected: dict[CommandRejectReason, int] = {}
        self._expired = 0
        self._evicted = 0
        self._full_alarm_raised = False

    def verify(self, cmd: AdaptationCommand) -> CommandRejectReason | None:
        """None if the command passes every check (its nonce is then recorded), else the first failed check."""
        reason = self._check(cmd)
        if reason is None:
            reason = self._record_nonce(cmd)
        if reason is None:
            self._accepted += 1
            return None
        self._rejected[reason] = self._rejected.get(reason, 0) + 1
        self._emit(
            "command_rejected",
            f"command {cmd.command_id} ({cmd.kind.value}) rejected: {reason.value}",
            {"reason": reason.value, "command_id": cmd.command_id, "kind": cmd.kind.value},
        )
        return reason

    def forget_decided_after(self, step: int) -> int:
        """Forget the nonces of accepted commands decided on a step after ``step``: training went back there (a
        rollback, a trainer restart) and the controller decides those steps again under the same reproducible command
        ids, which were refused as NONCE_REPLAYED and lost. Returns how many were forgotten."""
        undone = [nonce for nonce, (_, _, decided) in self._ledger.items() if decided > step]
        for nonce in undone:
            del self._ledger[nonce]
        return len(undone)

    def purge(self) -> int:
        """Forget nonces older than the TTL; returns how many. Call it on a timer (SecurityConfig's interval)."""
        now = self._clock.now()
        dropped = 0
        while self._ledger:
            nonce, (arrived, _, _) = next(iter(self._ledger.items()))
            if now - arrived < self._nonce_ttl_s:
                break
            del self._ledger[nonce]
            dropped += 1
        self._expired += dropped
        if dropped and len(self._ledger) < self._ledger_size:
            self._full_alarm_raised = False
        return dropped

    def statistics(self) -> VerifierStatistics:
        """Counters and ledger occupancy; never blocks, never changes state."""
        return VerifierStatistics(
            accepted=self._accepted,
            rejected={reason.value: count for reason, count in self._rejected.items()},
            ledger_entries=len(self._ledger),
            ledger_capacity=self._ledger_size,
            expired=self._expired,
            evicted=self._evicted,
        )

    def signature_valid(self, cmd: AdaptationCommand) -> bool:
        """Whether the command's HMAC matches its key id's key, check (2) alone: what a replay of a journaled command
        checks again. No ledger, no clock, no counters, no events."""
        return command_signature_valid(cmd, self._keys)

    def verdict_mac(
        self, run_id: str, step: int, cmd: AdaptationCommand, verdict: CommandRejectReason | None
    ) -> str | None:
        """The MAC of a verdict on ``cmd`` at the boundary of ``step`` under this verifier's key (see the module
        function ``verdict_mac``); None without a key."""
        return verdict_mac(self._keys, run_id, step, cmd, verdict)

    def _check(self, cmd: AdaptationCommand) -> CommandRejectReason | None:
        if missing_command_fields(cmd):
            return CommandRejectReason.MISSING_FIELDS
        if not command_signature_valid(cmd, self._keys):
            return CommandRejectReason.BAD_SIGNATURE
        if cmd.command_id in self._ledger:
            return CommandRejectReason.NONCE_REPLAYED
        now = self._clock.now()
        if cmd.issued_at - now > self._future_skew_s:
            return CommandRejectReason.ISSUED_IN_FUTURE
        if now - cmd.issued_at > self._freshness_s:
            return CommandRejectReason.STALE
        return None

    def _record_nonce(self, cmd: AdaptationCommand) -> CommandRejectReason | None:
        self.purge()
        if len(self._ledger) >= self._ledger_size:
            self._evict_stale()
        if len(self._ledger) >= self._ledger_size:
            if not self._full_alarm_raised:
                self._full_alarm_raised = True
                self._emit(
                    "nonce_ledger_full",
                    f"nonce ledger full of {self._ledger_size} fresh entries; refusing commands",
                    {"capacity": self._ledger_size},
                )
            return CommandRejectReason.NONCE_LEDGER_FULL
        self._full_alarm_raised = False
        self._ledger[cmd.command_id] = (self._clock.now(), cmd.issued_at, cmd.decision_step)
        return None

    def _evict_stale(self) -> None:
        # A nonce whose command is already past the freshness window cannot be replayed successfully: check (5)
        # refuses it, so forgetting it early is safe. Fresh nonces are never forgotten.
        cutoff = self._clock.now() - self._freshness_s
        stale = [nonce for nonce, (_, issued_at, _) in self._ledger.items() if issued_at < cutoff]
        for nonce in stale:
            del self._ledger[nonce]
        self._evicted += len(stale)

    def _emit(self, name: str, description: str, attributes: dict[str, str | int | float | bool]) -> None:
        if self._sink is None:
            return
        attributes["verifier"] = self._name
        self._sink.emit(
            TelemetryEvent(name=name, level=TelemetryLevel.CRITICAL, description=description, attributes=attributes)
        )
