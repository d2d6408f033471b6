"""A run of failed epochs stopped and resumed climbs the emergency ladder as the uninterrupted run does."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import pytest

from esper.run import start
from schemas.enums import EmergencyLevel
from schemas.runtime import EmergencySignal
from tests.test_e2e_run import tiny_config

if TYPE_CHECKING:
    from pathlib import Path

    from schemas.run import RunSummary

# Whole runs: on a loaded 2-core machine one took over the 30 s default.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

# Every epoch of the tiny config takes far longer than this: each fails on its budget, deterministically.
FAILING = ["tolaria.epoch_budget_ms=0.001"]


def _ladder(summary: RunSummary) -> tuple[str | None, int, str]:
    """The halt's reason (its epoch time, the machine's, left out), the rollbacks and the status."""
    assert summary.training is not None
    reason = summary.training.halt_reason
    timeless = None if reason is None else re.sub(r"epoch_ms \d+\.\d ", "epoch_ms N ", reason)
    return timeless, summary.training.rollbacks, summary.status


async def test_a_run_stopped_among_failed_epochs_rolls_back_and_halts_as_the_uninterrupted_one(tmp_path: Path) -> None:
    """Checkpoints kept the failure streak but not the epochs' breaker: the resumed run halted at L2 ("3 failed epochs
    in a row (the last: epoch_budget)", no rollback) where the uninterrupted run opened the breaker, rolled back (L3)
    and halted at the next failure ("4 failed epochs in a row (the last: breaker_open)")."""
    config = tiny_config(tmp_path, epochs=8)
    reference = await (await start(config, tmp_path / "uninterrupted", FAILING)).wait()
    halt = "4 failed epochs in a row (the last: breaker_open; the latest before it: epoch_budget, epoch_ms N over "
    assert _ladder(reference) == (f"{halt}tolaria.epoch_budget_ms 0.001)", 1, "failed")
    run_dir = tmp_path / "stopped"
    system = await start(config, run_dir, FAILING)
    async for event in system.events():
        if isinstance(event, EmergencySignal) and event.level is EmergencyLevel.L2_ELEVATED:
            break  # the first failed epoch: the stop's checkpoint holds its streak and the breaker's failure
    assert (await system.stop(status="interrupted")).status == "interrupted"
    resumed = await (await start(config, resume=run_dir, overrides=FAILING)).wait()
    assert _ladder(resumed) == _ladder(reference)
