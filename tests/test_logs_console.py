"""The event log and the queued consoles: a drop on stdout is noted, and a failing file never deadlocks its notice."""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import select
import sys
import threading
from typing import TYPE_CHECKING

import pytest

from esper.console_stream import ConsoleStream
from esper.log_file import _JsonLineWriter
from esper.logs import configure_logging, reset_logging

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path


class Stalled:
    """A pipe of one page to a ConsoleStream whose writer thread gets stuck in a line longer than the pipe holds."""

    def __init__(self) -> None:
        self.read_end, write_end = os.pipe()
        fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)
        self.inner = open(write_end, "w", encoding="utf-8")  # closed by end()
        self.streams: list[ConsoleStream] = []

    def stream(self, on_dropped: Callable[[int], None] | None = None) -> ConsoleStream:
        stream = ConsoleStream(self.inner, on_dropped=on_dropped, capacity=2)
        self.streams.append(stream)
        return stream

    def stall(self, stream: ConsoleStream) -> None:
        stream.write("x" * 10_000 + "\n")
        # The barrier: the pipe has the line's first bytes, so the writer thread took it off the queue and waits.
        assert select.select([self.read_end], [], [], 10)[0] == [self.read_end]

    def end(self) -> None:
        os.close(self.read_end)  # the stuck write fails (EPIPE): the stream is lost and its thread ends
        for stream in self.streams:
            assert stream.drain(10)
        with contextlib.suppress(BrokenPipeError):  # its buffer still holds what the reader never took
            self.inner.close()


@pytest.fixture
def stalled() -> Iterator[Stalled]:
    pipe = Stalled()
    try:
        yield pipe
    finally:
        pipe.end()


def test_lines_dropped_on_stdout_are_noted_in_the_event_log(
    tmp_path: Path, stalled: Stalled, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README says a drop is noted in events.jsonl, but only the console's (stderr's) writer was listened to: a user's
    prints dropped on a stalled stdout left no trace."""
    stdout = stalled.stream()
    monkeypatch.setattr(sys, "stdout", stdout)
    logging = configure_logging(tmp_path / "run", console_stream=io.StringIO())
    try:
        stalled.stall(stdout)
        for n in range(3):
            sys.stdout.write(f"user line {n}\n")  # the third is beyond the queue
        assert logging.json_path is not None
        notes = [json.loads(line) for line in logging.json_path.read_text().splitlines()]
        assert [(note["event"], note.get("stream"), note.get("queued")) for note in notes] == [
            ("console_lines_dropped", "stdout", 2)
        ]
    finally:
        logging.release()
        reset_logging()


def test_a_failing_event_log_says_so_on_a_console_that_drops_without_deadlocking(
    tmp_path: Path, stalled: Stalled
) -> None:
    """The file's notice was written under its lock; when that write was the console's first drop, the drop's note
    (in the same thread) took the same lock again, and the logging call never returned."""

    class Full(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, _data: object) -> int:
            raise OSError(28, "No space left on device")

    holder: list[_JsonLineWriter] = []
    console = stalled.stream(
        on_dropped=lambda queued: holder[0].note("warning", "console_lines_dropped", queued=queued)
    )
    log_file = _JsonLineWriter(io.BufferedWriter(Full()), 0, tmp_path / "events.jsonl", console)
    holder.append(log_file)
    stalled.stall(console)
    console.write("a\n")
    console.write("b\n")  # the queue is full: the file's notice is the first line dropped
    logging = threading.Thread(target=log_file, args=(None, "info", {"event": "e", "level": "info"}), daemon=True)
    logging.start()
    logging.join(10)  # a failure bound: the call returns at once
    assert not logging.is_alive(), "the failing event log deadlocked on its own lock"
    assert not log_file.is_open


def test_a_stdout_whose_reader_left_before_the_log_opened_is_noted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``... | head -1`` that saw a start-up line: the reader was gone before the run's log opened, and events.jsonl
    never said why the user's later prints went nowhere."""
    read_end, write_end = os.pipe()
    inner = open(write_end, "w", encoding="utf-8")  # closed below
    stdout = ConsoleStream(inner)
    monkeypatch.setattr(sys, "stdout", stdout)
    os.close(read_end)
    stdout.write("a start-up line\n")
    stdout.flush()
    assert stdout.drain(10)
    assert stdout.lost is not None  # the barrier: its writer found the reader gone
    logging = configure_logging(tmp_path / "run", console_stream=io.StringIO())
    try:
        assert logging.json_path is not None
        notes = [json.loads(line) for line in logging.json_path.read_text().splitlines()]
        assert [(note["event"], note.get("stream"), note["error"]) for note in notes] == [
            ("console_lost", "stdout", "BrokenPipeError: [Errno 32] Broken pipe")
        ]
    finally:
        logging.release()
        reset_logging()
        with contextlib.suppress(BrokenPipeError):
            inner.close()
