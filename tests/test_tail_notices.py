"""``esper.tail`` says what a user could not tell.

A killed run read once, a file that is no run's log, a log not there yet, stage and gate numbers by name, and that its
times are UTC.

No test waits on time: the follower's poll is a gate the test opens, and `idle` says the follower has read everything.
"""

from __future__ import annotations

import asyncio
import io
import json
from typing import TYPE_CHECKING

import pytest

from esper.run_dir import LOCK_NAME, claim_run_dir
from esper.tail import RUN_GONE, build_parser, main, options_from_args, run_tail
from esper.tail_render import EventFilter, TailSession, parse_line, render_event
from tests.test_logs_follow import GatedPoll, append, event_line
from tests.test_tail_ends import NO_SUCH_PID

if TYPE_CHECKING:
    from pathlib import Path

_STATE = json.dumps(
    {
        "timestamp": "2026-01-02T12:00:00.000Z",
        "level": "info",
        "event": "actor_state",
        "actor": "tolaria",
        "status": "running",
        "mailbox_depth": 0,
        "mailbox_capacity": 4,
        "handled": 1,
        "failed": 0,
        "restarts": 0,
        "breaker": None,
        "last_latency_ms": None,
    }
)


def _killed_run(directory: Path) -> None:
    """A run that was kill -9'd: its lock free (the kernel dropped it), its log without run_finished."""
    claim_run_dir(directory, resume=True).release()
    (directory / LOCK_NAME).write_text(NO_SUCH_PID, encoding="ascii")  # its pid is gone too
    append(directory / "events.jsonl", event_line("run_starting") + "\n" + _STATE + "\n")


def _rendered(event: str, **fields: object) -> str:
    parsed = parse_line(
        json.dumps({"timestamp": "2026-01-02T12:00:00.123456Z", "level": "info", "event": event, **fields})
    )
    assert parsed is not None
    return render_event(parsed)


@pytest.mark.parametrize("state", [False, True])
def test_reading_a_killed_runs_log_once_says_the_run_is_gone(tmp_path: Path, state: bool) -> None:
    """Without --follow, every actor showed `running` with no note: the table looked live."""
    _killed_run(tmp_path)
    out, err = io.StringIO(), io.StringIO()
    assert main([str(tmp_path), *(["--state"] if state else [])], out=out, err=err) == 0
    assert err.getvalue() == f"{RUN_GONE}\n"
    if state:
        assert out.getvalue().splitlines()[-1] == "the run is not running: states as of 12:00:00.000Z"


def test_reading_a_running_runs_log_once_says_nothing_of_it(tmp_path: Path) -> None:
    lock = claim_run_dir(tmp_path, resume=True)  # the run, alive, holds its directory
    try:
        append(tmp_path / "events.jsonl", event_line("run_starting") + "\n" + _STATE + "\n")
        out, err = io.StringIO(), io.StringIO()
        assert main([str(tmp_path), "--state"], out=out, err=err) == 0
    finally:
        lock.release()
    assert err.getvalue() == ""
    assert "not running" not in out.getvalue()


async def test_following_a_killed_runs_state_marks_the_table_not_live(tmp_path: Path) -> None:
    _killed_run(tmp_path)
    options = options_from_args(build_parser().parse_args([str(tmp_path), "--follow", "--state"]), stdout_is_tty=False)
    out = io.StringIO()

    async def never() -> None:
        raise AssertionError("a gone run was polled for more")

    assert await run_tail(options, TailSession(event_filter=EventFilter(), state=True), out, poll=never) == RUN_GONE
    assert out.getvalue().splitlines()[-2] == "the run is not running: states as of 12:00:00.000Z"


