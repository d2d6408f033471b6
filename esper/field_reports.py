"""``python -m esper.field_reports runs/<id>``: a run's field reports (field_reports.wal) as one JSON line each."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import msgspec

from actors.tamiyo.field_reports import WAL_FILENAME, scan_frames
from schemas.domain_enums import FieldReportOutcome

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence

    from schemas.reports import FieldReport

EXIT_OK = 0
EXIT_UNREADABLE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m esper.field_reports", description=__doc__.splitlines()[0].replace("``", "")
    )
    parser.add_argument("run_dir", type=Path, help="the run directory (runs/<run-id>)")
    return parser


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Print each field report once, in file order; returns the exit status (``out`` / ``err``: stdout / stderr).

    A report written twice (an append retried after a cancel, or written again by a resume) is printed once, as its
    first copy; damaged frames are skipped (the WAL's recovery rule) and counted in one line on ``err``. In a WAL an
    earlier version wrote, a decision remade after a rollback has the id of the one the rollback aborted: every
    distinct record of that id after the abort is the remade decision's own (its report, or its abort by a further
    rollback), so each is printed too.
    """
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    args = build_parser().parse_args(argv)
    path = args.run_dir / WAL_FILENAME
    try:
        data = path.read_bytes()
    except OSError as error:
        err.write(f"esper.field_reports: cannot read {path}: {error.strerror or error}\n")
        return EXIT_UNREADABLE
    scan = scan_frames(data)
    for report in _distinct(scan.reports):
        out.write(_line(report) + "\n")
    if scan.corrupt or scan.torn:
        err.write(
            f"esper.field_reports: {path}: {scan.corrupt} damaged record(s) skipped"
            f"{', a torn tail ignored' if scan.torn else ''}\n"
        )
    return EXIT_OK


def _line(report: FieldReport) -> str:
    """The report as one JSON line, its outcome by name (``NEUTRAL``): the WAL's number (2) meant nothing to a
    reader."""
    fields = msgspec.to_builtins(report)
    fields["outcome"] = report.outcome.name
    return msgspec.json.encode(fields).decode()


def _distinct(reports: Iterable[FieldReport]) -> Iterator[FieldReport]:
    """Each report once, as JSON, in file order: a copy equal to one given is left out, and so is a differing record
    of a report id already given, unless a rollback aborted that id before it (the old-format WAL's remade decision,
    which a further rollback may abort and remake again: each of its records is its own)."""
    given: dict[str, set[bytes]] = {}
    aborted: set[str] = set()
    for report in reports:
        encoded = msgspec.json.encode(report)
        copies = given.setdefault(report.report_id, set())
        rollback = _aborted_by_rollback(report)
        if encoded in copies or (copies and report.report_id not in aborted and not rollback):
            continue
        copies.add(encoded)
        if rollback:
            aborted.add(report.report_id)
        yield report


def _aborted_by_rollback(report: FieldReport) -> bool:
    return report.outcome is FieldReportOutcome.ABORTED and "aborted: rollback" in report.notes


if __name__ == "__main__":
    try:
        status = main()
        sys.stdout.flush()
    except BrokenPipeError:
        # Piped into head: the reader has what it wanted; the interpreter's own flush at exit must not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        status = EXIT_OK
    raise SystemExit(status)
