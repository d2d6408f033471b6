"""The report's printed digest of a run: its status, the last epoch's figures, the seeds' outcomes, its emergencies."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from esper.run_files import SUMMARY_JSON
from esper.summary_table import outcomes_text, paused_outcomes, seed_outcomes, unapplied_note, unapplied_transitions

if TYPE_CHECKING:
    from esper.report import RunData
    from esper.report_plot import PauseEvent


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _by(summary: dict[str, object]) -> str:
    """The signal that interrupted the run, as " (by SIGTERM)", when summary.json names one."""
    signal = summary.get("signal")
    return f" (by {signal})" if isinstance(signal, str) else ""


def summary_lines(data: RunData) -> list[str]:
    """The printed summary: run status from summary.json, final figures from metrics.csv, seed outcomes."""
    lines: list[str] = []
    summary = data.summary
    if data.live:  # any summary.json is an earlier session's (a --resume), or being written as the run ends
        summary = None
        lines.append(f"run {data.run_dir.name}: still running (figures so far)")
    elif summary is not None and data.summary_stale is not None:
        lines.append(
            f"run {data.run_dir.name}: {data.summary_stale} (its {SUMMARY_JSON}, status {summary.get('status', '?')},"
            " is an earlier session's); the figures below come from metrics.csv"
        )
        summary = None
    elif summary is None and data.summary_problem is not None:
        lines.append(f"run {data.run_dir.name}: {data.summary_problem}; the figures below come from metrics.csv")
    elif summary is None:
        lines.append(f"run {data.run_dir.name}: no {SUMMARY_JSON} (the run did not finish cleanly)")
    else:
        lines.append(
            f"run {summary.get('run_id', data.run_dir.name)}: status {summary.get('status', '?')}{_by(summary)}, "
            f"exit code {summary.get('exit_code', '?')}, {summary.get('duration_s', '?')} s, "
            f"dead letters {summary.get('dead_letters', '?')}"
        )
        if summary.get("error"):
            lines.append(f"error: {summary['error']}")
    if data.rows:
        last = data.rows[-1]
        lines.append(
            f"epochs {len(data.rows)} (last epoch {_fmt(last.get('epoch'), 0)}, step {_fmt(last.get('step'), 0)}): "
            f"train loss {_fmt(last.get('train_loss'))} acc {_fmt(last.get('train_accuracy'))}, "
            f"val loss {_fmt(last.get('val_loss'))} acc {_fmt(last.get('val_accuracy'))}"
        )
    else:
        lines.append("no epoch rows in metrics.csv")
    # Transitions planned at the last boundaries take effect after the last trained step: never (as in the run's own
    # summary). Without the last session's summary.json (a killed or live run) every transition counts.
    last_step = trained_through(data)
    # Slot-only events (embargo, reset) come after the seed's outcome and are left out.
    transitions = [(e.seed_id, e.step, e.to_stage) for e in data.events if e.seed_id is not None]
    counts = seed_outcomes(transitions, last_step)
    # Every transition, a slot's embargo and reset included: the run's summary and the timeline's title count them so.
    unapplied = unapplied_transitions((event.step for event in data.events), last_step)
    if counts:
        paused = paused_outcomes(transitions, last_step, paused_at_end(data.pauses, last_step))
        line = f"seeds {sum(counts.values())}: " + outcomes_text(counts, paused)
        if unapplied:
            line += f" ({unapplied_note(unapplied, last_step)})"
        lines.append(line)
    lines.append(emergency_line(data))
    return lines


def paused_at_end(pauses: list[PauseEvent], last_step: int | None) -> set[str]:
    """The seeds whose last pause or resume that took effect by ``last_step`` (every one when None) was a pause."""
    last: dict[str, bool] = {}
    for pause in sorted(pauses, key=lambda p: p.step):
        if last_step is None or pause.step <= last_step:
            last[pause.seed_id] = not pause.resumed
    return {seed_id for seed_id, paused in last.items() if paused}


def emergency_line(data: RunData) -> str:
    """``emergency events N, rollbacks M``, counted as the run's summary counts them (each move of the ladder once;
    the rollbacks its last session's summary.json names, else those of the trained history: see rollbacks), and the
    halt's step and reason when the run's last trained session ended in an L4 halt."""
    ladder = data.ladder
    line = f"emergency events {data.emergency_events}, rollbacks {rollbacks(data)}"
    if (halt := ladder.last_halt) is not None:
        line += f"; halted at step {halt.step}: {halt.reason or 'no reason given'}"
    return line


def rollbacks(data: RunData) -> int:
    """The run's rollbacks as its summary counts them (the trainer's counter, which a resume takes back from its
    checkpoint): summary.json's ``training.rollbacks`` when it is the last session's, else the log's rollbacks that no
    resume or restart went back over (see Ladder)."""
    counted = _training(data).get("rollbacks")
    if isinstance(counted, int) and not isinstance(counted, bool):
        return counted
    return len(data.ladder.rollbacks)


def _training(data: RunData) -> dict[str, object]:
    """The ``training`` section of the last session's summary.json ({} for a live run, or one whose summary.json is
    an earlier session's, damaged or missing)."""
    if data.live or data.summary_stale is not None or data.summary is None:
        return {}
    training = data.summary.get("training")
    return training if isinstance(training, dict) else {}


def trained_through(data: RunData) -> int | None:
    """The run's last trained step, from its last session's summary.json; None for a live run, or one whose
    summary.json is an earlier session's, damaged or missing (a killed run)."""
    step = _training(data).get("global_step")
    return step if isinstance(step, int) and not isinstance(step, bool) else None