@pytest.mark.parametrize("follow", [False, True])
def test_a_file_that_holds_no_events_is_named_in_one_line_and_exit_2(tmp_path: Path, follow: bool) -> None:
    """metrics.csv printed only "4 malformed lines skipped", exit 0; followed, it said a finished run was killed."""
    claim_run_dir(tmp_path, resume=True).release()  # the run finished: its lock is free, its pid gone
    (tmp_path / LOCK_NAME).write_text(NO_SUCH_PID, encoding="ascii")
    csv = tmp_path / "metrics.csv"
    csv.write_text("epoch,loss\n1,2.5\n2,1.9\n", encoding="utf-8")
    out, err = io.StringIO(), io.StringIO()
    assert main([str(csv), *(["--follow"] if follow else [])], out=out, err=err) == 2
    assert err.getvalue() == (
        f"esper.tail: {csv} holds no Esper events (3 lines skipped): is it the run's events.jsonl?\n"
    )
    assert out.getvalue() == ""


async def test_an_empty_log_is_followed_quietly_and_a_missing_one_is_waited_for_out_loud(tmp_path: Path) -> None:
    """A typo'd run id waited forever without a word; a run just starting (empty log) must stay quiet."""
    path = tmp_path / "events.jsonl"
    options = options_from_args(build_parser().parse_args([str(path), "--follow"]), stdout_is_tty=False)
    out, err, poll = io.StringIO(), io.StringIO(), GatedPoll()
    lock = claim_run_dir(tmp_path, resume=True)  # the run starting
    try:
        async with asyncio.timeout(2), asyncio.TaskGroup() as group:
            tail = group.create_task(
                run_tail(options, TailSession(event_filter=EventFilter()), out, poll=poll, err=err)
            )
            await poll.idle.wait()
            assert err.getvalue() == f"esper.tail: waiting for {path} to appear\n"
            poll.release()
            await poll.idle.wait()  # still missing: said once only
            assert err.getvalue() == f"esper.tail: waiting for {path} to appear\n"
            path.touch()
            poll.release()
            await poll.idle.wait()  # the empty log: followed, nothing said
            append(path, event_line("run_starting") + "\n" + event_line("run_finished") + "\n")
            lock.release()
            poll.release()
            assert await tail is None
    finally:
        lock.release()
    assert err.getvalue() == f"esper.tail: waiting for {path} to appear\n"
    assert [text.split()[4] for text in out.getvalue().splitlines()] == ["run_starting", "run_finished"]


def test_lifecycle_stage_and_gate_numbers_are_named_and_kept() -> None:
    changed = _rendered("seed_stage_changed", slot="blocks.0", from_stage=1, to_stage=2, step=7)
    assert "from_stage=1 (dormant) to_stage=2 (germinated) step=7" in changed
    state = _rendered("seed_state", slot="b", stage=3, last_gate={"gate": 2, "passed": True})
    assert 'stage=3 (training) last_gate={"gate":2,"passed":true} (g1_gradient_health)' in state
    assert "gate=6 (g5_reset)" in _rendered("gate_result", gate=6, passed=False)
    assert _rendered("blueprint_ready", stage=2).endswith("stage=2")  # a blueprint's maturity, not a seed stage
    assert _rendered("seed_state", stage=99, last_gate=None).endswith("stage=99 last_gate=null")  # unknown: as is


def test_times_are_marked_utc() -> None:
    """events.jsonl's `Z` was dropped: a reader in another zone took the times for local ones."""
    assert _rendered("x").startswith("2026-01-02 12:00:00.123Z info")


def _run_killed_before_its_first_line(directory: Path, text: str) -> Path:
    claim_run_dir(directory, resume=True).release()
    (directory / LOCK_NAME).write_text(NO_SUCH_PID, encoding="ascii")
    log = directory / "events.jsonl"
    log.write_text(text, encoding="utf-8")
    return log


@pytest.mark.parametrize("follow", [False, True])
def test_an_empty_log_of_a_killed_run_is_said_gone(tmp_path: Path, follow: bool) -> None:
    """Killed after the log was made and before its first line (a Redis connect between them): followed, it waited
    forever; read once, it said nothing."""
    _run_killed_before_its_first_line(tmp_path, "")
    out, err = io.StringIO(), io.StringIO()
    assert main([str(tmp_path), *(["--follow"] if follow else [])], out=out, err=err) == 0
    assert err.getvalue() == f"{RUN_GONE}\n"


