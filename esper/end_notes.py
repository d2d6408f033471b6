"""What went wrong as a run ended that its figures do not show: the summary's end notes (GrowthFigures.end_notes)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path


def cancelled_note(actor: str) -> str:
    """The note for an actor its supervisor cancelled past its shutdown deadline (a handler that never returned)."""
    return (
        f"{actor} did not stop within its shutdown deadline and was cancelled, with what it had not yet handled"
        " (events.jsonl: shutdown_deadline_exceeded)"
    )


def written_epochs(metrics_csv: Path) -> set[int] | None:
    """The epochs metrics.csv has a row for, read as ``esper.report`` reads it (a torn last row is no row, an earlier
    version's 0-based epochs counted from 1); None when the file is not there or cannot be read. Blocking (a small
    file, read once as the run ends)."""
    from esper.report_inputs import ReportInputError, read_metrics  # as the end's report render, only when a run ends

    try:
        rows = read_metrics(metrics_csv)
    except ReportInputError:
        return None
    return {int(epoch) for row in rows if (epoch := row.get("epoch")) is not None}


def spans(numbers: Sequence[int]) -> str:
    """Sorted numbers as ranges: ``2, 5-7``."""
    parts: list[str] = []
    start = previous = numbers[0]
    for n in (*numbers[1:], None):
        if n is not None and n == previous + 1:
            previous = n
            continue
        parts.append(str(start) if start == previous else f"{start}-{previous}")
        if n is not None:
            start = previous = n
    return ", ".join(parts)


def end_notes(cancelled: Sequence[str], metrics_csv: Path, epochs: int) -> list[str]:
    """The notes: each cancelled actor, then the epochs of the ``epochs`` trained that metrics.csv has no row for (a
    file not there says nothing: the run may not have reached its first epoch's end)."""
    notes = [cancelled_note(actor) for actor in dict.fromkeys(cancelled)]
    written = written_epochs(metrics_csv) if epochs else None
    if epochs and written is not None:
        missing = [epoch for epoch in range(1, epochs + 1) if epoch not in written]
        if missing:
            plural = "s" if len(missing) > 1 else ""
            notes.append(
                f"{metrics_csv.name} has no row for epoch{plural} {spans(missing)} of the {epochs} trained"
                " (summary.json's training figures are complete)"
            )
    return notes
