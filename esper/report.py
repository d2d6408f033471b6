"""``python -m esper.report runs/<run-id>``: re-render report.png from metrics.csv and events.jsonl, print the summary.

Reads only the run directory: metrics.csv (one row per epoch, written by Nissa), events.jsonl (lifecycle events are
the lines named in schemas.nissa.SEED_STAGE_EVENT_NAMES, fields as its docstring says; a run without them still
renders its curves; a stage change the trainer refused is drawn at the step its ``seed_op_retried`` line says it took
effect; accepted pause and resume commands are its ``command_result`` lines) and, if present, summary.json. Exit
status 0 on success; 2 with a one-line error when the directory or a required file is missing or unreadable.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final, NamedTuple, TextIO, final

from esper.decisions import Decision, add_decision, decision_entry
from esper.report_digest import summary_lines, trained_through
from esper.report_emergency import Ladder
from esper.report_entries import (
    SessionEnd,
    fired_alert,
    pause_event,
    refused_pause,
    rejected_command,
    restored_point,
    session_end,
    stage_event,
)
from esper.report_plot import Curves, PauseEvent, StageEvent, render_report_png
from esper.report_receipts import Refusal, RefusalLog, took_effect
from esper.run_dir import check_not_in_use
from esper.run_files import run_files
from esper.runtime.atomic_write import atomic_write_bytes
from esper.runtime.emergency_tally import EmergencyTally
from esper.runtime.errors import ConfigError, EsperError
from esper.summary_table import unapplied_note, unapplied_transitions

if TYPE_CHECKING:
    from collections.abc import Sequence

EXIT_OK: Final = 0
EXIT_UNREADABLE: Final = 2
REPORT_PNG: Final = "report.png"


class ReportInputError(EsperError, ValueError):
    """Raised when a run directory, or a file the report needs in it, is missing or unreadable."""


MetricsRow = dict[str, float | None]


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


def _cell(value: str) -> float | None:
    try:
        return float(value) if value.strip() else None
    except ValueError:
        return None


def read_metrics(path: Path) -> list[MetricsRow]:
    """metrics.csv as rows of floats by column (empty or unparsable cells are None).

    Raises:
        ReportInputError: the file is missing or unreadable.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise ReportInputError(f"no {path.name} in {path.parent}") from err
    except (OSError, UnicodeDecodeError) as err:
        raise ReportInputError(f"cannot read {path}: {err}") from err
    lines = text.splitlines()
    if len(lines) > 1 and (not text.endswith("\n") or _cells(lines[-1]) < _cells(lines[0])):
        # A crash mid-write tore the last row (``1.2e-05`` cut to ``1.2e-0``, or ``30,6``): it is not data, as
        # events.jsonl's torn last line is not. Nissa cuts it off when the run resumes.
        lines.pop()
    # A row with more cells than the header has its extra ones under None, one with fewer has None values: both read
    # as far as they match (the file is the run's, not ours to refuse here).
    return _counted_from_1(
        [
            {key: _cell(value if isinstance(value, str) else "") for key, value in row.items() if isinstance(key, str)}
            for row in csv.DictReader(lines)
        ]
    )


def _counted_from_1(rows: list[MetricsRow]) -> list[MetricsRow]:
    """``rows`` with epochs counted from 1: versions before 402fcbe counted them from 0, and a resume by a later one
    appended rows counted from 1, so the leading rows numbered 0, 1, 2 ... are renumbered (the report said "epochs 7
    (last epoch 6)", and a resume took the host-only baseline an epoch early). A row right after them repeating the
    last one's step is that epoch end written again (see esper.resume_rows.renumber_from_1): it is left out, and the
    rows after it keep their numbers (they were counted one too many, and the run's epochs one too many)."""
    for index, row in enumerate(rows):
        if row.get("epoch") != index:
            break
        if index and row.get("step") is not None and row.get("step") == rows[index - 1].get("step"):
            return rows[:index] + rows[index + 1 :]
        row["epoch"] = float(index + 1)
    return rows


def _cells(line: str) -> int:
    return len(next(csv.reader([line]), []))


class RunEvents(NamedTuple):
    """What events.jsonl says about a run, in file order."""

    stages: list[StageEvent]  # at the steps they were planned for (the events' own)
    pauses: list[PauseEvent]
    decisions: list[Decision]  # each counted once across resumed sessions (see read_run_events)
    # Every session's emergency signals, each move of the ladder once (see EmergencyTally).
    emergencies: EmergencyTally
    sessions: int = 0  # run_started lines: the sessions that got as far as training
    last_session_end: SessionEnd | None = None  # how the last of those ended; None while it has not (or was killed)
    last_end: SessionEnd | None = None  # the file's last run_finished line (an attempt that failed to start included)
    # The timestamp of the last run_finished line before the last session started: a summary started after it is
    # that session's (None: no earlier ending, so any summary is the last session's; "": one without a timestamp).
    last_session_after: str | None = None
    # The stage changes the trainer refused, and where they took effect (see took_effect).
    refusals: tuple[Refusal, ...] = ()
    last_epoch_end: int | None = None  # the highest epoch (from 1) an epoch_end line names: how far the log reaches
    # The rule of each Nissa alert that fired (its alert_fired line), every session's, in file order.
    alerts_fired: tuple[str, ...] = ()
    ladder: Ladder | None = None  # the emergency moves with their reasons, the rollbacks and halts (None: none read)
    # The reason and id of each command Kasmina refused (its command_rejected line), every session's, in file order
    # (a command refused again in the steps a resume trained again is in twice: RunTally counts it once).
    rejected_commands: tuple[tuple[str, str], ...] = ()


