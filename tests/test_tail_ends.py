"""``esper.tail``: a run's log named late, a killed run, a pipe, and inputs it cannot follow.

No test waits on time: the follower's poll is a gate the test opens, and `idle` says the follower has read everything.
"""

from __future__ import annotations

import asyncio
import io
import os
from pathlib import Path

import pytest

from esper.run_dir import LOCK_NAME, claim_run_dir
from esper.tail import RUN_GONE, TailOptions, build_parser, main, options_from_args, run_tail
from esper.tail_follow import LineReader, NotReadableError, read_lines_once
from esper.tail_liveness import run_gone, run_held
from esper.tail_render import EventFilter, TailSession
from tests.test_logs_follow import GatedPoll, append, event_line

NO_SUCH_PID = str(2**22 + 1)  # above Linux's largest pid_max: never a process


def _words(out: io.StringIO) -> list[str]:
    return [text.split()[4] for text in out.getvalue().splitlines()]


async def test_following_a_run_directory_reads_the_log_its_config_names_once_written(tmp_path: Path) -> None:
    """Started before the run, it waited on events.jsonl forever while the run wrote logging.json_file's ev2.jsonl."""
    run = tmp_path / "run"
    options = options_from_args(build_parser().parse_args([str(run), "--follow"]), stdout_is_tty=False)
    out, poll = io.StringIO(), GatedPoll()
    async with asyncio.timeout(2), asyncio.TaskGroup() as group:
        tail = group.create_task(run_tail(options, TailSession(event_filter=EventFilter()), out, poll=poll))
        await poll.idle.wait()  # the barrier: no log yet
        run.mkdir()
        (run / "config.toml").write_text('[logging]\njson_file = "ev2.jsonl"\n', encoding="utf-8")
        append(run / "ev2.jsonl", event_line("run_starting") + "\n" + event_line("run_finished") + "\n")
        poll.release()
        assert await tail is None
    assert _words(out) == ["run_starting", "run_finished"]


def test_a_run_is_gone_when_its_lock_is_free_and_alive_while_held_or_never_claimed(tmp_path: Path) -> None:
    assert not run_gone(tmp_path)  # no run.lock: not a run directory (yet)
    lock = claim_run_dir(tmp_path, resume=True)
    try:
        assert not run_gone(tmp_path)  # held, by a live pid
        (tmp_path / LOCK_NAME).write_text(NO_SUCH_PID, encoding="ascii")
        assert not run_gone(tmp_path)  # a dead pid in the file, but the lock is held
    finally:
        lock.release()
    assert run_gone(tmp_path)
    (tmp_path / LOCK_NAME).write_text("", encoding="ascii")
    assert run_gone(tmp_path)


def test_a_run_directory_is_held_while_its_lock_is_whatever_pid_run_lock_names(tmp_path: Path) -> None:
    assert not run_held(tmp_path)  # no run.lock: no run has claimed it
    lock = claim_run_dir(tmp_path, resume=True)
    try:
        assert run_held(tmp_path)
    finally:
        lock.release()
    # A notebook's run released the directory and its process (this one, named in run.lock) lives on.
    assert (tmp_path / LOCK_NAME).read_text(encoding="ascii").strip() == str(os.getpid())
    assert not run_held(tmp_path)


async def test_following_a_finished_run_being_resumed_goes_on_to_the_new_sessions_end(tmp_path: Path) -> None:
    """The --resume held the directory before its first line, so the log still ended with the first session's
    run_finished, and --follow exited at once."""
    append(tmp_path / "events.jsonl", event_line("run_starting") + "\n" + event_line("run_finished") + "\n")
    lock = claim_run_dir(tmp_path, resume=True)  # the resume, not written anything yet
    options = options_from_args(build_parser().parse_args([str(tmp_path), "--follow"]), stdout_is_tty=False)
    out, poll = io.StringIO(), GatedPoll()
    try:
        async with asyncio.timeout(2), asyncio.TaskGroup() as group:
            tail = group.create_task(run_tail(options, TailSession(event_filter=EventFilter()), out, poll=poll))
            await poll.idle.wait()  # the barrier: it read the old session to its run_finished and kept following
            append(tmp_path / "events.jsonl", event_line("run_resuming") + "\n")
            poll.release()
            await poll.idle.wait()
            append(tmp_path / "events.jsonl", event_line("run_finished") + "\n")
            poll.release()
            await poll.idle.wait()  # the resume's run_finished read while it still holds the directory: on
            lock.release()
            poll.release()
            assert await tail is None
    finally:
        lock.release()
    assert _words(out) == ["run_starting", "run_finished", "run_resuming", "run_finished"]


