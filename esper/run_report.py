"""The run's report.png rendered at its end on a worker thread, matplotlib's import included."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import structlog

if TYPE_CHECKING:
    from pathlib import Path

_log = structlog.get_logger("esper.session")  # as the run's end logs everything else


async def render_run_report(run_dir: Path, last_step: int | None) -> None:
    """Render the run's report.png on a worker thread; a run whose files cannot make one says so in a warning."""
    problem = await anyio.to_thread.run_sync(_render_report, run_dir, last_step)
    if problem is not None:
        _log.warning("report_not_rendered", error=problem)


def _render_report(run_dir: Path, last_step: int | None) -> str | None:
    """Render the report; the reason it could not, or None. Blocking, the imports too: matplotlib's take half a
    second, which held the event loop (a signal sent meanwhile waited)."""
    from esper.report import load_run, render_report  # matplotlib only when a report is due
    from esper.report_inputs import ReportInputError

    try:
        # The last trained step given, not read: summary.json is written after the report (a new run has none yet, a
        # resumed run's is an earlier session's), and without it every transition planned after the last step was
        # drawn.
        render_report(load_run(run_dir), last_step=last_step)
    except (ReportInputError, OSError) as err:
        return f"{type(err).__name__}: {err}"
    return None