def read_run_events(path: Path) -> RunEvents:
    """Every lifecycle transition, pause or resume, controller decision, emergency signal, refused stage change and
    fired alert in events.jsonl, in one pass; lines that are not JSON objects are skipped.

    Decisions are counted once across resumed sessions and restarts (see add_decision), and so is each move of the
    emergency ladder (see EmergencyTally).

    Raises:
        ReportInputError: the file is missing or unreadable.
    """
    events: list[StageEvent] = []
    pauses: list[PauseEvent] = []
    decisions: list[Decision] = []
    emergencies = EmergencyTally()
    ladder = Ladder()
    refusals = RefusalLog()
    sessions = 0
    last_session_end: SessionEnd | None = None
    last_end: SessionEnd | None = None
    last_finished_at: str | None = None
    last_session_after: str | None = None
    last_epoch_end: int | None = None
    alerts: list[str] = []
    rejected: list[tuple[str, str]] = []
    if path.exists() and not path.is_file():
        # logging.json_file may name a device (/dev/null, /dev/full): reading one would never end.
        raise ReportInputError(f"{path} is not a regular file")
    try:
        with path.open("rb") as lines:
            for line in lines:
                try:
                    entry = json.loads(line)
                except ValueError:  # UnicodeDecodeError included: one damaged line does not cost the report
                    continue  # a torn last line of a crashed run
                if not isinstance(entry, dict):
                    continue
                ladder.add_entry(entry)  # its moves, rollbacks and halts, and the restores and starts that undo them
                if (event := stage_event(entry)) is not None:
                    events.append(event)
                elif (pause := pause_event(entry)) is not None:
                    pauses.append(pause)
                elif (refused := refused_pause(entry)) is not None:
                    # Accepted before a rollback took it back, then refused when it came again: not in effect.
                    pauses = [p for p in pauses if p != refused]
                elif (decision := decision_entry(entry)) is not None:
                    add_decision(decisions, decision)
                elif emergencies.add_entry(entry):
                    continue
                elif refusals.add_entry(entry):
                    continue
                elif (rule := fired_alert(entry)) is not None:
                    alerts.append(rule)
                elif (rejection := rejected_command(entry)) is not None:
                    rejected.append(rejection)
                elif (restored := restored_point(entry)) is not None:  # a rollback's (see LifecycleRestored)
                    events = [event for event in events if not restored.undoes(event.step)]
                    pauses = [p for p in pauses if not restored.undoes(p.step)]
                    refusals.restore(restored.step)
                elif entry.get("event") == "epoch_end":
                    if isinstance(epoch := entry.get("epoch"), int):
                        last_epoch_end = max(epoch, last_epoch_end or 0)
                elif entry.get("event") == "run_started":
                    sessions, last_session_end, last_session_after = sessions + 1, None, last_finished_at
                elif (end := session_end(entry)) is not None:
                    stamp = entry.get("timestamp")
                    last_finished_at = stamp if isinstance(stamp, str) else ""  # "": an ending without its time
                    # The first ending after a run_started is that session's; a later one is an attempt that failed
                    # to start (a refused --resume), which wrote no summary.
                    if last_session_end is None and sessions:
                        last_session_end = end
                    last_end = end
    except FileNotFoundError as err:
        raise ReportInputError(f"no {path.name} in {path.parent}") from err
    except (OSError, UnicodeDecodeError) as err:
        raise ReportInputError(f"cannot read {path}: {err}") from err
    return RunEvents(
        events,
        pauses,
        decisions,
        emergencies,
        sessions,
        last_session_end,
        last_end,
        last_session_after,
        refusals.refusals(),
        last_epoch_end,
        tuple(alerts),
        ladder,
        tuple(rejected),
    )


def read_decisions(path: Path) -> list[Decision]:
    """The run's controller decisions in events.jsonl, each once (see read_run_events)."""
    return read_run_events(path).decisions


def read_stage_events(path: Path) -> list[StageEvent]:
    """Every lifecycle transition in events.jsonl, in file order (see read_run_events)."""
    return read_run_events(path).stages


def read_summary(path: Path) -> dict[str, object] | None:
    """summary.json as a mapping, or None when the run wrote none (it was killed).

    Raises:
        ReportInputError: the file exists but is not a JSON object.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise ReportInputError(f"cannot read {path}: {err}") from err
    if not isinstance(data, dict):
        raise ReportInputError(f"{path}: expected a JSON object")
    return data


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
