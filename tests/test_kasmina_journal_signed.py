"""Kasmina replays a journaled command only if it verifies with the run's key and its recorded verdict holds."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec
import pytest

from actors.kasmina.journal import JOURNAL_FILENAME, JournalBoundary, read_journal
from actors.kasmina.journal_check import JournalVerdicts, replay_refusal
from esper.runtime.signing import command_signature_valid, verdict_mac
from schemas.domain_enums import CommandRejectReason
from schemas.enums import SeedLifecycleStage as Stage
from schemas.runtime import ChildFailed
from tests._kasmina_harness import KEY, KEY_ID, RUN, make_packet, running_kasmina, signed_germinate

if TYPE_CHECKING:
    from pathlib import Path

    from esper.runtime.clock import ManualClock
    from esper.runtime.events import RecordingSink
    from schemas.control import AdaptationCommand

R = CommandRejectReason
OTHER_KEY = b"not-the-run-key-0123456789abcdef"


def germinate(step: int, *, key: bytes = KEY, blueprint_id: str = "BP002", rank: int = 2) -> AdaptationCommand:
    """A GERMINATE into slot a signed for ``step`` of RUN, as Tamiyo signs it (an int parameter, as a policy may
    hold one: the journal writes it back as a float)."""
    return signed_germinate(step, key, blueprint_id=blueprint_id, params={"rank": rank})


def boundary(step: int, command: AdaptationCommand | None, security: CommandRejectReason | None) -> JournalBoundary:
    return JournalBoundary(packet=make_packet(step), command=command, security=security)


def signed(command: AdaptationCommand) -> bool:
    return command_signature_valid(command, {KEY_ID: KEY})


def seal(run_id: str, step: int, command: AdaptationCommand, verdict: CommandRejectReason | None) -> str | None:
    return verdict_mac({KEY_ID: KEY}, run_id, step, command, verdict)


def refusal(entry: JournalBoundary) -> str | None:
    return replay_refusal(entry, RUN, signed)


def test_a_command_decoded_from_the_journal_verifies_as_the_signed_one_did() -> None:
    """An int in a float field was signed as `2` and journaled as `2.0`: the decoded copy failed its own HMAC."""
    entry = boundary(4, germinate(4), None)
    [decoded] = read_journal_lines([entry])
    assert isinstance(decoded, JournalBoundary)
    assert decoded.command is not None
    assert signed(decoded.command)
    assert refusal(decoded) is None


def read_journal_lines(entries: list[JournalBoundary]) -> list[object]:
    encoder = msgspec.json.Encoder()
    return [msgspec.json.decode(encoder.encode(e), type=JournalBoundary) for e in entries]


@pytest.mark.parametrize(
    ("entry", "said"),
    [
        # Accepted live and verifying now; refused live for a reason a replay cannot judge, its HMAC holding.
        (boundary(4, germinate(4), None), None),
        (boundary(4, germinate(4), R.STALE), None),
        (boundary(4, germinate(4), R.NONCE_REPLAYED), None),
        # Refused live for what the command shows: refused again.
        (boundary(4, germinate(4, key=OTHER_KEY), R.BAD_SIGNATURE), None),
        (boundary(4, germinate(3), R.DECISION_MISMATCH), None),
        (boundary(4, None, None), None),
        # A forged signature recorded accepted (the security review's repro), or refused for a reason it does not show.
        (boundary(4, germinate(4, key=OTHER_KEY), None), "its signature does not match the run's key, but the journal"
         " records it accepted"),
        (boundary(4, germinate(4, key=OTHER_KEY), R.STALE), "its signature does not match the run's key, but the"
         " journal records it refused (stale)"),
        # A refused command marked accepted, or its refusal changed.
        (boundary(4, germinate(3), None), f"it is signed for run {RUN!r} step 3, but the journal records it accepted"),
        (boundary(4, germinate(4), R.BAD_SIGNATURE), "its signature matches the run's key, but the journal records it"
         " refused (bad_signature)"),
        (boundary(4, germinate(4), R.DECISION_MISMATCH), "it is signed for this run and step 4, but the journal"
         " records it refused (decision_mismatch)"),
        (boundary(4, germinate(4), R.MISSING_FIELDS), "it has every field, but the journal records it refused"
         " (missing_fields)"),
        (boundary(4, germinate(4), R.UNKNOWN_SLOT), "that is no verdict of the signature checks, but the journal"
         " records it refused (unknown_slot)"),
        (boundary(4, None, R.BAD_SIGNATURE), "a verdict (bad_signature) is recorded without a command"),
    ],
)  # fmt: skip
def test_a_journaled_verdict_must_be_the_one_verification_gives(entry: JournalBoundary, said: str | None) -> None:
    found = refusal(entry)
    if said is None:
        assert found is None
    else:
        assert found is not None
        assert found.endswith(said)
        assert entry.command is None or found.startswith(f"the germinate command {entry.command.command_id}: ")


def test_a_command_accepted_twice_in_one_journal_is_refused() -> None:
    """A NONCE_REPLAYED line (the same signed command arriving again) edited to accepted passed: each line was
    checked alone, and its HMAC holds. Over one pass a command id, or a nonce, is accepted once."""
    command = germinate(4)
    verdicts = JournalVerdicts(RUN, signed, seal)
    assert verdicts.refusal(boundary(4, command, None)) is None
    assert verdicts.refusal(boundary(4, command, R.NONCE_REPLAYED)) is None  # as recorded: a refusal
    assert verdicts.refusal(boundary(4, command, None)) == (
        f"the germinate command {command.command_id}: it was accepted at an earlier boundary (a command's nonce is"
        " spent once accepted), but the journal records it accepted again"
    )
    # Each pass starts afresh (a rollback's replay reads the cut journal from its first line).
    assert JournalVerdicts(RUN, signed, seal).refusal(boundary(4, command, None)) is None
    # The checks of a single line still come first.
    forged = germinate(4, key=OTHER_KEY)
    assert JournalVerdicts(RUN, signed, seal).refusal(boundary(4, forged, None)) == refusal(boundary(4, forged, None))


async def test_a_command_replayed_as_accepted_twice_stops_the_replay(
    clock: ManualClock, sink: RecordingSink, tmp_path: Path
) -> None:
    """The journal's line of an accepted germinate appears again, recorded accepted (an edited NONCE_REPLAYED line):
    replayed, it would be planned twice."""
    command = germinate(2)
    async with running_kasmina(clock, sink, lag=2, journal_dir=tmp_path) as h:
        await h.boundary(1)
        await h.boundary(2, command)
        await h.boundary(3)
    path = tmp_path / JOURNAL_FILENAME
    lines = path.read_bytes().splitlines(keepends=True)
    [accepted] = [line for line in lines if command.command_id.encode() in line]
    path.write_bytes(b"".join(line for kept in lines for line in ([kept, accepted] if kept == accepted else [kept])))
    sink.events.clear()
    async with running_kasmina(clock, sink, lag=2, journal_dir=tmp_path, resume_step=3):
        [failed] = sink.of_type(ChildFailed)
        assert failed.error_type == "JournalTampered"
        assert failed.error == (
            f"{path}: step 2: the germinate command {command.command_id}: it was accepted at an earlier boundary (a"
            " command's nonce is spent once accepted), but the journal records it accepted again"
        )


def test_a_tampered_field_of_a_signed_command_fails_its_signature() -> None:
    genuine = germinate(4)
    for tampered in (
        msgspec.structs.replace(genuine, blueprint_id="BP001"),
        msgspec.structs.replace(genuine, target_slot="b"),
        msgspec.structs.replace(genuine, blueprint_params={"rank": 64.0}),
    ):
        assert refusal(boundary(4, tampered, None)) == (
            f"the germinate command {genuine.command_id}: its signature does not match the run's key, but the journal"
            " records it accepted"
        )


async def _journal_then_forge(clock: ManualClock, sink: RecordingSink, tmp_path: Path, forge: JournalBoundary) -> None:
    """A run of three NO_OP boundaries, then its journal's boundary of step 2 replaced by ``forge``."""
    async with running_kasmina(clock, sink, lag=2, journal_dir=tmp_path) as h:
        for step in (1, 2, 3):
            await h.boundary(step)
    path = tmp_path / JOURNAL_FILENAME
    encoder = msgspec.json.Encoder()
    lines = [
        encoder.encode(forge if isinstance(e, JournalBoundary) and e.packet.global_step == 2 else e)
        for e in read_journal(path)
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")


async def test_a_forged_germinate_in_the_journal_is_refused_on_replay_not_grafted(
    clock: ManualClock, sink: RecordingSink, tmp_path: Path
) -> None:
    """A GERMINATE with a made-up signature, recorded accepted, grafted a seed when a resume replayed the journal."""
    forged = germinate(2, key=OTHER_KEY)
    await _journal_then_forge(clock, sink, tmp_path, boundary(2, forged, None))
    sink.events.clear()
    async with running_kasmina(clock, sink, lag=2, journal_dir=tmp_path, resume_step=3) as h:
        [failed] = sink.of_type(ChildFailed)
        assert failed.error_type == "JournalTampered"
        assert failed.error == (
            f"{tmp_path / JOURNAL_FILENAME}: step 2: the germinate command {forged.command_id}: its signature does not"
            " match the run's key, but the journal records it accepted"
        )
        assert h.plans.empty()  # no attach was sent again for the forged germination
        assert len(h.handoff) == 0  # nor any seed module prepared for it


async def test_a_genuine_command_and_a_refused_forgery_in_the_journal_replay_as_they_ran(
    clock: ManualClock, sink: RecordingSink, tmp_path: Path
) -> None:
    """The happy path of the check: a forgery Kasmina refused live stays refused, a signed germinate is grafted."""
    async with running_kasmina(clock, sink, lag=2, journal_dir=tmp_path) as h:
        refused = await h.boundary(1, germinate(1, key=OTHER_KEY))
        assert refused.command_results[0].reason is R.BAD_SIGNATURE
        await h.boundary(2, germinate(2))
    sink.events.clear()
    async with running_kasmina(clock, sink, lag=2, journal_dir=tmp_path, resume_step=2) as h:
        assert await h.stage("a") is Stage.GERMINATED
        assert not sink.of_type(ChildFailed)
