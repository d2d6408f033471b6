"""A console stream that never holds up the run: written by a thread of its own, dropped when its reader is gone."""

from __future__ import annotations

import collections
import contextlib
import io
import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Final, final

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import TextIO

__all__ = ["DRAIN_S", "QUEUE_WRITES", "ConsoleStream", "drain_standard_consoles", "standard_consoles", "write_shown"]

QUEUE_WRITES: Final = 4096
"""Writes held for a reader that lags (a few hundred KB of lines); beyond, the newest are dropped."""
DRAIN_S: Final = 2.0
"""How long the end of a run waits for its last lines to reach a reader that lags; a stalled one never gets them."""
_IDLE_S: Final = 5.0  # the writer thread ends after this long with nothing to write (the next write starts another)


def write_shown(stream: TextIO | ConsoleStream, text: str) -> bool:
    """``stream.write(text)``; where its encoding cannot show a character (PYTHONIOENCODING=ascii and a non-ASCII
    path), the line is written with that character as a backslash escape, never lost (a strict stream raised, and
    sys.stderr escapes unasked). Returns whether it was escaped."""
    encoding = getattr(stream, "encoding", None)
    if isinstance(encoding, str) and not isinstance(stream, ConsoleStream):  # that one escapes as it writes
        try:
            text.encode(encoding)
        except UnicodeEncodeError:
            stream.write(text.encode(encoding, "backslashreplace").decode(encoding))
            return True
        except LookupError:  # no codec of that name: the stream says what it does with the text
            pass
    stream.write(text)
    return False


def _escape_note(stream: TextIO, text: str) -> str:
    encoding = getattr(stream, "encoding", None) or "ascii"
    lead = "" if text.endswith("\n") else "\n"
    return (
        f"{lead}(the console's encoding, {encoding}, cannot show some characters above: they are shown as backslash"
        " escapes, so a path there is not the real one; PYTHONIOENCODING=utf-8 shows them)\n"
    )


