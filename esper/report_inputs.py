"""Reading a run directory's files for the report: metrics.csv, events.jsonl and summary.json."""

from __future__ import annotations

import csv
import json
from typing import TYPE_CHECKING, NamedTuple

from esper.decisions import Decision, add_decision, decision_entry
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
from esper.report_receipts import Refusal, RefusalLog
from esper.runtime.emergency_tally import EmergencyTally
from esper.runtime.errors import EsperError

if TYPE_CHECKING:
    from pathlib import Path

    from esper.report_plot import PauseEvent, StageEvent


class ReportInputError(EsperError, ValueError):
    """Raised when a run directory, or a file the report needs in it, is missing or unreadable."""


MetricsRow = dict[str, float | None]


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
