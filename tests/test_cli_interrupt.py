"""What the command line says on a Ctrl-C: a stop with a checkpoint while training, the run's end once it is over."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import TYPE_CHECKING, cast

import pytest

from esper.cli_process import run_in_foreground
from schemas.run import RunSummary

if TYPE_CHECKING:
    from esper.session import EsperSystem


class _Run:
    """The handle's part the foreground run uses: wait() held until released, stop() joining it."""

    def __init__(self, *, training_ended: bool) -> None:
        self.training_ended = training_ended
        self.waiting = asyncio.Event()
        self.stopping = asyncio.Event()
        self.release = asyncio.Event()

    async def wait(self) -> RunSummary:
        self.waiting.set()
        await self.release.wait()
        return RunSummary(
            run_id="r1", run_dir="runs/r1", status="completed", started_at="x", duration_s=1.0, exit_code=0,
            dead_letters=0,
        )  # fmt: skip

    async def stop(self, *, status: str = "stopped") -> RunSummary:
        self.stopping.set()
        return await self.wait()


@pytest.mark.parametrize("training_ended", [False, True])
async def test_a_ctrl_c_says_what_it_does_to_the_run(capsys: pytest.CaptureFixture[str], training_ended: bool) -> None:
    """A Ctrl-C while a completed run's end was written promised a step and a checkpoint, then printed
    "completed (exit 0)"."""
    run = _Run(training_ended=training_ended)

    async def start() -> EsperSystem:
        return cast("EsperSystem", run)

    foreground = asyncio.ensure_future(run_in_foreground(start))
    await run.waiting.wait()
    os.kill(os.getpid(), signal.SIGINT)  # the loop's handler runs on the loop: the stop below is its barrier
    await run.stopping.wait()
    run.release.set()
    assert await foreground == 0
    said = capsys.readouterr().err
    if training_ended:
        assert said.startswith("interrupted: training has already ended and the run is finishing")
        assert "checkpoint" not in said
    else:
        assert said.startswith("interrupted: finishing the step, writing a checkpoint")
