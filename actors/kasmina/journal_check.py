"""Whether a journaled command may be replayed: its signature checked again with the run's key, its verdict matched.

The journal is a file in the run directory, read back by a later process (``--resume``) and by this one (a rollback,
a restart): whoever can write it could add a command, or edit a verdict, and the replay would graft it. So each
journaled command is checked again as it is replayed, against the verdict recorded with it: a command recorded
accepted must carry a valid HMAC under the run's key (its key id included) and be signed for the run and step of its
boundary; a refusal must be what the command shows (a bad signature, missing fields, another run or step). Over the
whole journal (``JournalVerdicts``), a command (its id, its nonce) is accepted at most once: the verifier spends a
nonce on acceptance, and a rollback cuts the journal and forgets the nonces decided after the cut together, so a
second acceptance is an edit (a NONCE_REPLAYED line of an accepted command marked accepted).

The verdicts that depend on when a command arrived (a stale or future issue time, a full nonce ledger, a replayed nonce
whose first acceptance is not in the journal) were judged once, on arrival, and cannot be judged again: Kasmina
journals each verdict with its MAC under the run's key (signing.verdict_mac, over the run id, the boundary's step, the
command's id and signature and the verdict), and a line whose MAC does not verify (its verdict edited, or the MAC
copied from another line, step or run) is refused. Over one pass the commands all carry a MAC or none do: a journal an
earlier version began has none (Kasmina continues it so), and a MAC removed from some lines of a MAC'd journal is
refused.

What is not caught: a journal with every MAC removed passes for an earlier version's, and its arrival verdicts are then
taken as recorded (an edit of one goes unseen); a verdict this run gave the same signed command at the same step before
a rollback cut its line can be put back. The fields check is not run again on an accepted command: the journal writes a
NaN as null, and the HMAC covers exactly those bytes.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Final, final

from esper.runtime.errors import EsperError
from esper.runtime.signing import missing_command_fields
from schemas.domain_enums import CommandRejectReason

if TYPE_CHECKING:
    from collections.abc import Callable

    from actors.kasmina.journal import JournalBoundary
    from schemas.control import AdaptationCommand

    # The MAC of a verdict under the run's key (CommandVerifier.verdict_mac, or signing.verdict_mac with the key): run
    # id, boundary step, command, verdict; None without a key.
    VerdictSeal = Callable[[str, int, AdaptationCommand, CommandRejectReason | None], str | None]

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
        if recorded is not None:
            return f"a verdict ({recorded.value}) is recorded without a command"
        return None if entry.verdict_mac is None else "a verdict MAC is recorded without a command"
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
    """``replay_refusal`` over one pass through a journal, in order, which also checks each command's verdict MAC
    with ``seal`` and refuses a command accepted a second time (by id or nonce: see the module's docstring). One per
    replay: a journal is checked from its first line."""

    __slots__ = ("_first", "_ids", "_nonces", "_run_id", "_seal", "_signed")

    def __init__(self, run_id: str, signed: Callable[[AdaptationCommand], bool], seal: VerdictSeal) -> None:
        self._run_id = run_id
        self._signed = signed
        self._seal = seal
        self._ids: set[str] = set()
        self._nonces: set[str] = set()
        # The step of the pass's first command and whether it carried a MAC: every later one must be alike.
        self._first: tuple[int, bool] | None = None

    def refusal(self, entry: JournalBoundary) -> str | None:
        """Why the boundary's command must not be replayed (see replay_refusal), or None."""
        refusal = replay_refusal(entry, self._run_id, self._signed)
        command = entry.command
        if refusal is None and command is not None:
            refusal = self._mac_refusal(entry, command)
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

    def _mac_refusal(self, entry: JournalBoundary, command: AdaptationCommand) -> str | None:
        """Why the verdict MAC of a boundary's command does not vouch for its recorded verdict, or None. A pass's
        commands all carry one (this version's journal) or none do (an earlier version's, continued so)."""
        step, mac, recorded = entry.packet.global_step, entry.verdict_mac, entry.security
        if self._first is None:
            self._first = (step, mac is not None)
        first_step, sealed = self._first
        said = "accepted" if recorded is None else f"refused ({recorded.value})"
        head = f"the {command.kind.value} command {command.command_id}: the journal records it {said}"
        if mac is None:
            if not sealed:
                return None
            return f"{head} without a verdict MAC, which the journal's commands carry from step {first_step} on"
        if not sealed:
            return f"{head} with a verdict MAC, but its command at step {first_step} carries none (a MAC removed)"
        expected = self._seal(self._run_id, step, command, recorded)
        # As bytes: compare_digest refuses a str holding anything but ASCII, and an edited line may hold anything.
        if expected is None or not hmac.compare_digest(expected.encode(), mac.encode()):
            return f"{head}, but its verdict MAC does not match that verdict at this run and step with the run's key"
        return None
