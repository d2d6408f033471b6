"""A trainer step that never returns: stop() gives up on it past the deadline, and the run ends failed, naming it."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import TYPE_CHECKING

import anyio
import pytest

from esper import start
from esper.wiring import RunHooks
from tests.test_e2e_run import tiny_config

if TYPE_CHECKING:
    from pathlib import Path

    import torch.nn as nn

    from esper.nn.data import TensorPair

pytestmark = pytest.mark.timeout(120)

_DEADLINE_S = 0.5


class _HangingStep:
    """A step probe that blocks the train lane at its first call from step 3 on, until the test releases it."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, step: int, model: nn.Module, batch: TensorPair) -> None:
        if step >= 3 and not self.entered.is_set():
            self.entered.set()
            self.release.wait()


async def test_stop_gives_up_on_a_hung_trainer_step_within_its_deadline(tmp_path: Path) -> None:
    hang = _HangingStep()
    system = await start(
        tiny_config(tmp_path, epochs=4),
        tmp_path / "run",
        hooks=RunHooks(step_probe=hang, stuck_after_s=_DEADLINE_S),
    )
    try:
        await anyio.to_thread.run_sync(hang.entered.wait)  # the barrier: the train lane is blocked now
        # The training wait, then the actors' stop, each given up on after the deadline; far less than the 30 s
        # Tolaria's stop would otherwise be given, and the step never returns on its own.
        summary = await asyncio.wait_for(system.stop(), timeout=30.0)
    finally:
        hang.release.set()
    assert summary.status == "failed"
    assert summary.exit_code == 1
    assert summary.error is not None
    assert "lane 'train' job TrainingLoop.run" in summary.error, summary.error
    assert "left behind" in summary.error
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    stuck = [e for e in events if e.get("event") == "lane_job_stuck"]
    assert len(stuck) == 1, stuck
    assert stuck[0]["lane"] == "train"
    assert stuck[0]["job"] == "TrainingLoop.run"
    assert stuck[0]["running_s"] >= _DEADLINE_S
    assert stuck[0]["level"] == "error"
    # Released, the left-behind thread finishes its step and ends.
    for thread in threading.enumerate():
        if thread.name == "esper-lane-train":
            await anyio.to_thread.run_sync(thread.join)
