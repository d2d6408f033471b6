"""ConsoleStream: a console whose reader left drops its output instead of raising into the writer."""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import select
import sys
import threading
from typing import Any

import pytest

from esper.cli_process import say
from esper.console_stream import ConsoleStream, standard_consoles


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


def test_bytes_are_refused_at_the_write_and_the_lines_after_still_reach_the_reader() -> None:
    """``sys.stdout.write(b"...")`` (a user's mistake) returned as if written and killed the writer thread: every
    later line was lost unsaid (the run's summary, exit 0) and the end's drain waited its full time."""
    read_end, write_end = os.pipe()
    inner = open(write_end, "w", encoding="utf-8")
    stream = ConsoleStream(inner)
    with pytest.raises(TypeError, match=r"^write\(\) argument must be str, not bytes$"):
        stream.write(b"bytes\n")  # type: ignore[arg-type]
    stream.write("after\n")
    assert stream.drain(10)
    assert stream.lost is None
    inner.close()
    with open(read_end, encoding="utf-8") as reader:
        assert reader.read() == "after\n"


def test_an_unexpected_error_in_the_writer_thread_loses_the_stream_said_rather_than_ending_the_thread_unsaid() -> None:
    read_end, write_end = os.pipe()

    class Faulty(io.TextIOWrapper):
        def write(self, _text: str) -> int:
            raise RuntimeError("a fault of the stream's own")

    inner = Faulty(open(write_end, "wb"), encoding="utf-8")
    lost: list[BaseException] = []
    stream = ConsoleStream(inner, lost.append)
    stream.write("line\n")
    assert stream.drain(10)  # nothing left waiting on a thread that died
    assert isinstance(stream.lost, RuntimeError)
    assert lost == [stream.lost]
    stream.write("dropped\n")  # a lost stream drops its lines without raising
    assert stream.drain(10)
    inner.close()
    os.close(read_end)


def test_what_a_console_stream_lacks_is_its_streams_own() -> None:
    """User code calling ``sys.stdout.reconfigure(...)`` or ``sys.stdout.buffer.write(...)`` worked before
    ``python -m esper.run`` made sys.stdout a ConsoleStream, then raised AttributeError."""
    raw = io.BytesIO()
    inner = io.TextIOWrapper(raw, encoding="utf-8", errors="replace", write_through=True)
    stream: Any = ConsoleStream(inner)  # as user code sees sys.stdout: the type checker knows nothing of it
    assert stream.buffer is raw
    assert stream.errors == "replace"
    stream.reconfigure(line_buffering=True)
    assert stream.line_buffering
    stream.buffer.write(b"raw\n")
    assert raw.getvalue() == b"raw\n"
    named: Any = ConsoleStream(open(os.devnull, "w", encoding="utf-8"))
    assert (named.name, named.mode) == (os.devnull, "w")
    named.close()
    named.inner.close()
    with pytest.raises(AttributeError):
        stream.no_such_attribute  # noqa: B018 - the lookup is the test


class _Recorder(io.TextIOWrapper):
    """A stream on a real descriptor (so its ConsoleStream queues) that records its writes in ``log`` and whose
    first write waits for ``go``: the other stream's lines are written meanwhile."""

    def __init__(self, name: str, log: list[str], entered: threading.Event, go: threading.Event) -> None:
        super().__init__(open(os.devnull, "wb"), encoding="utf-8")
        self._name, self._log, self._entered, self._go = name, log, entered, go

    def write(self, text: str) -> int:
        if not self._entered.is_set():
            self._entered.set()
            assert self._go.wait(10)
        self._log.append(f"{self._name}: {text}")
        return len(text)

    def flush(self) -> None:
        self._log.append(f"{self._name} flushed")


def test_two_streams_on_one_file_write_in_the_order_their_lines_were_written() -> None:
    """stdout and stderr on one terminal had a writer thread each: a stderr line could come before the stdout line
    written ahead of it. Made ``writer_of`` the other, they share one queue, each flushed before the other's turn."""
    log: list[str] = []
    entered, go = threading.Event(), threading.Event()
    out = ConsoleStream(_Recorder("out", log, entered, go))
    err = ConsoleStream(_Recorder("err", log, entered, go), writer_of=out)
    assert err.shares_writer_with(out)
    out.write("one\n")
    assert entered.wait(10)  # the writer thread is in the first write, waiting
    err.write("two\n")
    out.write("three\n")
    out.write("four\n")
    go.set()
    assert err.drain(10)
    assert log == [
        "out: one\n",
        "out flushed",
        "err: two\n",
        "err flushed",
        "out: three\nfour\n",
        "out flushed",
    ]
    for stream in (out, err):
        stream.inner.close()


def _standard() -> tuple[object, object]:
    return sys.stdout, sys.stderr


def test_standard_consoles_share_one_writer_exactly_when_stdout_and_stderr_are_one_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    read_end, write_end = os.pipe()
    other_read, other_write = os.pipe()
    one = open(write_end, "w", encoding="utf-8")
    same = open(os.dup(write_end), "w", encoding="utf-8")  # another descriptor on that pipe, as 2>&1 makes
    other = open(other_write, "w", encoding="utf-8")
    for stdout, stderr, shared in ((one, same, True), (one, other, False)):
        monkeypatch.setattr(sys, "stdout", stdout)
        monkeypatch.setattr(sys, "stderr", stderr)
        with standard_consoles():
            assert isinstance(sys.stdout, ConsoleStream)
            assert isinstance(sys.stderr, ConsoleStream)
            assert sys.stdout.shares_writer_with(sys.stderr) is shared
            sys.stdout.write("out\n")
            sys.stderr.write("err\n")
        assert _standard() == (stdout, stderr)  # drained, and given back
    for stream in (one, same, other):
        stream.close()
    with open(read_end, encoding="utf-8") as reader, open(other_read, encoding="utf-8") as other_reader:
        assert reader.read() == "out\nerr\nout\n"
        assert other_reader.read() == "err\n"