async def test_following_a_finished_run_nobody_holds_ends_at_its_run_finished(tmp_path: Path) -> None:
    claim_run_dir(tmp_path, resume=True).release()
    append(tmp_path / "events.jsonl", event_line("run_starting") + "\n" + event_line("run_finished") + "\n")
    options = options_from_args(build_parser().parse_args([str(tmp_path), "--follow"]), stdout_is_tty=False)
    out = io.StringIO()

    async def never() -> None:
        raise AssertionError("a finished run nobody holds was polled for more")

    assert await run_tail(options, TailSession(event_filter=EventFilter()), out, poll=never) is None
    assert _words(out) == ["run_starting", "run_finished"]


async def test_following_a_run_killed_meanwhile_ends_with_one_line(tmp_path: Path) -> None:
    """kill -9: no run_finished line ever comes, and --follow waited forever."""
    lock = claim_run_dir(tmp_path, resume=True)
    append(tmp_path / "events.jsonl", event_line("run_starting") + "\n")
    options = options_from_args(build_parser().parse_args([str(tmp_path), "--follow"]), stdout_is_tty=False)
    out, poll = io.StringIO(), GatedPoll()
    session = TailSession(event_filter=EventFilter())
    try:
        async with asyncio.timeout(2), asyncio.TaskGroup() as group:
            tail = group.create_task(run_tail(options, session, out, poll=poll))
            await poll.idle.wait()  # following a live run
            append(tmp_path / "events.jsonl", event_line("epoch_end") + "\n" + event_line("epoch_end")[:9])
            lock.release()  # killed: the kernel drops the lock; its pid is gone
            (tmp_path / LOCK_NAME).write_text(NO_SUCH_PID, encoding="ascii")
            poll.release()
            assert await tail == RUN_GONE
    finally:
        lock.release()
    assert _words(out) == ["run_starting", "epoch_end"]  # what it wrote before it died is shown
    assert session.malformed == 1  # the line it died writing


async def test_following_a_pipe_reads_it_as_a_stream_to_its_end(tmp_path: Path) -> None:
    """`head -50 events.jsonl | esper.tail /dev/stdin --follow` failed with "File or stream is not seekable"."""
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, (event_line("first") + "\n").encode())
        options = TailOptions(path=Path(f"/dev/fd/{read_end}"), follow=True)
        out, poll = io.StringIO(), GatedPoll()
        session = TailSession(event_filter=EventFilter())
        async with asyncio.timeout(2), asyncio.TaskGroup() as group:
            tail = group.create_task(run_tail(options, session, out, poll=poll))
            await poll.idle.wait()  # read what is there; the writer is still open
            os.write(write_end, (event_line("second") + "\n" + event_line("last")).encode())
            os.close(write_end)
            write_end = -1
            poll.release()
            assert await tail is None  # the pipe's end ends the following
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
    assert _words(out) == ["first", "second", "last"]  # its last line needs no newline
    assert session.malformed == 0


async def test_a_device_that_is_not_a_stream_is_refused() -> None:
    """/dev/zero was read forever, its memory growing."""
    async with asyncio.timeout(2), LineReader(Path("/dev/zero"), chunk_bytes=16) as reader:
        with pytest.raises(NotReadableError, match="not a regular file, a pipe or a terminal"):
            await anext(read_lines_once(reader))


def test_the_command_refuses_a_device_in_one_line() -> None:
    out, err = io.StringIO(), io.StringIO()
    assert main(["/dev/zero", "--follow"], out=out, err=err) == 2
    assert err.getvalue() == "esper.tail: cannot read /dev/zero: not a regular file, a pipe or a terminal\n"


def test_a_log_that_is_a_directory_is_named_as_one(tmp_path: Path) -> None:
    """It said "no such file: .../events.jsonl/events.jsonl"."""
    (tmp_path / "events.jsonl").mkdir()
    for given in (tmp_path / "events.jsonl", tmp_path):
        out, err = io.StringIO(), io.StringIO()
        assert main([str(given)], out=out, err=err) == 2
        assert err.getvalue() == f"esper.tail: {tmp_path / 'events.jsonl'} is a directory, not an events file\n"


@pytest.mark.parametrize("interval", ["inf", "nan", "0", "-1"])
def test_an_interval_must_be_finite_and_positive(interval: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["events.jsonl", "--follow", "--interval", interval])
    assert exit_info.value.code == 2
    assert f"--interval must be a finite number > 0, got {float(interval)}" in capsys.readouterr().err
