"""esper.start_checks: the warnings a run starts with when a setting it accepts defeats it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from structlog.testing import capture_logs

from esper.config import apply_overrides
from esper.logs import reset_logging
from esper.start_checks import warn_at_start
from schemas.config import RunConfig

if TYPE_CHECKING:
    from collections.abc import MutableMapping


def _warnings(overrides: list[str], steps_per_epoch: int, cpus: int | None) -> list[MutableMapping[str, Any]]:
    reset_logging()
    with capture_logs() as logs:
        warn_at_start(apply_overrides(RunConfig(), overrides), steps_per_epoch, cpus)
    return logs


def test_a_command_lag_no_shorter_than_the_run_is_said() -> None:
    """command_lag_steps=100000 on a 600-step run completed with nothing ever applied, and nothing said so."""
    [logged] = _warnings(["tolaria.epochs=30", "tolaria.command_lag_steps=600"], steps_per_epoch=20, cpus=2)
    assert (logged["event"], logged["log_level"]) == ("command_lag_outlasts_run", "warning")
    assert (logged["command_lag_steps"], logged["run_steps"]) == (600, 600)
    assert logged["detail"] == (
        "tolaria.command_lag_steps = 600 is not shorter than the run (30 epochs x 20 steps): no decision of the"
        " controller can take effect"
    )
    assert _warnings(["tolaria.epochs=30", "tolaria.command_lag_steps=599"], steps_per_epoch=20, cpus=2) == []


def test_more_training_threads_than_cpus_is_said() -> None:
    """64 threads on 2 cores made every epoch 37 times slower."""
    [logged] = _warnings(["tolaria.num_threads=64"], steps_per_epoch=20, cpus=2)
    assert (logged["event"], logged["num_threads"], logged["cpus"]) == ("num_threads_above_cpus", 64, 2)
    assert _warnings(["tolaria.num_threads=2"], steps_per_epoch=20, cpus=2) == []
    assert _warnings(["tolaria.num_threads=64"], steps_per_epoch=20, cpus=None) == []
    assert _warnings([], steps_per_epoch=20, cpus=1) == []
