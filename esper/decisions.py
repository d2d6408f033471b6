"""The controller's decisions as a run's events.jsonl records them (``tamiyo_decision`` lines).

Each decided step is counted once however often the run went back over it."""

from __future__ import annotations

from typing import NamedTuple

from schemas.boundary import FALLBACK_SUFFIX
from schemas.domain_enums import PolicyAction

GERMINATE = PolicyAction.GERMINATE.value


class Decision(NamedTuple):
    """A controller decision read back from its ``tamiyo_decision`` line."""

    step: int
    ms: float
    no_op_reason: str | None  # None when it issued a command
    fallback: bool = False  # made by the fallback (the GNN's breaker open, its worker failed or restarting)
    # Why the fallback decided (the Decision's fallback_reason: timeout_inference, policy_restarting, ...); empty when
    # the policy did, or in a line written before the field existed.
    fallback_reason: str = ""
    # The risk engine's reason when it turned the policy's proposed germination into this NO_OP (pause_triggered,
    # hook_budget, ...): the policy's reason (plateau) is then not why nothing was grown. Empty otherwise.
    vetoed_by: str = ""
    # Another proposal the risk engine turned into this NO_OP (a fossilize, an lr tweak): neither the policy's reason
    # nor the risk engine's says why nothing was grown.
    vetoed_other: bool = False


def vetoed_by(command: bool, risk_reason: object, proposed: object = "") -> tuple[str, bool]:
    """The risk reason that made a proposed germination a NO_OP ("" when it issued a command or the policy chose the
    NO_OP), and whether it made one of another proposal instead.

    Tamiyo's risk engine names itself (``risk_reason`` other than ``policy``) on a NO_OP only when it vetoed or
    downgraded a proposal that did something: a proposed NO_OP is never vetoed into itself (actors.tamiyo.risk).
    ``proposed`` is the proposal's action; a Decision or line an earlier version wrote has none, and its veto is
    counted as a germination's, as that version's summary counted it."""
    if command or not isinstance(risk_reason, str) or risk_reason in ("", "policy"):
        return "", False
    if proposed in ("", None, GERMINATE):
        return risk_reason, False
    return "", True


def decision_entry(entry: dict[str, object]) -> Decision | None:
    """The decision in one ``tamiyo_decision`` entry, or None if it is not one (or a field is malformed)."""
    if entry.get("event") != "tamiyo_decision":
        return None
    step, ms, command, reason = (entry.get(k) for k in ("step", "decision_ms", "command", "reason"))
    if not isinstance(step, int) or isinstance(step, bool) or type(ms) not in (int, float):
        return None
    assert isinstance(ms, int | float)
    no_op = reason if isinstance(reason, str) and reason else "no_op"
    policy = entry.get("policy")
    fallback = isinstance(policy, str) and policy.endswith(FALLBACK_SUFFIX)
    why = entry.get("fallback_reason")
    vetoed, other = vetoed_by(command is True, entry.get("risk_reason"), entry.get("proposed"))
    return Decision(
        step,
        float(ms),
        None if command is True else no_op,
        fallback,
        why if isinstance(why, str) else "",
        vetoed,
        other,
    )


def add_decision(kept: list[Decision], decision: Decision) -> None:
    """Append ``decision`` to the run's decisions in arrival order. One at a step already decided supersedes the kept
    decisions from that step on: the run went back before them (a resume, a restarted actor or a rollback trained
    those steps again), so each step counts once, as its latest decision."""
    if kept and kept[-1].step >= decision.step:
        kept[:] = [d for d in kept if d.step < decision.step]
    kept.append(decision)
