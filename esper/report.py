"""``python -m esper.report runs/<run-id>``: re-render report.png from metrics.csv and events.jsonl, print the summary.

Reads only the run directory: metrics.csv (one row per epoch, written by Nissa), events.jsonl (lifecycle events are
the lines named in schemas.nissa.SEED_STAGE_EVENT_NAMES, fields as its docstring says; a run without them still
renders its curves; a stage change the trainer refused is drawn at the step its ``seed_op_retried`` line says it took
effect; accepted pause and resume commands are its ``command_result`` lines) and, if present, summary.json. Exit
status 0 on success; 2 with a one-line error when the directory or a required file is missing or unreadable.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final, NamedTuple, TextIO, final

from esper.report_digest import summary_lines, trained_through
from esper.report_emergency import Ladder
from esper.report_inputs import MetricsRow, ReportInputError, RunEvents, read_metrics, read_run_events, read_summary
from esper.report_plot import Curves, PauseEvent, StageEvent, render_report_png
from esper.report_receipts import took_effect
from esper.run_dir import check_not_in_use
from esper.run_files import run_files
from esper.runtime.atomic_write import atomic_write_bytes
from esper.runtime.errors import ConfigError
from esper.summary_table import unapplied_note, unapplied_transitions

if TYPE_CHECKING:
    from collections.abc import Sequence

EXIT_OK: Final = 0
EXIT_UNREADABLE: Final = 2
REPORT_PNG: Final = "report.png"


@final
@dataclass(frozen=True, slots=True)
class RunData:
    """Everything the report reads from a run directory."""

    run_dir: Path
    rows: list[MetricsRow]
    events: list[StageEvent]  # at the steps they took effect (see took_effect)
    summary: dict[str, object] | None
    pauses: list[PauseEvent] = field(default_factory=list)
    live: bool = False  # a process's run still holds the directory (read mid-run)
    # The emergency ladder's moves, rollbacks and halts (see Ladder), and its events as the summary counts them.
    ladder: Ladder = field(default_factory=Ladder)
    emergency_events: int = 0
    summary_problem: str | None = None  # why summary.json could not be read (a damaged one does not stop the report)
    summary_stale: str | None = None  # how summary.json came to be an earlier session's (see _summary_predates)


def load_run(run_dir: Path) -> RunData:
    """Read a run directory (its files by the names its config.toml gave them).

    Raises:
        ReportInputError: the directory, metrics.csv or events.jsonl is missing or unreadable.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise ReportInputError(f"{run_dir} is a file; give the run directory that holds it")
    if not run_dir.is_dir():
        raise ReportInputError(f"no such run directory: {run_dir}")
    files = run_files(run_dir)
    found = read_run_events(run_dir / files.events)
    try:
        rows = read_metrics(run_dir / files.metrics)
    except ReportInputError as err:
        end = found.last_end
        if end is None or end.status == "completed" or not (run_dir / files.events).is_file():
            raise
        # A run that failed before its first epoch wrote no metrics.csv; its events say why.
        why = f"failed: {end.error}" if end.error else f"ended {end.status or 'without a status'}"
        raise ReportInputError(f"{err} (the run {why})") from err
    try:
        summary, problem = read_summary(run_dir / files.summary), None
    except ReportInputError as err:  # optional, as for a killed run: the figures come from metrics.csv
        summary, problem = None, str(err)
    return RunData(
        run_dir=run_dir,
        rows=rows,
        events=took_effect(found.stages, found.refusals),
        summary=summary,
        pauses=found.pauses,
        summary_problem=problem,
        summary_stale=_summary_predates(summary, found) if summary is not None else None,
        ladder=found.ladder or Ladder(),
        emergency_events=found.emergencies.count,
    )


def _summary_predates(summary: dict[str, object], found: RunEvents) -> str | None:
    """Why summary.json is an earlier session's than events.jsonl's last (a --resume that was killed or is still
    running, or that ended without writing one), or None when it is the last session's. A log without run_started
    lines (an older run) cannot say: None."""
    end = found.last_session_end
    if not found.sessions or (end is not None and _wrote_it(summary, end.duration_s, found.last_session_after)):
        return None
    if end is None:
        # Written, then killed before its run_finished line (a second Ctrl-C during the stop): still the last
        # session's when it started after the session before it ended (a one-session run's always is).
        started, after = summary.get("started_at"), found.last_session_after
        if after is None or (after and isinstance(started, str) and started > after):
            return None
        return "killed after its last summary"
    return f"its last session ended ({end.status or '?'}) without writing a summary"