@final
class _Writer:
    """The one writer of a stream (or of two on one file: stdout and stderr on a terminal): in the caller's thread for
    a stream with no file descriptor (a StringIO cannot block), else through a bounded queue and a daemon thread, so a
    reader that stops reading (a full pipe) stalls that thread alone. The queue holds each write with its stream, so
    two streams sharing it keep the order their lines were written in."""

    def __init__(self, *, queued: bool, capacity: int) -> None:
        self._capacity = capacity
        self.lost: BaseException | None = None
        self.lost_listeners: list[Callable[[BaseException], None]] = []
        self.drop_listeners: list[Callable[[int], None]] = []
        self._queued = queued
        self._cond = threading.Condition()  # an RLock: a signal handler that drains may run inside a write
        self._items: collections.deque[tuple[TextIO, str]] = collections.deque()
        self._busy = False  # the thread holds a batch it has not finished writing
        self._thread: threading.Thread | None = None
        self._dropped = 0  # writes dropped since the console last said so
        self._dropped_total = 0
        self._escaped: list[TextIO] = []  # the streams whose escapes have been said (once each)

    def write(self, target: TextIO, text: str) -> None:
        if self.lost is not None:
            return
        if not self._queued:
            with self._cond:
                self._write_through(target, text, flush=False)
            return
        first = False
        with self._cond:
            if len(self._items) >= self._capacity:
                self._dropped += 1
                self._dropped_total += 1
                first = self._dropped_total == 1
            else:
                self._items.append((target, text))
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="esper-console", daemon=True)
                    self._thread.start()
                self._cond.notify_all()
        if first:
            for listener in list(self.drop_listeners):
                listener(self._capacity)

    def flush(self, target: TextIO) -> None:
        if self.lost is None and not self._queued:
            with self._cond:
                self._flush_through(target)

    def drain(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for every write so far to reach the stream; whether they all did (or it is lost)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while (self._items or self._busy) and self.lost is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def _run(self) -> None:
        try:
            while self._write_next():
                pass
        except Exception as err:  # noqa: BLE001 - a thread that died unsaid lost every later line and held each drain
            self._lose(err)
            with self._cond:
                self._items.clear()
                self._busy = False
                self._thread = None
                self._cond.notify_all()

    def _write_next(self) -> bool:
        """Write the queued lines; whether the thread goes on (not idle for _IDLE_S, nor lost)."""
        with self._cond:
            if not self._items:
                self._cond.wait_for(lambda: bool(self._items), _IDLE_S)
            if not self._items:
                self._thread = None  # idle: the next write starts another thread
                return False
            batch = list(self._items)
            self._items.clear()
            dropped, self._dropped = self._dropped, 0
            self._busy = True
        # Consecutive writes to one stream are written together, each stream flushed before the other's turn.
        runs: list[tuple[TextIO, list[str]]] = []
        for target, text in batch:
            if runs and runs[-1][0] is target:
                runs[-1][1].append(text)
            else:
                runs.append((target, [text]))
        if dropped:  # each dropped while the queue was full: after every line it holds
            runs[-1][1].append(
                f"[{dropped} console lines dropped: the console's reader lagged; events.jsonl has every event]\n"
            )
        for target, texts in runs:
            self._write_through(target, "".join(texts), flush=True)
        with self._cond:
            self._busy = False
            self._cond.notify_all()
            if self.lost is not None:
                self._items.clear()
                self._thread = None
                return False
        return True

    def _write_through(self, target: TextIO, text: str, *, flush: bool) -> None:
        if self.lost is not None:
            return
        try:
            if write_shown(target, text) and not any(told is target for told in self._escaped):
                self._escaped.append(target)
                target.write(_escape_note(target, text))
            if flush:
                target.flush()
        except (OSError, ValueError) as err:  # ValueError: the stream was closed under us
            self._lose(err)

    def _flush_through(self, target: TextIO) -> None:
        try:
            target.flush()
        except (OSError, ValueError) as err:
            self._lose(err)

    def _lose(self, err: BaseException) -> None:
        with self._cond:
            if self.lost is not None:
                return
            self.lost = err
            self._cond.notify_all()
        for listener in list(self.lost_listeners):
            listener(err)


def _has_fd(stream: object) -> bool:
    try:
        return isinstance(stream.fileno(), int)  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        return False


def _same_file(one: object, other: object) -> bool:
    """Whether both streams have a file descriptor and the two are one file (one terminal, pipe or file)."""
    if not (_has_fd(one) and _has_fd(other)):
        return False
    try:
        return os.path.samestat(os.fstat(one.fileno()), os.fstat(other.fileno()))  # type: ignore[attr-defined]
    except OSError:
        return False


@final
class ConsoleStream(io.TextIOBase):
    """Writes through to ``inner`` until a write or flush fails, then drops every later write; never blocks.

    The console is a view of the run, not part of it: ``python -m esper.run config.toml | head`` (the pipe's reader
    leaves: EPIPE), a terminal that closed (EIO) or a redirect onto a full disk must not stop training, and a logging
    call must not raise into the actor that made it. Neither may a reader that stops reading (a parent that never
    reads its ``stderr=PIPE``, a stopped pager): on a file descriptor the lines go through a bounded queue to a thread
    that writes them in order, and when the queue is full the newest are dropped (the console says how many once the
    reader catches up).

    ``on_lost`` is called once, with the error, when the stream is lost; ``on_dropped`` once, with the queue's size
    (``capacity`` writes), at the first line dropped. Either may be called from the writer thread, or from the thread
    whose write found the queue full: they may record it elsewhere but must not log to this console (structlog holds
    its lock meanwhile).

    A ConsoleStream made on another one shares its writer (one queue keeps their lines in order) and hears its loss;
    so does one made with ``writer_of`` another (stdout and stderr on one terminal), though it writes to its own
    ``inner``.

    Attributes it lacks (``buffer``, ``reconfigure``, ``name``, ``line_buffering`` ...) are ``inner``'s: what user code
    did with sys.stdout before it was a ConsoleStream still works. What goes that way skips the queue: a write through
    ``.buffer`` may reach the reader before lines still queued, and waits for a reader that stalls, as it always did.
    """

    def __init__(
        self,
        inner: TextIO | ConsoleStream | None,
        on_lost: Callable[[BaseException], None] | None = None,
        on_dropped: Callable[[int], None] | None = None,
        *,
        capacity: int = QUEUE_WRITES,
        writer_of: ConsoleStream | None = None,
    ) -> None:
        super().__init__()
        self._inner: TextIO | ConsoleStream
        self._target: TextIO  # the plain stream the lines are written to
        self._writer: _Writer
        if isinstance(inner, ConsoleStream):
            self._inner = inner
            self._target = inner._target
            self._writer = inner._writer
        else:
            self._inner = self._target = inner if inner is not None else io.StringIO()
            if writer_of is not None:
                self._writer = writer_of._writer
            else:
                self._writer = _Writer(queued=inner is not None and _has_fd(inner), capacity=capacity)
                if inner is None:
                    # No stream at all (the process was started with it closed, sys.stderr None): lost from the start,
                    # unsaid.
                    self._writer.lost = OSError("no console stream")
        self._owns_writer = not isinstance(inner, ConsoleStream) and writer_of is None
        self._listening = (on_lost, on_dropped)
        if on_lost is not None:
            self._writer.lost_listeners.append(on_lost)
        if on_dropped is not None:
            self._writer.drop_listeners.append(on_dropped)

    @property
    def lost(self) -> BaseException | None:
        """The error that ended the console, or None while it works."""
        return self._writer.lost

    @property
    def inner(self) -> TextIO | ConsoleStream:
        return self._inner

    @property
    def owns_writer(self) -> bool:
        """Whether this stream was made on a plain stream with a writer of its own, not on another ConsoleStream nor
        with ``writer_of`` one (whose writer it shares)."""
        return self._owns_writer

    def shares_writer_with(self, other: ConsoleStream) -> bool:
        """Whether the two write through one writer (one queue, one loss, one drop said)."""
        return self._writer is other._writer

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            # Refused here, as a TextIOWrapper does: queued, it killed the writer thread, and every later line with it.
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self._writer.write(self._target, text)
        return len(text)

    def flush(self) -> None:
        """Written through on a stream without a file descriptor; otherwise the writer thread flushes each batch."""
        self._writer.flush(self._target)

    def drain(self, timeout_s: float = DRAIN_S) -> bool:
        """Wait up to ``timeout_s`` for the lines written so far to reach the stream; whether they all did."""
        return self._writer.drain(timeout_s)

    def forget_listeners(self) -> None:
        """Stop calling this stream's ``on_lost`` and ``on_dropped`` (its run has ended; the writer may live on)."""
        on_lost, on_dropped = self._listening
        with contextlib.suppress(ValueError):
            if on_lost is not None:
                self._writer.lost_listeners.remove(on_lost)
        with contextlib.suppress(ValueError):
            if on_dropped is not None:
                self._writer.drop_listeners.remove(on_dropped)

    def fileno(self) -> int:
        return self._target.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]  # TextIOBase declares it a plain attribute
        return str(getattr(self._target, "encoding", None) or "utf-8")

    @property
    def errors(self) -> str | None:  # type: ignore[override]  # TextIOBase declares it a plain attribute
        errors = getattr(self._target, "errors", None)
        return errors if isinstance(errors, str) else None

    if not TYPE_CHECKING:  # at run time only: to the type checker a misspelt attribute stays an error

        def __getattr__(self, name: str) -> object:
            if name.startswith("_"):  # this object's own (looked up before __init__ has set them): never the inner's
                raise AttributeError(name)
            return getattr(self._target, name)

    def isatty(self) -> bool:
        if self.lost is not None:
            return False
        try:
            return self._target.isatty()
        except (OSError, ValueError):
            return False

    def writable(self) -> bool:
        return True


