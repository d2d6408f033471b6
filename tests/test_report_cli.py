"""``python -m esper.report``: exit 0 with the summary and report.png; exit 2 with one line for missing inputs."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from typing import TYPE_CHECKING

from esper.report import EXIT_OK, EXIT_UNREADABLE, build_parser, main
from esper.run_dir import claim_run_dir
from tests.report_fixtures import write_run

if TYPE_CHECKING:
    from collections.abc import Mapping
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


def _append_events(run: Path, *events: Mapping[str, object]) -> None:
    with (run / "events.jsonl").open("a", encoding="utf-8") as file:
        file.write("\n" + "".join(json.dumps({"level": "info", **event}) + "\n" for event in events))


_STARTED = {"event": "run_started", "run_id": "r"}
_INTERRUPTED = {"event": "run_finished", "status": "interrupted", "duration_s": 45.0, "error": None}


def test_a_resumed_session_killed_after_an_earlier_summary_is_not_reported_by_that_summary(tmp_path: Path) -> None:
    """Ctrl-C at epoch 8 (summary.json written), --resume, kill -9: the report printed the first session's status
    and counted the seeds only up to its last step."""
    run = write_run(tmp_path / "run-k", last_step=700)
    (run / "summary.json").write_text(
        (run / "summary.json").read_text(encoding="utf-8").replace('"completed"', '"interrupted"'), encoding="utf-8"
    )
    _append_events(run, _STARTED, _INTERRUPTED, {"event": "run_starting"}, _STARTED)
    status, out, _ = _run([str(run)])
    assert status == EXIT_OK
    assert out.splitlines()[0] == (
        "run run-k: killed after its last summary (its summary.json, status interrupted, is an earlier session's);"
        " the figures below come from metrics.csv"
    )
    assert out.splitlines()[2] == "seeds 3: culled 1, fossilized 1, shadowing 1"  # every transition counts
    lock = claim_run_dir(run, resume=True)  # the resumed session is still going
    try:
        _, out, _ = _run([str(run)])
    finally:
        lock.release()
    assert out.splitlines()[0] == "run run-k: still running (figures so far)"
    assert out.splitlines()[2] == "seeds 3: culled 1, fossilized 1, shadowing 1"


def test_a_summary_whose_duration_the_run_finished_line_rounds_apart_is_the_last_sessions(tmp_path: Path) -> None:
    """An earlier version logged run_finished's duration_s as 0.678 and wrote 0.679 in summary.json: the report called
    the summary an earlier session's ("its last session ended (completed) without writing a summary")."""
    run = write_run(tmp_path / "run-d")
    written = json.loads((run / "summary.json").read_text(encoding="utf-8"))["duration_s"]
    _append_events(run, _STARTED, {**_INTERRUPTED, "status": "completed", "duration_s": written + 0.001})
    assert _run([str(run)])[1].splitlines()[0].startswith("run run-d: status completed")
    # A resumed session that ended without writing one leaves the first session's stale, however close its duration.
    earlier_end = {**_INTERRUPTED, "duration_s": written, "timestamp": "2026-01-01T00:00:00.000000Z"}
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    summary["started_at"] = "2025-12-31T23:00:00.000000Z"
    (run / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    _append_events(run, earlier_end, _STARTED, {**_INTERRUPTED, "status": "failed", "duration_s": written})
    assert _run([str(run)])[1].splitlines()[0].startswith("run run-d: its last session ended (failed)")


def test_a_summary_written_just_before_a_second_ctrl_c_is_the_sessions_own(tmp_path: Path) -> None:
    """A second Ctrl-C late in the stop: summary.json was written, the run_finished line was not. The report called
    the summary "an earlier session's" of a run that had one session, and likewise of a resumed session's own."""
    run = write_run(tmp_path / "run-s")
    _append_events(run, _STARTED)  # the session's start; no run_finished follows
    assert _run([str(run)])[1].splitlines()[0].startswith("run run-s: status completed")
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    earlier_end = {**_INTERRUPTED, "timestamp": "2026-01-01T00:00:00.000000Z"}
    _append_events(run, earlier_end, {"event": "run_starting"}, _STARTED)  # a resumed session, killed likewise
    summary["started_at"] = "2026-01-01T00:00:05.000000Z"  # written by that resumed session
    (run / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    assert _run([str(run)])[1].splitlines()[0].startswith("run run-s: status completed")
    summary["started_at"] = "2025-12-31T23:00:00.000000Z"  # the first session's: stale
    (run / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    assert _run([str(run)])[1].splitlines()[0].startswith("run run-s: killed after its last summary")


def test_a_summary_is_the_last_sessions_when_it_wrote_it_and_a_later_failed_start_does_not_matter(
    tmp_path: Path,
) -> None:
    run = write_run(tmp_path / "run-m")
    refused = {"event": "run_finished", "status": "failed", "duration_s": None, "error": "ConfigError: x"}
    _append_events(run, _STARTED, _INTERRUPTED, {"event": "run_starting"}, refused)
    assert _run([str(run)])[1].splitlines()[0].startswith("run run-m: status completed")
    # A session that ended without writing its summary (abandoned by its event loop) leaves the earlier one stale.
    _append_events(run, _STARTED, {**refused, "status": "interrupted", "error": "abandoned"})
    first = _run([str(run)])[1].splitlines()[0]
    assert first.startswith("run run-m: its last session ended (interrupted) without writing a summary (its summ")


def test_a_run_that_failed_before_its_first_epoch_names_its_error(tmp_path: Path) -> None:
    """It said only "no metrics.csv in r_bad" though events.jsonl held why."""
    run = write_run(tmp_path / "run-bad", summary=False)
    (run / "metrics.csv").unlink()
    _append_events(run, {"event": "run_finished", "status": "failed", "duration_s": None, "error": "TolariaError: y"})
    status, out, err = _run([str(run)])
    assert (status, out) == (EXIT_UNREADABLE, "")
    assert err == f"esper.report: no metrics.csv in {run} (the run failed: TolariaError: y)\n"


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


def test_help_shows_no_restructuredtext_markup() -> None:
    """--help printed the docstring's ``double backticks``."""
    text = " ".join(build_parser().format_help().split())
    assert "``" not in text
    assert "python -m esper.report runs/<run-id>: re-render" in text
