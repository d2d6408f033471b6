"""Whether a journaled command may be replayed: its signature checked again with the run's key, its verdict matched.

The journal is a file in the run directory, read back by a later process (``--resume``) and by this one (a rollback,
a restart): whoever can write it could add a command, or mark a refused one accepted, and the replay would graft it.
So each journaled command is checked again as it is replayed, against the verdict recorded with it: a command
recorded accepted must carry a valid HMAC under the run's key and be signed for the run and step of its boundary; a
refusal must be what the command shows (a bad signature, missing fields, another run or step). The verdicts that
depend on when and how often a command arrived (a replayed nonce, a stale or future issue time, a full ledger) were
judged once, on arrival, and are not judged again: they stand if the command's HMAC holds. The fields check is not
run again on an accepted command: the journal writes a NaN as null, and the HMAC covers exactly those bytes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from esper.runtime.errors import EsperError
from esper.runtime.signing import missing_command_fields
from schemas.domain_enums import CommandRejectReason

if TYPE_CHECKING:
    from collections.abc import Callable

    from actors.kasmina.journal import JournalBoundary
    from schemas.control import AdaptationCommand

# The verifier's verdicts on a command's arrival (its nonce ledger, its clock), which a replay cannot judge again.
ARRIVAL_VERDICTS: Final = frozenset(
    {
        CommandRejectReason.NONCE_REPLAYED,
        CommandRejectReason.ISSUED_IN_FUTURE,
        CommandRejectReason.STALE,
        CommandRejectReason.NONCE_LEDGER_FULL,
    }
)


class JournalTampered(EsperError):
    """A journaled command fails verification with the run's key, or its recorded verdict is not the one
    verification gives: the journal was written by someone other than this run (or with another key)."""


def replay_refusal(entry: JournalBoundary, run_id: str, signed: Callable[[AdaptationCommand], bool]) -> str | None:
    """Why the boundary's command must not be replayed, in words that follow "step N: "; None when it may be (no
    command, or one whose recorded verdict holds). ``signed``: whether a command's HMAC matches the run's key
    (CommandVerifier.signature_valid, or signing.command_signature_valid with the key)."""
    command, recorded = entry.command, entry.security
    if command is None:
        return None if recorded is None else f"a verdict ({recorded.value}) is recorded without a command"
    step = entry.packet.global_step
    mismatch = command.training_run_id != run_id or command.decision_step != step
    if recorded is CommandRejectReason.DECISION_MISMATCH:
        if mismatch:
            return None
        why = f"it is signed for this run and step {step}"
    elif mismatch:
        why = f"it is signed for run {command.training_run_id!r} step {command.decision_step}"
    elif recorded is CommandRejectReason.MISSING_FIELDS:
        if missing_command_fields(command):
            return None
        why = "it has every field"
    elif recorded is CommandRejectReason.BAD_SIGNATURE:
        if not signed(command):
            return None
        why = "its signature matches the run's key"
    elif recorded is None or recorded in ARRIVAL_VERDICTS:
        if signed(command):
            return None
        why = "its signature does not match the run's key"
    else:
        why = "that is no verdict of the signature checks"
    said = "accepted" if recorded is None else f"refused ({recorded.value})"
    return f"the {command.kind.value} command {command.command_id}: {why}, but the journal records it {said}"
