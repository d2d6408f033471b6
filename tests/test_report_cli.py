"""``python -m esper.report``: exit 0 with the summary and report.png; exit 2 with one line for missing inputs."""

from __future__ import annotations

import io
import subprocess
import sys
from typing import TYPE_CHECKING

from esper.report import EXIT_OK, EXIT_UNREADABLE, main
from esper.run_dir import claim_run_dir
from tests.report_fixtures import write_run

if TYPE_CHECKING:
    from pathlib import Path


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = main(argv, out=out, err=err)
    return status, out.getvalue(), err.getvalue()


def test_a_complete_run_exits_0_and_writes_report_png(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run-1")
    status, out, err = _run([str(run)])
    assert (status, err) == (EXIT_OK, "")
    assert out.splitlines()[0].startswith("run run-1: status completed")
    assert out.splitlines()[-1] == f"report: {run / 'report.png'}"
    assert (run / "report.png").stat().st_size > 0


def test_a_missing_directory_exits_2_with_one_line(tmp_path: Path) -> None:
    status, out, err = _run([str(tmp_path / "nope")])
    assert (status, out) == (EXIT_UNREADABLE, "")
    assert err == f"esper.report: no such run directory: {tmp_path / 'nope'}\n"


def test_a_file_instead_of_the_run_directory_is_named_as_such(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run-4")
    status, _, err = _run([str(run / "events.jsonl")])
    assert status == EXIT_UNREADABLE
    assert err == f"esper.report: {run / 'events.jsonl'} is a file; give the run directory that holds it\n"


def test_a_run_still_going_is_reported_as_such(tmp_path: Path) -> None:
    """Read mid-run (its summary not written yet): it said the run did not finish cleanly."""
    run = write_run(tmp_path / "run-5", summary=False)
    lock = claim_run_dir(run, resume=True)
    try:
        status, out, _ = _run([str(run)])
    finally:
        lock.release()
    assert status == EXIT_OK
    assert out.splitlines()[0] == "run run-5: still running (figures so far)"
    status, out, _ = _run([str(run)])
    assert out.splitlines()[0] == "run run-5: no summary.json (the run did not finish cleanly)"


def test_a_damaged_summary_is_said_and_the_report_still_renders(tmp_path: Path) -> None:
    """summary.json is optional (a killed run has none), but a truncated one refused the whole report."""
    run = write_run(tmp_path / "run-6")
    (run / "summary.json").write_text('{"run_id": "run-6", "sta', encoding="utf-8")
    status, out, err = _run([str(run)])
    assert (status, err) == (EXIT_OK, "")
    assert out.splitlines()[0].startswith(f"run run-6: cannot read {run / 'summary.json'}: ")
    assert out.splitlines()[0].endswith("; the figures below come from metrics.csv")
    assert (run / "report.png").stat().st_size > 0


def test_a_missing_metrics_file_exits_2_with_one_line(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run-2")
    (run / "metrics.csv").unlink()
    status, _, err = _run([str(run)])
    assert status == EXIT_UNREADABLE
    assert err == f"esper.report: no metrics.csv in {run}\n"
    assert not (run / "report.png").exists()


def test_the_module_runs_as_a_program(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run-3", lifecycle=False)
    done = subprocess.run(
        [sys.executable, "-m", "esper.report", str(run)], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "report: " in done.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "esper.report", str(tmp_path / "absent")],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert missing.returncode == 2
    assert missing.stderr.count("\n") == 1
