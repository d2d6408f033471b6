"""Command signing and the ordered verifier: tampering, keys, replay, freshness, check order and the nonce ledger."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import msgspec
import pytest

from esper.runtime.clock import ManualClock
from esper.runtime.signing import (
    CommandVerifier,
    canonical_command_bytes,
    command_signature_valid,
    policy_update_signature_valid,
    sign_command,
    sign_policy_update,
)
from schemas.control import AdaptationCommand, BlendConfig, CommandSecurity
from schemas.domain_enums import CommandKind, CommandRejectReason, TelemetryLevel
from schemas.reports import PolicyUpdate, ValidationReport
from schemas.telemetry import TelemetryEvent

if TYPE_CHECKING:
    from esper.runtime.events import RecordingSink

KEY = b"k" * 32
KEYS = {"main": KEY}


def make_command(issued_at: float = 1000.0, kind: CommandKind = CommandKind.GERMINATE) -> AdaptationCommand:
    command_id = str(uuid.uuid4())
    cmd = AdaptationCommand(
        command_id=command_id,
        issued_at=issued_at,
        training_run_id="run-1",
        kind=kind,
        decision_step=40,
        policy_version="heuristic-1",
        security=CommandSecurity(signature="", key_id="", nonce=command_id, issued_at=issued_at),
        target_slot="slot-0",
        target_seed_id="seed-1",
        blueprint_id="bp-mlp",
        blend=BlendConfig(),
        lr_delta=0.1,
    )
    return sign_command(cmd, KEY, "main")


@pytest.fixture
def verifier(sink: RecordingSink) -> tuple[CommandVerifier, ManualClock]:
    clock = ManualClock(start_s=1000.0)
    return CommandVerifier(KEYS, clock, sink=sink, ledger_size=8), clock


def test_valid_command_is_accepted_and_counted(verifier: tuple[CommandVerifier, ManualClock]) -> None:
    ver, _ = verifier
    assert ver.verify(make_command()) is None
    stats = ver.statistics()
    assert stats.accepted == 1
    assert stats.rejected == {}
    assert stats.ledger_entries == 1


def test_signing_is_deterministic_and_covers_key_id() -> None:
    cmd = make_command()
    assert sign_command(cmd, KEY, "main") == cmd
    assert len(cmd.security.signature) == 64
    assert b'"signature":""' in canonical_command_bytes(cmd)
    assert sign_command(cmd, KEY, "other").security.signature != cmd.security.signature


def test_signature_survives_a_decode_round_trip() -> None:
    cmd = make_command()
    decoded = msgspec.json.decode(msgspec.json.encode(cmd), type=AdaptationCommand)
    assert command_signature_valid(decoded, KEYS)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("target_slot", "slot-9"),
        ("blueprint_id", "bp-evil"),
        ("decision_step", 41),
        ("kind", CommandKind.CULL),
        ("lr_delta", 0.9),
        ("training_run_id", "run-2"),
        ("blend", BlendConfig(ramp_steps=1)),
    ],
)
def test_tampered_field_is_a_bad_signature(
    verifier: tuple[CommandVerifier, ManualClock], field: str, value: object
) -> None:
    ver, _ = verifier
    tampered = msgspec.structs.replace(make_command(), **{field: value})
    assert ver.verify(tampered) is CommandRejectReason.BAD_SIGNATURE


def test_wrong_key_and_unknown_key_id_are_bad_signatures(verifier: tuple[CommandVerifier, ManualClock]) -> None:
    ver, _ = verifier
    assert ver.verify(sign_command(make_command(), b"x" * 32, "main")) is CommandRejectReason.BAD_SIGNATURE
    assert ver.verify(sign_command(make_command(), KEY, "rotated")) is CommandRejectReason.BAD_SIGNATURE
    assert ver.statistics().rejected == {"bad_signature": 2}


def test_missing_fields_come_first(verifier: tuple[CommandVerifier, ManualClock]) -> None:
    ver, _ = verifier
    cmd = make_command()
    unsigned = msgspec.structs.replace(cmd, security=msgspec.structs.replace(cmd.security, signature=""))
    assert ver.verify(unsigned) is CommandRejectReason.MISSING_FIELDS
    no_slot = sign_command(msgspec.structs.replace(cmd, target_slot=None), KEY, "main")
    assert ver.verify(no_slot) is CommandRejectReason.MISSING_FIELDS
    # A stale command that is also missing a field reports the missing field.
    old = make_command(issued_at=0.0)
    old_unsigned = msgspec.structs.replace(old, security=msgspec.structs.replace(old.security, signature=""))
    assert ver.verify(old_unsigned) is CommandRejectReason.MISSING_FIELDS


def test_optimizer_needs_lr_delta_and_seed_verbs_need_a_seed(verifier: tuple[CommandVerifier, ManualClock]) -> None:
    ver, _ = verifier
    opt = make_command(kind=CommandKind.OPTIMIZER)
    assert ver.verify(sign_command(msgspec.structs.replace(opt, lr_delta=None), KEY, "main")) is (
        CommandRejectReason.MISSING_FIELDS
    )
    cull = make_command(kind=CommandKind.CULL)
    assert ver.verify(sign_command(msgspec.structs.replace(cull, target_seed_id=None), KEY, "main")) is (
        CommandRejectReason.MISSING_FIELDS
    )


def test_replay_is_refused(verifier: tuple[CommandVerifier, ManualClock], sink: RecordingSink) -> None:
    ver, _ = verifier
    cmd = make_command()
    assert ver.verify(cmd) is None
    assert ver.verify(cmd) is CommandRejectReason.NONCE_REPLAYED
    events = sink.of_type(TelemetryEvent)
    assert [(e.name, e.level, e.attributes["reason"]) for e in events] == [
        ("command_rejected", TelemetryLevel.CRITICAL, "nonce_replayed")
    ]


def test_stale_and_future_bounds(verifier: tuple[CommandVerifier, ManualClock]) -> None:
    ver, clock = verifier
    assert ver.verify(make_command(issued_at=clock.now() - 61.0)) is CommandRejectReason.STALE
    assert ver.verify(make_command(issued_at=clock.now() - 60.0)) is None
    assert ver.verify(make_command(issued_at=clock.now() + 6.0)) is CommandRejectReason.ISSUED_IN_FUTURE
    assert ver.verify(make_command(issued_at=clock.now() + 5.0)) is None


def test_command_goes_stale_on_the_clock(verifier: tuple[CommandVerifier, ManualClock]) -> None:
    ver, clock = verifier
    cmd = make_command(issued_at=clock.now())
    clock.advance(61.0)
    assert ver.verify(cmd) is CommandRejectReason.STALE


def test_stale_replay_reports_the_replay(verifier: tuple[CommandVerifier, ManualClock]) -> None:
    ver, clock = verifier
    cmd = make_command(issued_at=clock.now())
    assert ver.verify(cmd) is None
    clock.advance(61.0)
    assert ver.verify(cmd) is CommandRejectReason.NONCE_REPLAYED


def test_future_forgery_reports_bad_signature_before_time(verifier: tuple[CommandVerifier, ManualClock]) -> None:
    ver, clock = verifier
    forged = sign_command(make_command(issued_at=clock.now() + 100.0), b"y" * 32, "main")
    assert ver.verify(forged) is CommandRejectReason.BAD_SIGNATURE


def test_rejected_commands_do_not_enter_the_ledger(verifier: tuple[CommandVerifier, ManualClock]) -> None:
    ver, clock = verifier
    early = make_command(issued_at=clock.now() + 6.0)
    assert ver.verify(early) is CommandRejectReason.ISSUED_IN_FUTURE
    clock.advance(2.0)
    assert ver.verify(early) is None


def test_purge_forgets_nonces_after_the_ttl(verifier: tuple[CommandVerifier, ManualClock]) -> None:
    ver, clock = verifier
    for _ in range(3):
        assert ver.verify(make_command(issued_at=clock.now())) is None
    clock.advance(299.0)
    assert ver.purge() == 0
    clock.advance(1.0)
    assert ver.purge() == 3
    stats = ver.statistics()
    assert (stats.ledger_entries, stats.expired) == (0, 3)


def test_full_ledger_of_fresh_nonces_fails_closed(
    verifier: tuple[CommandVerifier, ManualClock], sink: RecordingSink
) -> None:
    ver, clock = verifier
    for _ in range(8):
        assert ver.verify(make_command(issued_at=clock.now())) is None
    assert ver.verify(make_command(issued_at=clock.now())) is CommandRejectReason.NONCE_LEDGER_FULL
    assert ver.verify(make_command(issued_at=clock.now())) is CommandRejectReason.NONCE_LEDGER_FULL
    alarms = [e for e in sink.of_type(TelemetryEvent) if e.name == "nonce_ledger_full"]
    assert len(alarms) == 1
    assert alarms[0].level is TelemetryLevel.CRITICAL
    assert ver.statistics().rejected == {"nonce_ledger_full": 2}
    # Once the entries are past the freshness window they may be evicted early, before their TTL.
    clock.advance(60.5)
    assert ver.verify(make_command(issued_at=clock.now())) is None
    stats = ver.statistics()
    assert stats.evicted == 8
    assert stats.ledger_entries == 1


def test_only_stale_entries_are_evicted(verifier: tuple[CommandVerifier, ManualClock]) -> None:
    ver, clock = verifier
    old = [make_command(issued_at=clock.now()) for _ in range(4)]
    for cmd in old:
        assert ver.verify(cmd) is None
    clock.advance(40.0)
    fresh = [make_command(issued_at=clock.now()) for _ in range(4)]
    for cmd in fresh:
        assert ver.verify(cmd) is None
    clock.advance(21.0)
    assert ver.verify(make_command(issued_at=clock.now())) is None
    assert ver.statistics().evicted == 4
    # Fresh nonces are still remembered, so their replays are still refused.
    assert all(ver.verify(cmd) is CommandRejectReason.NONCE_REPLAYED for cmd in fresh)
    # The evicted ones are refused too: they are stale now.
    assert all(ver.verify(cmd) is CommandRejectReason.STALE for cmd in old)


def test_constructor_rejects_a_ttl_shorter_than_the_window() -> None:
    with pytest.raises(ValueError, match="nonce_ttl_s"):
        CommandVerifier(KEYS, ManualClock(), nonce_ttl_s=60.0)


def test_policy_update_signing() -> None:
    update = PolicyUpdate(
        update_id="u1",
        version="1.0.0",
        architecture_version="tamiyo_gnn_v1",
        training_run_id="run-1",
        issued_at=5.0,
        payload_ref="blob",
        payload_sha256="0" * 64,
        registry_digests={},
        validation=ValidationReport(
            held_out_reports=1, average_reward=0.0, policy_loss=0.0, value_loss=0.0, param_loss=0.0, entropy=0.0
        ),
        signature="",
        key_id="",
    )
    signed = sign_policy_update(update, KEY, "main")
    assert policy_update_signature_valid(signed, KEYS)
    assert not policy_update_signature_valid(msgspec.structs.replace(signed, version="1.0.1"), KEYS)
    assert not policy_update_signature_valid(update, KEYS)
