"""A trainer failing again and again at the same step ends the run, however slowly each failure comes."""

from __future__ import annotations

import asyncio
import json
import re
from typing import TYPE_CHECKING, final

import msgspec
import pytest

from actors.tolaria.actor import TolariaWiring, tolaria_spec
from actors.tolaria.build import load_data
from actors.tolaria.cell import new_cell
from actors.tolaria.failure_streak import FailureStreak, repeated_failure
from actors.weatherlight.tree import build_root
from esper.run import start
from esper.runtime.errors import RepeatedFailure
from esper.runtime.events import RecordingSink
from esper.runtime.lanes import Lane
from esper.runtime.system import ActorSystem
from schemas.config import TolariaConfig
from schemas.config_platform import WeatherlightConfig
from schemas.run import RunSummary
from schemas.runtime import ChildFailed, ChildRestarted, SupervisorEscalated
from tests import tolaria_factories
from tests.test_e2e_run import tiny_config
from tests.test_tolaria_protocol import TINY

if TYPE_CHECKING:
    from pathlib import Path

    from torch import nn


@final
class LeapingClock:
    """Each reading is 1000 s after the one before: every restart comes long after the last, as when each replays a
    minute of slow steps to the same failure, so the restart window never fills."""

    def __init__(self) -> None:
        self._now = 0.0

    def now(self) -> float:
        self._now += 1000.0
        return self._now

    async def sleep(self, delay_s: float) -> None:
        await asyncio.sleep(0)


def test_a_streak_counts_failures_that_got_no_further_and_progress_starts_it_over() -> None:
    streak = FailureStreak()
    assert [streak.record(step) for step in (20, 20, 12, 20)] == [1, 2, 3, 4]
    assert streak.record(21) == 1, "a failure past the furthest one is progress"
    assert streak.record(21) == 2


async def test_a_trainer_failing_at_one_step_is_given_up_after_the_third_failure_however_slow(
    tmp_path: Path,
) -> None:
    """Slow replays (1000 s apart on the clock) never filled a restart window: the run restarted the trainer for good.
    Bounded here: the fault stops after eight failures, which the run would then survive."""
    config = TolariaConfig(**TINY)  # type: ignore[arg-type]
    failures: list[int] = []

    def fail_at_ten(step: int, model: nn.Module, batch: object) -> None:
        if step == 10 and len(failures) < 8:
            failures.append(step)
            raise RuntimeError("user bug at step 10")

    sink = RecordingSink()
    system = ActorSystem(clock=LeapingClock(), sink=sink)
    async with Lane("train", "cpu", num_threads=1) as lane:
        wiring = TolariaWiring(
            run_id="t",
            run_dir=tmp_path,
            lane=lane,
            cell=new_cell(config),
            sink=sink,
            data=load_data(config),
            step_probe=fail_at_ten,
        )
        spec = tolaria_spec(config, wiring, max_restarts=5, window_s=30.0, max_without_progress=3)
        await system.start(build_root([spec], WeatherlightConfig()))
        async with asyncio.timeout(120):
            with pytest.raises(RepeatedFailure) as gave_up:
                await system.wait()
    assert re.fullmatch(
        r"training failed 3 times in a row, never getting past 10 steps done, so it is not restarted again: "
        r"RuntimeError: user bug at step 10 \(at (.*/)?tests/test_tolaria_no_progress\.py:\d+ in fail_at_ten\)",
        str(gave_up.value),
    ), str(gave_up.value)
    assert failures == [10, 10, 10]
    assert len(sink.of_type(ChildRestarted)) == 4, "the trainer and its control actor, twice"
    assert [(e.child, e.reason) for e in sink.of_type(SupervisorEscalated)] == [
        ("tolaria/trainer", "no_progress"),
        ("tolaria", "no_progress"),
    ]
    failed = [e.error_type for e in sink.of_type(ChildFailed)]
    assert failed == ["RuntimeError", "RuntimeError", "RepeatedFailure", "RepeatedFailure"]
    await system.stop()


async def test_a_user_model_failing_at_one_step_fails_the_run_naming_the_step_and_the_error(tmp_path: Path) -> None:
    """The whole run: exit 1 after the failures in a row weatherlight.restart_max_without_progress allows (here 2) at
    the model's sixth training step, summary.json says why, and the run directory is left as a failed run's: a
    --resume once the model is mended trains it to the end. It failed before its first checkpoint, and the error
    said "the checkpoints written before it are kept"."""
    tolaria_factories.FailsAtSixthStep.instances = 0
    tolaria_factories.FailsAtSixthStep.broken = True
    run_dir = tmp_path / "run"
    overrides = [
        'tolaria.host_model="tests.tolaria_factories:fails_at_sixth_step"',
        "tolaria.epochs=2",
        "weatherlight.restart_max_without_progress=2",
    ]
    system = await start(tiny_config(tmp_path), run_dir, overrides)
    async with asyncio.timeout(120):
        summary = await system.wait()
    assert (summary.status, summary.exit_code) == ("failed", 1)
    assert summary.error is not None
    assert not list((run_dir / "checkpoints").glob("step-*.pt"))  # it failed before its first checkpoint
    assert re.fullmatch(
        r"RepeatedFailure: training failed 2 times in a row, never getting past 5 steps done, so it is not "
        r"restarted again: RuntimeError: the user's model broke on its sixth step \(at (.*/)?tests/tolaria_factories"
        r"\.py:\d+ in forward\); no checkpoint was written: fix the cause, then --resume .* to start it again",
        summary.error,
    ), summary.error
    assert tolaria_factories.FailsAtSixthStep.instances >= 2
    written = msgspec.json.decode((run_dir / "summary.json").read_bytes(), type=RunSummary)
    assert (written.status, written.error) == ("failed", summary.error)
    assert written.error_traceback is not None
    assert "tolaria_factories.py" in written.error_traceback
    assert written.error_traceback.endswith("RuntimeError: the user's model broke on its sixth step")
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [e["reason"] for e in events if e["event"] == "supervisor_escalated"] == ["no_progress", "no_progress"]
    failed = [e for e in events if e["event"] == "child_failed"]
    assert all(re.fullmatch(r"(.*/)?tests/tolaria_factories\.py:\d+ in forward", e["user_frame"]) for e in failed)
    assert all(e["traceback"].endswith("RuntimeError: the user's model broke on its sixth step") for e in failed)
    tolaria_factories.FailsAtSixthStep.broken = False
    resumed = await start(tiny_config(tmp_path), overrides=overrides, resume=run_dir)
    async with asyncio.timeout(120):
        assert (await resumed.wait()).status == "completed"


def test_the_error_names_the_furthest_step_a_failure_reached_not_the_last_ones() -> None:
    """A fault at step 45 whose restarts fail again right after resuming from step 40 said "with 40 steps done": the
    step the restarts resumed from, not where the fault lies."""
    streak = FailureStreak()
    for step in (45, 40, 40):
        streak.record(step)
    error = repeated_failure(RuntimeError("bad batch"), streak)
    assert str(error).startswith("training failed 3 times in a row, never getting past 45 steps done, ")