def test_a_log_holding_only_a_torn_first_line_is_no_wrong_file(tmp_path: Path) -> None:
    """A run killed while it wrote its first line was refused as "holds no Esper events: is it events.jsonl?"."""
    _run_killed_before_its_first_line(tmp_path, '{"timestamp":"2026-12-07T19:3')
    out, err = io.StringIO(), io.StringIO()
    assert main([str(tmp_path)], out=out, err=err) == 0
    assert err.getvalue() == f"{RUN_GONE}\nesper.tail: 1 malformed line skipped\n"


def test_a_wrong_file_is_named_as_the_run_configures_it(tmp_path: Path) -> None:
    """Given the run directory, the line named events.jsonl where the run's config.toml names another log."""
    claim_run_dir(tmp_path, resume=True).release()
    (tmp_path / LOCK_NAME).write_text(NO_SUCH_PID, encoding="ascii")
    (tmp_path / "config.toml").write_text('[logging]\njson_file = "ev.jsonl"\n', encoding="utf-8")
    (tmp_path / "ev.jsonl").write_text("epoch,loss\n", encoding="utf-8")
    out, err = io.StringIO(), io.StringIO()
    assert main([str(tmp_path)], out=out, err=err) == 2
    assert err.getvalue() == (
        f"esper.tail: {tmp_path / 'ev.jsonl'} holds no Esper events (1 line skipped): is it the run's events.jsonl?\n"
    )


def test_another_empty_file_of_a_finished_run_is_no_killed_run(tmp_path: Path) -> None:
    """Only the run's own log says something of the run by being empty."""
    _run_killed_before_its_first_line(tmp_path, "")
    notes = tmp_path / "notes.txt"
    notes.touch()
    out, err = io.StringIO(), io.StringIO()
    assert main([str(notes)], out=out, err=err) == 0
    assert err.getvalue() == ""


async def test_another_empty_file_of_a_finished_run_is_followed_not_called_gone(tmp_path: Path) -> None:
    _run_killed_before_its_first_line(tmp_path, "")
    notes = tmp_path / "notes.txt"
    notes.touch()
    options = options_from_args(build_parser().parse_args([str(notes), "--follow"]), stdout_is_tty=False)
    poll = GatedPoll()
    async with asyncio.timeout(2):
        session = TailSession(event_filter=EventFilter())
        tail = asyncio.ensure_future(run_tail(options, session, io.StringIO(), poll=poll))
        await poll.idle.wait()  # a gone run would have ended the tail before its first wait
        poll.release()
        await poll.idle.wait()  # and before its second
        assert not tail.done()
        tail.cancel()
        with pytest.raises(asyncio.CancelledError):
            await tail


def test_a_one_line_file_without_a_newline_that_is_no_log_is_refused(tmp_path: Path) -> None:
    """The torn-first-line allowance is the run's log's alone: `{"a": 1}` with no newline was read as a torn log."""
    other = tmp_path / "x.json"
    other.write_text('{"a": 1}', encoding="utf-8")
    out, err = io.StringIO(), io.StringIO()
    assert main([str(other)], out=out, err=err) == 2
    assert err.getvalue() == (
        f"esper.tail: {other} holds no Esper events (1 line skipped): is it the run's events.jsonl?\n"
    )


def test_a_link_to_a_killed_runs_log_holding_a_torn_first_line_is_no_wrong_file(tmp_path: Path) -> None:
    """`latest.jsonl -> run/events.jsonl` was judged by the link's own name and folder: refused as no log."""
    run = tmp_path / "run"
    run.mkdir()
    _run_killed_before_its_first_line(run, '{"timestamp":"2026-12-07T19:3')
    link = tmp_path / "latest.jsonl"
    link.symlink_to(run / "events.jsonl")
    out, err = io.StringIO(), io.StringIO()
    assert main([str(link)], out=out, err=err) == 0
    assert err.getvalue() == "esper.tail: 1 malformed line skipped\n"
