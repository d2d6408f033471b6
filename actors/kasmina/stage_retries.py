"""Stage ops the trainer refused (at L3 all but detaches): sent again, for the seed's stage, until one is applied."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, final

from schemas.boundary import SeedOp
from schemas.enums import SeedLifecycleStage as Stage

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from actors.kasmina.seeds import SeedEntry
    from schemas.boundary import BoundaryApplied

__all__ = ["SET_STAGE", "StageRetries"]

SET_STAGE = frozenset({Stage.BLENDING, Stage.SHADOWING, Stage.PROBATIONARY})
"""Stages a set_stage op moves a seed to (FOSSILIZED has its own op)."""


@final
@dataclass
class _Refused:
    """A seed whose stage op the trainer refused: the step that op was planned for (the first refusal's), and the op
    sent again awaiting its receipt: the boundary that sent it and the stage it sets (None: to send at the next
    boundary)."""

    planned_step: int
    awaiting: int | None = None
    stage: Stage | None = None


@final
class StageRetries:
    """The planner's seeds whose stage op the trainer refused, until one takes effect. One op at a time per seed: the
    next waits for the receipt of the last."""

    def __init__(self) -> None:
        self._refused: dict[str, _Refused] = {}

    def pending(self, seed_id: str) -> bool:
        return seed_id in self._refused

    def refused(self, seed_id: str, step: int) -> bool:
        """Record a refusal at ``step``; True when it is the seed's first (the one to say)."""
        pending = self._refused.get(seed_id)
        if pending is not None:
            pending.awaiting, pending.stage = None, None
            return False
        self._refused[seed_id] = _Refused(planned_step=step)
        return True

    def retry(
        self, ops: list[SeedOp | str], step: int, seeds: Mapping[str, SeedEntry], stage_of: Callable[[str], Stage]
    ) -> None:
        """Append to ``ops`` (the boundary at ``step``) the stage op of each seed whose last one the trainer refused,
        for the stage it is in now (``stage_of`` its slot); none when ``ops`` already send the seed one."""
        sent = {op.seed_id: op for op in ops if isinstance(op, SeedOp)}
        for seed_id, refused in list(self._refused.items()):
            seed = seeds.get(seed_id)
            if seed is None or seed.detached:
                del self._refused[seed_id]
                continue
            if refused.awaiting is not None:
                continue
            if (op := sent.get(seed_id)) is None:
                stage = stage_of(seed.slot)
                if stage in SET_STAGE:
                    blend = seed.blend if stage is Stage.BLENDING else None
                    op = SeedOp(
                        kind="set_stage", slot=seed.slot, seed_id=seed_id, stage=stage, blend=blend, reason="retry"
                    )
                elif stage is Stage.FOSSILIZED:
                    op = SeedOp(kind="fossilize", slot=seed.slot, seed_id=seed_id, reason="retry")
                else:
                    del self._refused[seed_id]
                    continue
                ops.append(op)
            # Sent now, or by this boundary's transitions (their op carries the current stage): its receipt decides.
            refused.awaiting = step
            refused.stage = Stage.FOSSILIZED if op.kind == "fossilize" else op.stage

    def took_effect(self, seed_id: str, receipt: BoundaryApplied) -> tuple[int, Stage | None]:
        """Forget a seed whose stage op the trainer applied: (the step first planned, the stage set when this is the
        receipt of the op sent again, else None: one sent before the refusal was read set a stage no longer held)."""
        refused = self._refused.pop(seed_id)
        return refused.planned_step, refused.stage if receipt.decided_on_step == refused.awaiting else None
