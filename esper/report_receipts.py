"""Where a stage change the trainer refused took effect: the report's transitions moved to the step of their receipt."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, final

from schemas.enums import SeedLifecycleStage as Stage

if TYPE_CHECKING:
    from collections.abc import Sequence

    from esper.report_plot import StageEvent

STAGE_OP_STAGES: Final = frozenset({Stage.BLENDING, Stage.SHADOWING, Stage.PROBATIONARY, Stage.FOSSILIZED})
"""Stages a transition reaches by an op the trainer may refuse (``set_stage``, ``fossilize``); a cull's ``detach`` is
never refused, and a germination's refused ``attach`` withdraws the seed (for the emergency level) or culls it."""

_STAGE_OPS: Final = frozenset({"set_stage", "fossilize"})


@final
@dataclass(frozen=True, slots=True)
class Refusal:
    """The stage changes of seed ``seed_id`` planned from step ``refused`` on (the first the trainer refused) took
    effect at step ``applied``, the receipt of the op Kasmina sent again; None: not as far as events.jsonl goes (the
    seed was culled first, or the run ended or is still at it)."""

    seed_id: str
    refused: int
    applied: int | None = None


@final
class RefusalLog:
    """Kasmina's ``seed_op_failed`` and ``seed_op_retried`` lines about stage ops, read in file order (see add_entry);
    a rollback's ``lifecycle_restored`` line takes back those after the step it restored (see restore).

    A log written before these events named their steps (no ``step`` on a refusal, no ``planned_step`` on its
    receipt) gives no refusal: its transitions are drawn at their planned steps, as they were then.
    """

    def __init__(self) -> None:
        self._open: dict[str, int] = {}  # seed id -> the step refused, awaiting the receipt that says it took
        self._closed: list[Refusal] = []

    def add_entry(self, entry: dict[str, object]) -> bool:
        """Take a telemetry line if it is a stage op's refusal or its late receipt; False for any other line."""
        if entry.get("event") != "telemetry_event" or entry.get("name") not in ("seed_op_failed", "seed_op_retried"):
            return False
        attributes = entry.get("attributes")
        if not isinstance(attributes, dict) or attributes.get("op") not in _STAGE_OPS:
            return True
        seed_id, step, planned = attributes.get("seed_id"), _int(attributes.get("step")), attributes.get("planned_step")
        if not isinstance(seed_id, str) or step is None:
            return True
        if entry["name"] == "seed_op_failed":
            self._open.setdefault(seed_id, step)  # said once per refusal; the first refused step is where it begins
            return True
        refused = self._open.pop(seed_id, None)
        if (first := _int(planned)) is not None:
            refused = first
        if refused is not None and refused <= step:
            self._closed.append(Refusal(seed_id, refused, step))
        return True

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


def took_effect(events: Sequence[StageEvent], refusals: Sequence[Refusal]) -> list[StageEvent]:
    """The transitions at the steps they took effect: a seed's stage changes planned from a refusal's step until its
    receipt's are moved to the receipt's step (``planned_step`` keeps the plan's), and left out when none came; every
    other transition as it is."""
    result: list[StageEvent] = []
    for event in events:
        refusal = _refusal_of(event, refusals)
        if refusal is None:
            result.append(event)
        elif refusal.applied is not None:
            result.append(dataclasses.replace(event, step=refusal.applied, planned_step=event.step))
    return result


def _refusal_of(event: StageEvent, refusals: Sequence[Refusal]) -> Refusal | None:
    if event.seed_id is None or event.to_stage not in STAGE_OP_STAGES:
        return None
    for refusal in refusals:
        if refusal.seed_id != event.seed_id or event.step < refusal.refused:
            continue
        if refusal.applied is None or event.step < refusal.applied:
            return refusal
    return None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