# The last session's run_finished line and its summary.json give its duration apart: an earlier version logged
# 0.678 s in one and 0.679 s in the other, and the summary read as an earlier session's.
_DURATION_SLACK_S = 0.01


def _wrote_it(summary: dict[str, object], duration_s: float | None, after: str | None) -> bool:
    """Whether the last session, which ended after ``duration_s`` (None: without a summary), wrote ``summary``: it
    started after the session before it ended (``after``, when that line has a timestamp), else its duration is the
    session's to the millisecond's rounding."""
    if duration_s is None:
        return False
    started = summary.get("started_at")
    if after and isinstance(started, str):
        return started > after
    written = summary.get("duration_s")
    return isinstance(written, int | float) and abs(written - duration_s) <= _DURATION_SLACK_S


def _column(rows: Sequence[MetricsRow], name: str) -> list[float]:
    return [math.nan if (value := row.get(name)) is None else value for row in rows]


def curves_from(rows: Sequence[MetricsRow]) -> Curves:
    """The curves of metrics.csv against the step of each epoch end (the seed timeline's axis too: a row that lacks
    its step is a gap), or against the epoch when no row has a step."""
    steps = _column(rows, "step")
    use_steps = any(math.isfinite(step) for step in steps)
    return Curves(
        x=steps if use_steps else _column(rows, "epoch"),
        train_loss=_column(rows, "train_loss"),
        val_loss=_column(rows, "val_loss"),
        train_accuracy=_column(rows, "train_accuracy"),
        val_accuracy=_column(rows, "val_accuracy"),
        x_label="step" if use_steps else "epoch",
    )


class Drawn(NamedTuple):
    """What report.png draws of a run's lifecycle (see drawn)."""

    events: list[StageEvent]
    pauses: list[PauseEvent]
    timeline_note: str  # what the seed timeline leaves out, for its title ("" for nothing)


def drawn(data: RunData, last_step: int | None = None) -> Drawn:
    """The transitions, pauses and resumes the report draws: those that took effect by the run's last trained step,
    ``last_step`` (the run rendering its own report, before its summary.json is written) or else its last session's
    summary.json's. Those planned at its last boundaries for a later step never did (the digest counts them as not
    applied) and are left out, which the timeline's title says. With neither (a live or killed run) the last step is
    not known, and everything read is drawn."""
    if last_step is None:
        last_step = trained_through(data)
    if last_step is None:
        return Drawn(list(data.events), list(data.pauses), "")
    events = [event for event in data.events if event.step <= last_step]
    pauses = [pause for pause in data.pauses if pause.step <= last_step]
    left = unapplied_transitions((event.step for event in data.events), last_step)
    return Drawn(events, pauses, f"{unapplied_note(left, last_step)}, not drawn" if left else "")


def render_report(data: RunData, *, last_step: int | None = None) -> Path:
    """Write report.png into the run directory (atomically) and return its path; ``last_step``: the run's last trained
    step, when the caller knows it better than the directory's summary.json (see drawn). Blocking: a CLI or thread
    call."""
    title = f"Esper run {data.run_dir.name}"
    shown = drawn(data, last_step)
    png = render_report_png(
        curves_from(data.rows),
        shown.events,
        title=title,
        pauses=shown.pauses,
        timeline_note=shown.timeline_note,
        ladder=data.ladder,
    )
    path = data.run_dir / REPORT_PNG
    atomic_write_bytes(path, png, shared=True)
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m esper.report", description=__doc__.splitlines()[0].replace("``", "")
    )
    parser.add_argument("run_dir", type=Path, help="the run directory (runs/<run-id>)")
    return parser


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Render the report and print the summary; returns the exit status (``out`` / ``err``: stdout / stderr)."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    args = build_parser().parse_args(argv)
    try:
        data = dataclasses.replace(load_run(args.run_dir), live=_in_use(args.run_dir))
        path = render_report(data)
    except ReportInputError as error:
        err.write(f"esper.report: {error}\n")
        return EXIT_UNREADABLE
    except OSError as error:
        err.write(f"esper.report: cannot write {args.run_dir / REPORT_PNG}: {error.strerror or error}\n")
        return EXIT_UNREADABLE
    out.write("\n".join([*summary_lines(data), f"report: {path}"]) + "\n")
    return EXIT_OK


def _in_use(run_dir: Path) -> bool:
    try:
        check_not_in_use(run_dir)
    except ConfigError:
        return True
    return False


if __name__ == "__main__":
    raise SystemExit(main())
