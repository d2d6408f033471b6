"""Where a stage change the trainer refused took effect: one rule for the summary, Nissa and the report."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, NamedTuple, final

from schemas.enums import SeedLifecycleStage as Stage

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from schemas.boundary import BoundaryApplied

STAGE_OP_STAGES: Final = frozenset({Stage.BLENDING, Stage.SHADOWING, Stage.PROBATIONARY, Stage.FOSSILIZED})
"""Stages a transition reaches by an op the trainer may refuse (``set_stage``, ``fossilize``); a cull's ``detach`` is
never refused, and a germination's refused ``attach`` withdraws the seed (for the emergency level) or culls it."""

STAGE_OPS: Final = frozenset({"set_stage", "fossilize"})
"""The seed ops that carry a stage change (Kasmina sends a refused one again until it is applied)."""


class Transition(NamedTuple):
    """A slot's lifecycle transition to ``stage``, planned to take effect at the boundary after optimizer step
    ``step``; ``seed_id`` None for a slot's clean-up after a cull (embargo, reset)."""

    slot: str
    stage: Stage
    step: int
    seed_id: str | None = None


@final
@dataclass(frozen=True, slots=True)
class Refusal:
    """The stage changes of seed ``seed_id`` planned from step ``refused`` on (the first the trainer refused) took
    effect at step ``applied``, the receipt of the op Kasmina sent again; None: not (yet) (the seed was culled first,
    or the run ended or is still at it)."""

    seed_id: str
    refused: int
    applied: int | None = None


class RefusalLog:
    """The seeds' refused stage ops and the receipts that applied them later, in the order they came; a rollback
    takes back those after the step it restored (see restore). Fed by Tolaria's receipts (``receipt``, live) or by
    Kasmina's ``seed_op_failed`` and ``seed_op_retried`` lines (``refused`` and ``applied``, read back), which say the
    same of each receipt. Not thread-safe (one owner)."""

    def __init__(self, refusals: Iterable[Refusal] = ()) -> None:
        """``refusals``: an earlier log's (a resumed run's earlier sessions), those still open included."""
        self._open: dict[str, int] = {}  # seed id -> the step refused, awaiting the receipt that says it took
        self._closed: list[Refusal] = []
        for refusal in refusals:
            if refusal.applied is None:
                self._open[refusal.seed_id] = refusal.refused
            else:
                self._closed.append(refusal)

    def refused(self, seed_id: str, step: int) -> None:
        """A stage op of ``seed_id`` refused at ``step``; the first refusal until its receipt is where it begins."""
        self._open.setdefault(seed_id, step)

    def applied(self, seed_id: str, step: int, planned_step: int | None = None) -> None:
        """A stage op of ``seed_id`` applied at ``step``: closes its open refusal (``planned_step``: the step first
        refused, as a ``seed_op_retried`` line names it); nothing when none is open."""
        refused = self._open.pop(seed_id, None)
        if planned_step is not None:
            refused = planned_step
        if refused is not None and refused <= step:
            self._closed.append(Refusal(seed_id, refused, step))

    def receipt(self, receipt: BoundaryApplied) -> None:
        """Tolaria's receipt of a boundary: each stage op it refused or applied, as Kasmina reads it."""
        for outcome in receipt.outcomes:
            if outcome.seed_id is None or outcome.kind not in STAGE_OPS:
                continue
            if outcome.applied:
                self.applied(outcome.seed_id, receipt.applied_step)
            else:
                self.refused(outcome.seed_id, receipt.applied_step)

    def restore(self, step: int) -> None:
        """A rollback to ``step``: what was refused after it never was, and a refusal whose receipt came after it is
        open again (the restored planner sends the op again)."""
        closed: list[Refusal] = []
        for refusal in self._closed:
            if refusal.applied is not None and refusal.applied > step:
                if refusal.refused <= step:
                    self._open[refusal.seed_id] = refusal.refused
                continue
            closed.append(refusal)
        self._closed = closed
        self._open = {seed_id: refused for seed_id, refused in self._open.items() if refused <= step}

    def refusals(self) -> tuple[Refusal, ...]:
        """Every refusal read, those still without a receipt last."""
        return (*self._closed, *(Refusal(seed_id, refused) for seed_id, refused in self._open.items()))


def effect_step(seed_id: str | None, stage: Stage, step: int, refusals: Sequence[Refusal]) -> int | None:
    """The step at which a transition of ``seed_id`` to ``stage`` planned for ``step`` took effect: a stage change
    planned from a refusal's step until its receipt's takes effect at the receipt's step, and None (not at all) when
    no receipt came; every other transition at the step planned."""
    if seed_id is None or stage not in STAGE_OP_STAGES:
        return step
    for refusal in refusals:
        if refusal.seed_id != seed_id or step < refusal.refused:
            continue
        if refusal.applied is None or step < refusal.applied:
            return refusal.applied
    return step
