"""Whether a journaled command may be replayed: its signature checked again with the run's key, its verdict matched.

The journal is a file in the run directory, read back by a later process (``--resume``) and by this one (a rollback,
a restart): whoever can write it could add a command, or edit a verdict, and the replay would graft it. So each
journaled command is checked again as it is replayed, against the verdict recorded with it: a command recorded
accepted must carry a valid HMAC under the run's key (its key id included) and be signed for the run and step of its
boundary; a refusal must be what the command shows (a bad signature, missing fields, another run or step). Over the
whole journal (``JournalVerdicts``), a command (its id, its nonce) is accepted at most once: the verifier spends a
nonce on acceptance, and a rollback cuts the journal and forgets the nonces decided after the cut together, so a
second acceptance is an edit (a NONCE_REPLAYED line of an accepted command marked accepted).

What is not caught: the verdicts that depend on when a command arrived (a stale or future issue time, a full nonce
ledger) and a replayed nonce whose first acceptance is not in the journal were judged once, on arrival, and are not
recorded in a form the replay can check: a line of a genuinely signed command refused for one of those reasons can be
edited to accepted (or an accepted one to refused) by whoever can write the journal. The fields check is not run again
on an accepted command: the journal writes a NaN as null, and the HMAC covers exactly those bytes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, final

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


@final
class JournalVerdicts:
    """``replay_refusal`` over one pass through a journal, in order, which also refuses a command accepted a second
    time (by id or nonce: see the module's docstring). One per replay: a journal is checked from its first line."""

    __slots__ = ("_ids", "_nonces", "_run_id", "_signed")

    def __init__(self, run_id: str, signed: Callable[[AdaptationCommand], bool]) -> None:
        self._run_id = run_id
        self._signed = signed
        self._ids: set[str] = set()
        self._nonces: set[str] = set()

    def refusal(self, entry: JournalBoundary) -> str | None:
        """Why the boundary's command must not be replayed (see replay_refusal), or None."""
        refusal = replay_refusal(entry, self._run_id, self._signed)
        command = entry.command
        if refusal is not None or command is None or entry.security is not None:
            return refusal
        nonce = command.security.nonce
        if command.command_id in self._ids or nonce in self._nonces:
            return (
                f"the {command.kind.value} command {command.command_id}: it was accepted at an earlier boundary (a"
                " command's nonce is spent once accepted), but the journal records it accepted again"
            )
        self._ids.add(command.command_id)
        self._nonces.add(nonce)
        return None
