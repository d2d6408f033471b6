"""A line longer than the tail's limit is skipped as malformed without being held, read once or followed."""

from __future__ import annotations

import asyncio
import io
import json
from typing import TYPE_CHECKING

import pytest

from esper import tail_follow
from esper.tail import main
from esper.tail_follow import LineReader, follow_lines, read_lines_once
from tests.test_logs_follow import GatedPoll

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path


def event_line(event: str, **fields: object) -> str:
    return json.dumps({"timestamp": "2026-01-02T12:00:00.000Z", "level": "info", "event": event, **fields})


async def next_batch(lines: AsyncIterator[list[str]]) -> list[str]:
    return await anext(lines)


def append(path: Path, text: str) -> None:
    with path.open("a") as file:
        file.write(text)


async def test_a_line_over_the_limit_is_handed_out_as_skipped_and_never_held_whole(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text(f"short\n{'x' * 100}\n{'y' * 32}\nnext\n{'z' * 40}")
    lines: list[str] = []
    held: list[int] = []
    async with LineReader(path, chunk_bytes=8, max_line_bytes=32) as reader:
        while True:
            lines.extend(await reader.read_available())
            held.append(reader.held_bytes)
            if reader.at_end:
                break
        last = reader.take_pending()
    assert lines == ["short", tail_follow.SKIPPED_LINE, "y" * 32, "next"]
    assert last == tail_follow.SKIPPED_LINE  # the unterminated last line is over the limit too
    assert reader.skipped == 2
    assert max(held) <= 32


async def test_a_line_within_the_limit_spanning_many_chunks_comes_out_whole(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    long_line = event_line("long", blob="b" * 500)
    path.write_text(f"{long_line}\nafter\n")
    async with LineReader(path, chunk_bytes=7, max_line_bytes=len(long_line)) as reader:
        batches = [batch async for batch in read_lines_once(reader)]
    assert [line for batch in batches for line in batch] == [long_line, "after"]
    assert reader.skipped == 0


async def test_following_a_line_that_grows_past_the_limit_drops_it_and_shows_the_next(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text("before\n")
    poll = GatedPoll()
    async with LineReader(path, chunk_bytes=16, max_line_bytes=64) as reader:
        lines = follow_lines(reader, poll=poll)
        async with asyncio.timeout(2):
            assert await anext(lines) == ["before"]
            async with asyncio.TaskGroup() as group:
                waiting = group.create_task(next_batch(lines))
                await poll.idle.wait()
                append(path, '{"event": "growing", "blob": "')
                poll.release()
                await poll.idle.wait()
                assert reader.held_bytes > 0  # within the limit so far: held until its newline
                append(path, "g" * 200)
                poll.release()
                await poll.idle.wait()
                assert (reader.held_bytes, reader.pending) == (0, b"")  # past the limit: its bytes were dropped
                append(path, "g" * 200 + '"}\nafter\n')
                poll.release()
            assert waiting.result() == [tail_follow.SKIPPED_LINE]
            assert await anext(lines) == ["after"]  # the chunk after (a read hands out one chunk's lines)
    assert reader.skipped == 1


def test_the_tail_counts_a_valid_event_over_the_limit_as_malformed_and_shows_the_next(tmp_path: Path) -> None:
    assert tail_follow.MAX_LINE_BYTES == 16 << 20  # the line below is just over it
    path = tmp_path / "events.jsonl"
    path.write_text(event_line("huge", blob="h" * (16 << 20)) + "\n" + event_line("after") + "\n")
    out, err = io.StringIO(), io.StringIO()
    assert main([str(path), "--color", "never"], out=out, err=err) == 0
    assert [line.split()[4] for line in out.getvalue().splitlines()] == ["after"]
    assert err.getvalue() == "esper.tail: 1 malformed line skipped\n"


def test_the_line_limit_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_line_bytes must be > 0"):
        LineReader(tmp_path / "x", max_line_bytes=0)
