"""The end of a run: the report.png it renders itself, and the duration its summary reports."""

from __future__ import annotations

import datetime as dt
import time
from typing import TYPE_CHECKING

import pytest

import esper.report
from esper.report import drawn, load_run
from esper.report_plot import render_report_png
from esper.run import start
from schemas.nissa import SeedStageChanged
from tests.test_e2e_run import tiny_config

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from esper.report_emergency import Ladder
    from esper.report_plot import Curves, PauseEvent, StageEvent

# Whole runs: on a loaded 2-core machine one took over the 30 s default.
pytestmark = pytest.mark.timeout(120)


class _Renders:
    """Spies on report.png's renders: what each drew, and the wall-clock time it was done."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.drawn: list[tuple[list[StageEvent], str]] = []
        self.done_at: list[float] = []

        def spy(
            curves: Curves,
            events: Sequence[StageEvent],
            *,
            title: str,
            pauses: Sequence[PauseEvent] = (),
            timeline_note: str = "",
            ladder: Ladder | None = None,
        ) -> bytes:
            png = render_report_png(
                curves, events, title=title, pauses=pauses, timeline_note=timeline_note, ladder=ladder
            )
            self.drawn.append((list(events), timeline_note))
            self.done_at.append(time.time())
            return png

        monkeypatch.setattr(esper.report, "render_report_png", spy)


async def test_the_runs_own_report_leaves_out_what_was_planned_after_its_last_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run rendered report.png before writing summary.json, so it did not know its last step: it drew the
    transitions planned at its last boundaries for after it (a "fossilized" marker at step 196 of a 192-step run) and
    its timeline's title lacked the "not drawn" note that ``python -m esper.report`` gives."""
    renders = _Renders(monkeypatch)
    run_dir = tmp_path / "run"
    # 14 epochs: a seed's probation is planned at the last boundary, for after the last step (a run too short to keep
    # a seed germinates none there).
    summary = await (await start(tiny_config(tmp_path, epochs=14), run_dir)).wait()
    assert summary.status == "completed", summary.error
    assert summary.training is not None
    last_step = summary.training.global_step
    [(events, note)] = renders.drawn
    assert note.endswith(f"planned for after step {last_step}, not applied, not drawn"), note
    assert max(event.step for event in events) <= last_step
    # What the report, run on the finished directory, draws.
    assert drawn(load_run(run_dir)) == (events, [], note)


@pytest.mark.slow
async def test_a_resumed_runs_own_report_leaves_out_what_was_planned_after_its_last_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The resumed session's render read the earlier session's summary.json, which is stale: it drew everything."""
    run_dir = tmp_path / "run"
    system = await start(tiny_config(tmp_path, epochs=14), run_dir)
    async for event in system.events():
        if isinstance(event, SeedStageChanged) and event.step >= 100:
            break
    stopped = await system.stop(status="interrupted")
    assert stopped.status == "interrupted", stopped.error
    renders = _Renders(monkeypatch)
    summary = await (await start(tiny_config(tmp_path, epochs=14), resume=run_dir)).wait()
    assert summary.status == "completed", summary.error
    assert summary.training is not None
    [(events, note)] = renders.drawn
    assert note.endswith(f"planned for after step {summary.training.global_step}, not applied, not drawn"), note
    assert drawn(load_run(run_dir)) == (events, [], note)


async def test_the_summarys_duration_covers_the_runs_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """duration_s was taken before the report's render: "completed in 3.00 s" for a run whose events.jsonl spans
    5.16 s from run_starting to run_finished. It now runs until the summary is written, after the render."""
    renders = _Renders(monkeypatch)
    summary = await (await start(tiny_config(tmp_path, epochs=2), tmp_path / "run")).wait()
    assert summary.status == "completed", summary.error
    started = dt.datetime.strptime(summary.started_at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC).timestamp()
    [rendered] = renders.done_at
    # started_at and the duration's start are read together; the duration is rounded to the millisecond.
    assert started + summary.duration_s >= rendered - 0.001
