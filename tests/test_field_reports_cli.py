"""python -m esper.field_reports: a run's field_reports.wal as one JSON line per report, each report once."""

from __future__ import annotations

import io
import json
from typing import TYPE_CHECKING

import msgspec

from actors.tamiyo.field_reports import WAL_FILENAME, encode_frame
from esper.field_reports import build_parser, main
from schemas.domain_enums import FieldReportOutcome, PolicyAction
from schemas.reports import FieldReport

if TYPE_CHECKING:
    from pathlib import Path


def _report(i: int) -> FieldReport:
    return FieldReport(
        report_id=f"fr-cmd{i}",
        command_id=f"cmd{i}",
        training_run_id="run-1",
        outcome=FieldReportOutcome.NEUTRAL,
        observation_window_epochs=3,
        start_epoch=i,
        issued_at=100.0 + i,
        tamiyo_policy_version="heuristic-1",
        action=PolicyAction.NO_OP,
    )


def test_each_report_is_printed_once_as_json_and_damage_is_counted(tmp_path: Path) -> None:
    """The README named the file but not how to read it: it is binary frames, not JSON lines."""
    frames = [encode_frame(_report(i)) for i in (0, 1, 1, 2)]  # report 1 written twice (a retried append)
    damaged = bytearray(encode_frame(_report(9)))
    damaged[-1] ^= 0xFF
    (tmp_path / WAL_FILENAME).write_bytes(b"".join(frames[:2]) + bytes(damaged) + b"".join(frames[2:]))
    out, err = io.StringIO(), io.StringIO()
    assert main([str(tmp_path)], out=out, err=err) == 0
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(r["report_id"], r["start_epoch"]) for r in lines] == [("fr-cmd0", 0), ("fr-cmd1", 1), ("fr-cmd2", 2)]
    assert lines[0]["outcome"] == "NEUTRAL"  # by name: the number (2) meant nothing to a reader
    assert err.getvalue() == f"esper.field_reports: {tmp_path / WAL_FILENAME}: 1 damaged record(s) skipped\n"


def test_a_run_without_the_file_is_a_one_line_error(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert main([str(tmp_path)], out=out, err=err) == 2
    assert out.getvalue() == ""
    assert err.getvalue() == (
        f"esper.field_reports: cannot read {tmp_path / WAL_FILENAME}: No such file or directory\n"
    )


def test_help_shows_no_restructuredtext_markup() -> None:
    """--help printed the docstring's ``double backticks``."""
    text = " ".join(build_parser().format_help().split())
    assert "``" not in text
    assert "python -m esper.field_reports runs/<id>: a run" in text


def test_a_decision_remade_after_a_rollback_in_an_older_wal_is_printed_too(tmp_path: Path) -> None:
    """An earlier version gave the remade decision the id of the one the rollback aborted: the reader kept only the
    aborted record, and the remade decision's real outcome was lost. A copy written twice is still printed once."""
    aborted = msgspec.structs.replace(
        _report(1), outcome=FieldReportOutcome.ABORTED, notes="heuristic: ...; aborted: rollback to step 100"
    )
    remade = msgspec.structs.replace(_report(1), outcome=FieldReportOutcome.REGRESSION, issued_at=200.0, reward=-0.7)
    frames = [encode_frame(r) for r in (_report(0), aborted, remade, remade)]
    (tmp_path / WAL_FILENAME).write_bytes(b"".join(frames))
    out, err = io.StringIO(), io.StringIO()
    assert main([str(tmp_path)], out=out, err=err) == 0
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(r["report_id"], r["outcome"]) for r in lines] == [
        ("fr-cmd0", "NEUTRAL"),
        ("fr-cmd1", "ABORTED"),
        ("fr-cmd1", "REGRESSION"),
    ]
    assert err.getvalue() == ""


def test_a_remade_decision_a_second_rollback_aborts_again_in_an_older_wal_is_printed_too(tmp_path: Path) -> None:
    """Keyed by (id, aborted by a rollback), the reader dropped the second abort of an id: the decision remade after
    the first rollback, which a second one aborted, left no record."""
    first = msgspec.structs.replace(
        _report(1), outcome=FieldReportOutcome.ABORTED, notes="heuristic: ...; aborted: rollback to step 100"
    )
    second = msgspec.structs.replace(
        first, issued_at=200.0, notes="heuristic: ...; aborted: rollback before step 130 (controller state of step 100)"
    )
    final = msgspec.structs.replace(_report(1), outcome=FieldReportOutcome.SUCCESS, issued_at=300.0, reward=0.2)
    frames = [encode_frame(r) for r in (first, first, second, second, final, final)]  # each append retried once
    (tmp_path / WAL_FILENAME).write_bytes(b"".join(frames))
    out, err = io.StringIO(), io.StringIO()
    assert main([str(tmp_path)], out=out, err=err) == 0
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(r["report_id"], r["outcome"], r["issued_at"]) for r in lines] == [
        ("fr-cmd1", "ABORTED", 101.0),
        ("fr-cmd1", "ABORTED", 200.0),
        ("fr-cmd1", "SUCCESS", 300.0),
    ]
