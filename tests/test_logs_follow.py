"""Following a growing events file: partial lines completed later, late creation, truncation, rotation, and --follow.

No test waits on time: the follower's poll is a gate the test opens, and `idle` says the follower has read everything.
"""

from __future__ import annotations

import asyncio
import io
import json
from typing import TYPE_CHECKING

import pytest

from esper.tail import TailOptions, run_tail
from esper.tail_follow import LineReader, follow_lines, read_lines_once
from esper.tail_render import EventFilter, TailSession

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path


class GatedPoll:
    """A poll that parks the follower until the test calls release(); `idle` is set while it is parked."""

    def __init__(self) -> None:
        self.idle = asyncio.Event()
        self._go = asyncio.Event()

    async def __call__(self) -> None:
        self.idle.set()
        await self._go.wait()
        self._go.clear()

    def release(self) -> None:
        self.idle.clear()
        self._go.set()


def event_line(event: str, *, actor: str = "tolaria", **fields: object) -> str:
    return json.dumps(
        {"timestamp": "2026-01-02T12:00:00.000Z", "level": "info", "event": event, "actor": actor, **fields}
    )


async def next_batch(lines: AsyncIterator[list[str]]) -> list[str]:
    return await anext(lines)


def append(path: Path, text: str) -> None:
    with path.open("a") as file:
        file.write(text)


def test_chunk_size_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="chunk_bytes must be > 0"):
        LineReader(tmp_path / "x", chunk_bytes=0)