@contextlib.contextmanager
def standard_consoles(timeout_s: float = DRAIN_S) -> Iterator[None]:
    """sys.stdout and sys.stderr as ConsoleStreams for the block (the command line's run): nothing written to them
    blocks, and at the end their lines get ``timeout_s`` in all to reach their readers. A stream whose reader has
    stalled stays a ConsoleStream: flushing the original would wait, for good, behind the write stuck in its thread."""
    originals = (sys.stdout, sys.stderr)
    out = ConsoleStream(originals[0]) if originals[0] is not None else None
    # On one file (a terminal, ``2>&1``) two writer threads could put a line of stderr before the stdout line written
    # ahead of it: there one writer, whose queue keeps the order, writes both.
    shared = out if out is not None and _same_file(originals[0], originals[1]) else None
    err = ConsoleStream(originals[1], writer_of=shared) if originals[1] is not None else None
    consoles = (out, err)
    sys.stdout, sys.stderr = consoles
    try:
        yield
    finally:
        deadline = time.monotonic() + timeout_s
        drained = [console is None or console.drain(max(0.0, deadline - time.monotonic())) for console in consoles]
        if sys.stdout is consoles[0] and drained[0]:
            sys.stdout = originals[0]
        if sys.stderr is consoles[1] and drained[1]:
            sys.stderr = originals[1]


def drain_standard_consoles(timeout_s: float) -> None:
    """Give the lines queued on sys.stdout and sys.stderr up to ``timeout_s`` in all, before an os._exit."""
    deadline = time.monotonic() + timeout_s
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, ConsoleStream):
            stream.drain(max(0.0, deadline - time.monotonic()))
