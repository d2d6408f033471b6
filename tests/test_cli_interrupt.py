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
        self.stopped_by: str | None = None

    async def wait(self) -> RunSummary:
        self.waiting.set()
        await self.release.wait()
        return RunSummary(
            run_id="r1", run_dir="runs/r1", status="completed", started_at="x", duration_s=1.0, exit_code=0,
            dead_letters=0,
        )  # fmt: skip

    async def stop(self, *, status: str = "stopped", signal: str | None = None) -> RunSummary:
        self.stopped_by = signal
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
        assert said.startswith("interrupted by SIGINT: training has already ended and the run is finishing")
        assert "checkpoint" not in said
    else:
        assert said.startswith("interrupted by SIGINT: finishing the step, writing a checkpoint")
    assert "(Ctrl-C again to exit at once" in said


async def test_a_schedulers_signal_is_named_on_the_console_and_in_the_stop(capsys: pytest.CaptureFixture[str]) -> None:
    """Every stop said "interrupted: ... (Ctrl-C again ...)" and was recorded as only "interrupted": a wrapper could
    not tell a scheduler's SIGTERM from a user's Ctrl-C. (SIGUSR1 is sent to a real run in test_tolaria_cli.py: here,
    unhandled, it would kill the test process.)"""
    sig = signal.SIGTERM
    run = _Run(training_ended=False)

    async def start() -> EsperSystem:
        return cast("EsperSystem", run)

    foreground = asyncio.ensure_future(run_in_foreground(start))
    await run.waiting.wait()
    os.kill(os.getpid(), sig)
    await run.stopping.wait()
    run.release.set()
    await foreground
    assert run.stopped_by == sig.name
    assert capsys.readouterr().err == (
        f"interrupted by {sig.name}: finishing the step, writing a checkpoint, stopping the actors in order"
        f" ({sig.name} again or Ctrl-C to exit at once)\n"
    )


async def test_a_program_calling_the_command_line_gets_its_signal_handlers_back() -> None:
    """esper.run.main() from another program left SIGTERM and SIGUSR1 at their defaults: a later SIGUSR1 killed that
    program, whose own Python handler had been replaced."""

    def mine(_signum: int, _frame: object) -> None:
        """The calling program's own handler."""

    async def refused() -> EsperSystem:
        raise RuntimeError("refused to start")

    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        for sig in saved:
            signal.signal(sig, mine)
        with pytest.raises(RuntimeError, match="refused to start"):
            await run_in_foreground(refused)
        assert [signal.getsignal(sig) for sig in saved] == [mine, mine]
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