async def test_partial_line_is_held_until_its_newline_arrives(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    first, second = event_line("first"), event_line("second")
    append(path, first + "\n" + second[:20])
    poll = GatedPoll()
    async with LineReader(path) as reader:
        lines = follow_lines(reader, poll=poll)
        async with asyncio.timeout(1):
            assert await anext(lines) == [first]
            async with asyncio.TaskGroup() as group:
                waiting = group.create_task(next_batch(lines))
                await poll.idle.wait()  # the follower has read up to the partial line and is polling
                assert reader.pending == second[:20].encode()
                append(path, second[20:] + "\n")
                poll.release()
            assert waiting.result() == [second]
            assert reader.pending == b""


async def test_file_created_after_following_starts(tmp_path: Path) -> None:
    path = tmp_path / "late.jsonl"
    poll = GatedPoll()
    async with LineReader(path) as reader:
        lines = follow_lines(reader, poll=poll)
        async with asyncio.timeout(1), asyncio.TaskGroup() as group:
            waiting = group.create_task(next_batch(lines))
            await poll.idle.wait()
            assert not reader.opened
            append(path, "one\ntwo\n")
            poll.release()
        assert waiting.result() == ["one", "two"]


async def test_truncation_restarts_from_the_beginning(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    append(path, "aaaaaaaaaa\nbbbbbbbbbb\npartial")
    async with LineReader(path) as reader:
        assert await reader.read_available() == ["aaaaaaaaaa", "bbbbbbbbbb"]
        path.write_text("new\n")
        # The stranded partial line is handed out so the parser can count it, then the new content follows.
        assert await reader.read_available() == ["partial", "new"]
        assert reader.truncations == 1


async def test_rotation_finishes_the_old_file_then_reads_the_new_one(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    append(path, "old-1\n")
    async with LineReader(path) as reader:
        assert await reader.read_available() == ["old-1"]
        append(path, "old-2\n")
        path.rename(tmp_path / "events.jsonl.1")
        append(path, "new-1\n")
        assert await reader.read_available() == ["old-2", "new-1"]
        assert reader.reopens == 1
        append(path, "new-2\n")
        assert await reader.read_available() == ["new-2"]


async def test_removed_file_keeps_the_old_handle_until_a_new_one_appears(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    append(path, "a\n")
    async with LineReader(path) as reader:
        assert await reader.read_available() == ["a"]
        path.unlink()
        assert await reader.read_available() == []
        append(path, "b\n")
        assert await reader.read_available() == ["b"]


async def test_read_once_spans_chunks_and_keeps_the_unterminated_last_line(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    long_line = "x" * 50
    append(path, f"{long_line}\nshort\nlast")
    async with LineReader(path, chunk_bytes=8) as reader:
        batches = [batch async for batch in read_lines_once(reader)]
    assert [line for batch in batches for line in batch] == [long_line, "short", "last"]


async def test_read_once_refuses_a_missing_file(tmp_path: Path) -> None:
    async with LineReader(tmp_path / "missing.jsonl") as reader:
        with pytest.raises(FileNotFoundError):
            await anext(read_lines_once(reader))


async def test_run_tail_follow_shows_lines_as_they_arrive_and_counts_a_stranded_partial(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    append(path, event_line("before") + "\nnot json\n")
    out = io.StringIO()
    session = TailSession(event_filter=EventFilter())
    poll = GatedPoll()
    options = TailOptions(path=path, follow=True)
    async with asyncio.timeout(1), asyncio.TaskGroup() as group:
        tail = group.create_task(run_tail(options, session, out, poll=poll))
        await poll.idle.wait()
        assert "before" in out.getvalue()
        assert session.malformed == 1
        completed = event_line("completed")
        append(path, completed[:15])
        poll.release()
        await poll.idle.wait()
        assert "completed" not in out.getvalue()
        append(path, completed[15:] + "\n" + event_line("stranded")[:10])
        poll.release()
        await poll.idle.wait()
        assert "completed" in out.getvalue()
        assert session.malformed == 1  # the completed partial was not malformed
        tail.cancel()
    assert tail.cancelled()
    assert session.malformed == 2  # the partial still open when following stopped
    assert [text.split()[4] for text in out.getvalue().splitlines()] == ["before", "completed"]


async def test_run_tail_follow_state_redraws_when_a_new_state_arrives(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    fields = {"status": "running", "mailbox_depth": 0, "mailbox_capacity": 8, "failed": 0, "restarts": 0}
    append(path, event_line("actor_state", actor="urza", handled=1, **fields) + "\n")
    out = io.StringIO()
    session = TailSession(event_filter=EventFilter(), state=True)
    poll = GatedPoll()
    async with asyncio.timeout(1), asyncio.TaskGroup() as group:
        tail = group.create_task(run_tail(TailOptions(path=path, follow=True, state=True), session, out, poll=poll))
        await poll.idle.wait()
        tables = out.getvalue().split("\n\n")
        assert len(tables) == 2  # the first state (no empty table before it), and the trailing separator
        assert "urza" in tables[0]
        append(path, event_line("unrelated") + "\n")
        poll.release()
        await poll.idle.wait()
        assert len(out.getvalue().split("\n\n")) == 2  # nothing the table shows changed: no redraw
        append(path, event_line("actor_state", actor="urza", handled=5, **fields) + "\n")
        poll.release()
        await poll.idle.wait()
        tail.cancel()
    last = out.getvalue().split("\n\n")[-2].splitlines()
    assert last[1].split()[:4] == ["urza", "running", "0/8", "5"]
    assert last[-1] == "1 actor, 0 malformed lines skipped"


async def test_following_ends_when_the_run_has_finished_and_not_at_a_resumed_sessions_old_end(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    # An interrupted session's run_finished, then a resumed session: following goes on past the first.
    append(path, event_line("run_finished") + "\n" + event_line("run_starting") + "\n")
    out = io.StringIO()
    session = TailSession(event_filter=EventFilter())
    poll = GatedPoll()
    async with asyncio.timeout(1), asyncio.TaskGroup() as group:
        tail = group.create_task(run_tail(TailOptions(path=path, follow=True), session, out, poll=poll))
        await poll.idle.wait()  # the barrier: it read both lines and waits for more
        assert not session.finished
        append(path, event_line("epoch_end") + "\n" + event_line("run_finished") + "\n")
        poll.release()
        await tail  # returns by itself: the file's last line is the run's run_finished
    assert [text.split()[4] for text in out.getvalue().splitlines()] == [
        "run_finished",
        "run_starting",
        "epoch_end",
        "run_finished",
    ]


async def test_following_a_finished_run_shows_it_and_returns(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    append(path, event_line("run_starting") + "\n" + event_line("run_finished") + "\n")
    out = io.StringIO()
    poll = GatedPoll()
    async with asyncio.timeout(1):
        await run_tail(TailOptions(path=path, follow=True), TailSession(event_filter=EventFilter()), out, poll=poll)
    assert len(out.getvalue().splitlines()) == 2


async def test_following_a_finished_runs_state_shows_its_table_once_without_the_empty_placeholder(
    tmp_path: Path,
) -> None:
    """`--follow --state` on a finished run printed "(no actor_state events yet)" before the real table."""
    path = tmp_path / "events.jsonl"
    fields = {"status": "stopped", "mailbox_depth": 0, "mailbox_capacity": 8, "failed": 0, "restarts": 0}
    lines = [event_line("run_starting"), event_line("actor_state", actor="urza", handled=3, **fields)]
    append(path, "\n".join([*lines, event_line("run_finished")]) + "\n")
    out = io.StringIO()
    session = TailSession(event_filter=EventFilter(), state=True)
    async with asyncio.timeout(1):
        await run_tail(TailOptions(path=path, follow=True, state=True), session, out, poll=GatedPoll())
    assert "no actor_state events yet" not in out.getvalue()
    [table] = [part for part in out.getvalue().split("\n\n") if part]
    assert table.splitlines()[1].split()[:4] == ["urza", "stopped", "0/8", "3"]


async def test_following_state_before_any_actor_state_shows_the_empty_table_while_it_waits(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    append(path, event_line("run_starting") + "\n")
    out = io.StringIO()
    session = TailSession(event_filter=EventFilter(), state=True)
    poll = GatedPoll()
    async with asyncio.timeout(1), asyncio.TaskGroup() as group:
        tail = group.create_task(run_tail(TailOptions(path=path, follow=True, state=True), session, out, poll=poll))
        await poll.idle.wait()
        assert "(no actor_state events yet)" in out.getvalue()
        tail.cancel()
