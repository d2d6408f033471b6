"""How an embedded run ends and what it gives back to the process: the summary only once the end is written."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

import esper
from esper.logs import LogFileInUse, check_log_file_free
from tests.test_run_embedded import quiet_config

if TYPE_CHECKING:
    from collections.abc import Awaitable
    from pathlib import Path

    from schemas.run import RunSummary


def _log_free() -> bool:
    try:
        check_log_file_free()
    except LogFileInUse:
        return False
    return True


async def test_no_caller_gets_the_summary_before_the_runs_end_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The summary was kept for later callers before the report, summary.json and the log's close: a wait() again
    after a cancelled one, or a stop() joining a wait(), returned it at once, and the next esper.start() in the
    process raised LogFileInUse (summary.json not written yet either)."""
    run_dir = tmp_path / "run"
    system = await esper.start(quiet_config(tmp_path), run_dir=run_dir)
    first = asyncio.create_task(system.wait())
    seen: list[tuple[str, bool, bool]] = []
    summaries: list[RunSummary] = []
    later: list[asyncio.Task[None]] = []

    async def check(name: str, end: Awaitable[RunSummary]) -> None:
        summaries.append(await end)
        seen.append((name, (run_dir / "summary.json").is_file(), _log_free()))

    async def rendering() -> None:
        # The end is being written now (the summary built, not yet on disk): a notebook's wait_for times out on the
        # first wait(), then waits again, while another task stops the run.
        first.cancel()
        later.append(asyncio.create_task(check("wait", system.wait())))
        later.append(asyncio.create_task(check("stop", system.stop())))

    monkeypatch.setattr(system, "_render_report", rendering)
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.gather(*later)
    assert sorted(seen) == [("stop", True, True), ("wait", True, True)]
    assert summaries[0] is summaries[1]
    assert summaries[0].status == "completed"
    following = await esper.start(quiet_config(tmp_path), run_dir=tmp_path / "next")
    assert (await following.stop()).status == "stopped"
