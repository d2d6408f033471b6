"""Where a stage change the trainer refused took effect: the report's transitions moved to the step of their receipt."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, final

from esper.runtime.stage_refusals import STAGE_OPS, Refusal, effect_step
from esper.runtime.stage_refusals import RefusalLog as _RefusalLog

if TYPE_CHECKING:
    from collections.abc import Sequence

    from esper.report_plot import StageEvent

__all__ = ["Refusal", "RefusalLog", "took_effect"]


@final
class RefusalLog(_RefusalLog):
    """Kasmina's ``seed_op_failed`` and ``seed_op_retried`` lines about stage ops, read in file order (see add_entry);
    a rollback's ``lifecycle_restored`` line takes back those after the step it restored (see restore).

    A log written before these events named their steps (no ``step`` on a refusal, no ``planned_step`` on its
    receipt) gives no refusal: its transitions are drawn at their planned steps, as they were then.
    """

    def add_entry(self, entry: dict[str, object]) -> bool:
        """Take a telemetry line if it is a stage op's refusal or its late receipt; False for any other line."""
        if entry.get("event") != "telemetry_event" or entry.get("name") not in ("seed_op_failed", "seed_op_retried"):
            return False
        attributes = entry.get("attributes")
        if not isinstance(attributes, dict) or attributes.get("op") not in STAGE_OPS:
            return True
        seed_id, step = attributes.get("seed_id"), _int(attributes.get("step"))
        if not isinstance(seed_id, str) or step is None:
            return True
        if entry["name"] == "seed_op_failed":
            self.refused(seed_id, step)  # said once per refusal; the first refused step is where it begins
        else:
            self.applied(seed_id, step, _int(attributes.get("planned_step")))
        return True


def took_effect(events: Sequence[StageEvent], refusals: Sequence[Refusal]) -> list[StageEvent]:
    """The transitions at the steps they took effect (esper.runtime.stage_refusals.effect_step): a seed's stage
    changes planned from a refusal's step until its receipt's are moved to the receipt's step (``planned_step`` keeps
    the plan's), and left out when none came; every other transition as it is."""
    result: list[StageEvent] = []
    for event in events:
        step = effect_step(event.seed_id, event.to_stage, event.step, refusals)
        if step == event.step:
            result.append(event)
        elif step is not None:
            result.append(dataclasses.replace(event, step=step, planned_step=event.step))
    return result


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
