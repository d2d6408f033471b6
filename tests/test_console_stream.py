"""ConsoleStream: a console whose reader left drops its output instead of raising into the writer."""

from __future__ import annotations

import contextlib
import io
import os

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
