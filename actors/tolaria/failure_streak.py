"""The trainer's failures in a row that made no progress, and the error that ends the run when there are too many."""

from __future__ import annotations

from dataclasses import dataclass
from typing import final

from esper.runtime.errors import RepeatedFailure, describe_error
from esper.runtime.failure_trace import located


@final
@dataclass(slots=True)
class FailureStreak:
    """Counts the trainer's failures, across its restarts, that did not get past the furthest step one failed at."""

    furthest_step: int | None = None
    count: int = 0

    def record(self, step: int) -> int:
        """Count a failure at ``step``; returns the failures in a row that got no further than the streak's first."""
        if self.furthest_step is None or step > self.furthest_step:
            self.furthest_step = step
            self.count = 1
        else:
            self.count += 1
        return self.count


def repeated_failure(error: BaseException, streak: FailureStreak) -> RepeatedFailure:
    """The escalation of the streak's last failure: one line naming how many, the furthest step a failure of the
    streak reached (where the fault lies: later failures may come earlier, from the state a restart resumed), the
    error and where in the user's code it was raised."""
    kind, text = describe_error(error)
    return RepeatedFailure(
        f"training failed {streak.count} times in a row, never getting past {streak.furthest_step} steps done, so it "
        f"is not restarted again: {kind}: {text}{located(error)}"
    )
