"""ConsoleStream: a console whose reader left drops its output instead of raising into the writer."""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import select
import threading

from esper.cli_process import say
from esper.console_stream import ConsoleStream


def test_a_write_to_a_pipe_whose_reader_left_is_dropped_and_reported_once() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    lost: list[BaseException] = []
    inner = open(write_end, "w", encoding="utf-8")  # closed below, where its flush fails too
    stream = ConsoleStream(inner, lost.append)
    assert stream.write("one line\n") == len("one line\n")
    stream.flush()
    stream.write("another\n")
    stream.flush()
    assert stream.drain(10)  # the writer thread finds the loss
    assert isinstance(stream.lost, BrokenPipeError)
    assert [type(err) for err in lost] == [BrokenPipeError]
    assert not stream.isatty()
    with contextlib.suppress(BrokenPipeError):  # its buffer still holds the lost line
        inner.close()


def test_a_working_stream_is_written_through_and_a_closed_one_is_lost() -> None:
    inner = io.StringIO()
    stream = ConsoleStream(inner)
    stream.write("kept\n")
    stream.flush()
    assert inner.getvalue() == "kept\n"
    assert stream.lost is None
    inner.close()
    stream.write("dropped\n")
    assert isinstance(stream.lost, ValueError)


def test_a_reader_that_stops_reading_neither_blocks_a_write_nor_loses_the_order_of_the_lines_kept() -> None:
    """A pipe nobody read blocked the writer (the event loop) for as long as its reader stalled; now the lines queue,
    the newest are dropped once the queue is full (said once), and a reader that resumes gets the rest in order."""
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)
    dropped: list[int] = []
    inner = open(write_end, "w", encoding="utf-8")
    stream = ConsoleStream(inner, on_dropped=dropped.append, capacity=4)
    stalled = "x" * 10_000 + "\n"  # more than the pipe takes: the writer thread waits in it
    kept = [f"kept {n}\n" for n in range(4)]

    def write_all() -> None:
        stream.write(stalled)
        # The barrier: the pipe has the line's first bytes, so the writer thread took it off the queue and waits.
        assert select.select([read_end], [], [], 10)[0] == [read_end]
        assert not stream.drain(0.0)
        for line in [*kept, "dropped 1\n", "dropped 2\n"]:
            stream.write(line)

    writer = threading.Thread(target=write_all)
    writer.start()
    writer.join(10)  # a failure bound: the writes return at once
    assert not writer.is_alive(), "a write to a stalled console blocked"
    assert dropped == [4]
    told = "[2 console lines dropped: the console's reader lagged; events.jsonl has every event]\n"
    with open(read_end, encoding="utf-8") as reader:
        assert reader.read(len(stalled)) == stalled  # the reader catches up
        assert reader.read(len("".join(kept)) + len(told)) == "".join(kept) + told
        stream.write("after\n")  # nothing is dropped while the reader keeps up
        assert stream.drain(10)
        inner.close()
        assert reader.read() == "after\n"
    assert stream.lost is None


def test_a_line_the_consoles_encoding_cannot_show_is_escaped_and_said_so_once() -> None:
    """Under PYTHONIOENCODING=ascii a non-ASCII run directory lost the console (and say() the summary) silently."""
    raw = io.BytesIO()
    inner = io.TextIOWrapper(raw, encoding="ascii", write_through=True)
    stream = ConsoleStream(inner)
    stream.write("run in /tmp/\u00fcn\u00ef\n")
    stream.write("run in /tmp/\u00fcn\u00ef\n")
    assert stream.lost is None
    lines = raw.getvalue().decode("ascii").splitlines()
    assert lines[0] == lines[2] == "run in /tmp/\\xfcn\\xef"
    assert lines[1].startswith("(the console's encoding, ascii, cannot show some characters above")
    assert len(lines) == 3
    summary = io.TextIOWrapper(io.BytesIO(), encoding="ascii", write_through=True)
    say(summary, "directory /tmp/\u00fcn\u00ef\n")
    assert summary.buffer.getvalue() == b"directory /tmp/\\xfcn\\xef\n"
