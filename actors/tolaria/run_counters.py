"""The step loop's bookkeeping that outlives an incarnation: what a checkpoint carries of it and how it comes back."""

from __future__ import annotations

from typing import TYPE_CHECKING, final

import msgspec

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from actors.tolaria.plans import PlanInboxStatistics
    from actors.tolaria.telemetry import OpenStats

Counters = dict[str, float | int | str | None]
_SavedFigures = tuple[float | None, float | None, float | None, float | None]  # train, val: loss and accuracy


@final
class RunCounters:
    """Rollbacks, the last validation loss, the last epoch's figures, the stalls of earlier sessions and the resume
    point: written into every captured state's counters (beside the emergency policy's), taken back by a resume or a
    restart (a rollback keeps the current ones, or every rollback would forget the failures that caused it)."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.rollbacks = 0
        self.last_val_loss: float | None = None
        self.resumed_from: int | None = None
        self.epoch_figures: tuple[float, float, float, float] | None = None  # train, val: loss and accuracy
        self.stalls_carried: tuple[int, float] = (0, 0.0)  # (stalls, ms) of the sessions before a resume

    def export(
        self,
        *,
        expected_plans: Sequence[tuple[int, int]],
        stalls: PlanInboxStatistics,
        open_stats: tuple[OpenStats, OpenStats] | None,
    ) -> Counters:
        """The counters a capture stores, given the inbox's plans in flight and statistics and the open epoch's and
        interval's sums, exported (kept at a stop, and by a resume until its epoch continues)."""
        stall_count, stall_ms = self.stall_totals(stalls)
        counters: Counters = {
            "rollbacks": self.rollbacks,
            "last_val_loss": self.last_val_loss,
            "expected_plans": msgspec.json.encode(expected_plans).decode(),
            "resumed_from": self.resumed_from,
            "run_id": self.run_id,  # a resume refuses another run's checkpoints (esper/resume.py)
            "stalls": stall_count,
            "stall_ms": stall_ms,
        }
        if open_stats is not None:
            counters["open_stats"] = msgspec.json.encode(open_stats).decode()
        if self.epoch_figures is not None:
            # The summary's last-epoch figures, for a resumed run that stops before it ends an epoch of its own.
            counters["epoch_figures"] = msgspec.json.encode([finite(v) for v in self.epoch_figures]).decode()
        return counters

    def restore(self, saved: Mapping[str, float | int | str | None], *, stalls_now: PlanInboxStatistics) -> None:
        """Take the counters back from a resumed or restarted incarnation's state."""
        value = saved.get("last_val_loss")
        self.last_val_loss = float(value) if isinstance(value, int | float) else None
        # Stalls before the checkpoint, as rollbacks: a resumed run's inbox starts at none, a restarted trainer's has
        # counted them (and any since) already.
        self.stalls_carried = (
            max(0, int(saved.get("stalls") or 0) - stalls_now.stalls),
            max(0.0, float(saved.get("stall_ms") or 0.0) - stalls_now.stall_ms_total),
        )
        figures = saved.get("epoch_figures")
        if isinstance(figures, str):
            loaded = msgspec.json.decode(figures, type=_SavedFigures)
            train_loss, train_accuracy, val_loss, val_accuracy = (float("nan") if v is None else v for v in loaded)
            self.epoch_figures = (train_loss, train_accuracy, val_loss, val_accuracy)
        self.rollbacks = max(self.rollbacks, int(saved.get("rollbacks") or 0))
        # A restart within a resumed session keeps the session's resume point.
        resumed = saved.get("resumed_from")
        self.resumed_from = resumed if isinstance(resumed, int) else None

    def rewind(self, saved: Mapping[str, float | int | str | None]) -> None:
        """Take back, in a rollback, what belongs to the restored state rather than to the run: its last validation
        loss (rollbacks and stalls count the run's history and carry on)."""
        value = saved.get("last_val_loss")
        self.last_val_loss = float(value) if isinstance(value, int | float) else None

    def stall_totals(self, now: PlanInboxStatistics) -> tuple[int, float]:
        """(stalls, ms) of the whole run: the earlier sessions' and this one's."""
        return self.stalls_carried[0] + now.stalls, self.stalls_carried[1] + now.stall_ms_total


def finite(value: float) -> float | None:
    """``value``, or None when it is not finite (JSON has no NaN)."""
    return value if value == value and abs(value) != float("inf") else None
