"""End to end: the event loop of a run stops mid-run; a resume continues from the run's last checkpoint.

The loop stops as a Jupyter kernel's does between its shutdown request and its kill; a resume of what the kill leaves
continues from the run's last checkpoint, not from step 0."""

from __future__ import annotations

import asyncio
import shutil
import threading
from typing import TYPE_CHECKING

import pytest

import actors.tolaria.loop as tolaria_loop
from actors.tolaria.loop_watch import LoopWatch
from esper.run import start
from esper.run_dir import LOCK_NAME
from tests.test_e2e_run import tiny_config

if TYPE_CHECKING:
    from pathlib import Path

    from schemas.run import RunSummary

pytestmark = pytest.mark.timeout(180)

WAIT_S = 60.0  # a bound on a barrier's wait, never a delay


def test_a_run_whose_loop_stopped_mid_run_resumes_from_its_last_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With its loop stopped, the trainer trained and checkpointed on while the planner's journal stood still, and
    pruning (checkpoint_keep_last) removed every checkpoint the journal covered: the resume started over at step 0."""
    config = tiny_config(tmp_path, epochs=12)
    run_dir, killed = tmp_path / "run", tmp_path / "killed"
    stop_at = 4 * 16
    loop = asyncio.new_event_loop()
    written = tolaria_loop._log_written
    fired: list[int] = []

    def stop_the_loop(info: object) -> None:  # the writer thread, once a checkpoint is on disk
        written(info)
        step = getattr(info, "global_step", 0)
        if not fired and step >= stop_at:
            fired.append(step)
            loop.call_soon_threadsafe(loop.stop)

    held = threading.Event()
    hold = LoopWatch.hold

    def holding(self: LoopWatch) -> bool:
        if not loop.is_running():
            held.set()  # the trainer waits on the stopped loop
        return hold(self)

    monkeypatch.setattr(tolaria_loop, "_log_written", stop_the_loop)
    monkeypatch.setattr(LoopWatch, "hold", holding)
    try:
        session = loop.run_until_complete(start(config, run_dir))
        with pytest.raises(RuntimeError, match="stopped before Future completed"):
            loop.run_until_complete(session.wait())
        assert fired == [stop_at]
        assert held.wait(WAIT_S), "the trainer went on training with its event loop stopped"
        # What a kill now would leave (the lock aside: this process still holds the original).
        shutil.copytree(run_dir, killed, ignore=shutil.ignore_patterns(LOCK_NAME))

        async def resume() -> RunSummary:
            return await (await start(killed / "config.toml", resume=killed)).wait()

        # The stopped loop runs again: its trainer trains on, then stops in order (one run per process at a time).
        stopped = loop.run_until_complete(session.stop())
    finally:
        loop.close()
    resumed = asyncio.run(resume())
    assert resumed.status == "completed", resumed.error
    assert resumed.training is not None
    events = (killed / "events.jsonl").read_text(encoding="utf-8")
    assert '"resume_point_uncovered"' not in events
    # The last checkpoint, or the one before it when the stop came before the planner journaled its boundary.
    assert resumed.training.resumed_from_step in (stop_at - 16, stop_at)
    assert stopped.status == "stopped", stopped.error
