"""Structured logging: one structlog pipeline writing JSON lines to the run's events.jsonl and a readable console.

Every line of events.jsonl is one JSON object that carries at least ``timestamp`` (ISO 8601, UTC, ``Z`` suffix),
``level`` (debug, info, warning, error, critical), ``event`` (a snake_case name), ``run_id`` (the run the file was
configured for, unless the event names its own) and, when bound, ``actor`` and ``step``; the event's own key/value
pairs follow. ``python -m esper.tail`` reads this format.

Writes are synchronous and flushed per line so a tail sees them at once; they go to the OS page cache (no fsync),
which keeps an event in the few-microsecond range. Any thread may log; lines never interleave.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
from collections.abc import Callable, Mapping
from typing import IO, TYPE_CHECKING, Any, Final, TextIO, cast, final

import structlog

from esper.console_stream import ConsoleStream
from esper.log_file import _STAMP, _JsonLineWriter, check_log_file_free
from esper.log_file import LogFileInUse as LogFileInUse  # README's import: it lived here before log_file.py
from esper.log_levels import LEVEL_NUMBERS, is_record, parse_level
from esper.terminal import plain_terminal

if TYPE_CHECKING:
    from collections.abc import Collection, Iterator
    from pathlib import Path

    from structlog.typing import EventDict, FilteringBoundLogger, WrappedLogger

    from esper.session import EsperSystem

_CONSOLE_LOST: Final = "the console's reader is gone (a closed pipe or terminal): the run goes on, its console dropped"
_CONSOLE_DROPPED: Final = (
    "the console's reader stopped reading (a pipe nobody reads, a stopped pager): the run goes on, and console lines"
    " are dropped while it lags; this file has every event"
)
_STDOUT_LOST: Final = (
    "standard output's reader is gone (a closed pipe or terminal): the run goes on, what is printed there dropped"
)
_STDOUT_DROPPED: Final = (
    "standard output's reader stopped reading (a pipe nobody reads, a stopped pager): the run goes on, and lines"
    " printed there are dropped while it lags"
)


def _open_for_lines(path: Path) -> IO[bytes]:
    """``path`` opened to append lines; a torn last line (a crash or a full disk mid-write) is ended first, so the
    next run's first event (a resume's ``run_starting``) is not glued to it and lost with it."""
    # O_NONBLOCK: a FIFO put there after the run directory's check fails the open (ENXIO) rather than waiting
    # forever for a reader, and one with a reader is refused (it would block the run whenever the reader lags); it
    # changes nothing for a regular file or a device (/dev/null).
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK, 0o666)
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "a FIFO (named pipe), not a regular file", str(path))
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    stream = os.fdopen(fd, "ab")
    try:
        if stream.tell() > 0:
            with path.open("rb") as existing:
                existing.seek(-1, 2)
                if existing.read(1) != b"\n":
                    stream.write(b"\n")
    except BaseException:
        stream.close()
        raise
    return stream


@final
class _RecordGate:
    """A processor that drops, before any work is spent on it, an event below every output's level unless the file
    keeps it as a record (is_record): the records are logged at info, under a file level that may be above."""

    def __init__(self, min_level: int) -> None:
        self._min_level = min_level

    def __call__(self, _logger: WrappedLogger, _method_name: str, event_dict: EventDict) -> EventDict:
        below = LEVEL_NUMBERS.get(event_dict.get("level", "info"), LEVEL_NUMBERS["info"]) < self._min_level
        if below and not is_record(event_dict):
            raise structlog.DropEvent
        return event_dict


@final
class _ConsoleGate:
    """A processor that keeps from the console the events below its level (when the file takes lower ones) and the
    events another view already shows there."""

    def __init__(self, min_level: int, omit: frozenset[str]) -> None:
        self._min_level = min_level
        self._omit = omit

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        if LEVEL_NUMBERS.get(event_dict.get("level", "info"), LEVEL_NUMBERS["info"]) < self._min_level:
            raise structlog.DropEvent
        if event_dict.get("event") in self._omit:
            raise structlog.DropEvent
        return event_dict


ConsoleLine = Callable[[Mapping[str, Any]], str | None]
"""The console's line for one event's fields, or None to leave the event off the console."""


@final
class _ConsoleLines:
    """The console's last processor: the events ``lines`` names become their function's line, the rest go to
    ``renderer`` (structlog's readable key=value line)."""

    def __init__(self, renderer: structlog.dev.ConsoleRenderer, lines: Mapping[str, ConsoleLine]) -> None:
        self._renderer = renderer
        self._lines = dict(lines)

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> str:
        line = self._lines.get(str(event_dict.get("event")))
        if line is None:
            return self._renderer(logger, method_name, event_dict)
        text = line(event_dict)
        if text is None:
            raise structlog.DropEvent
        return text


def _console_trim(_logger: WrappedLogger, _method_name: str, event_dict: EventDict) -> EventDict:
    """Keep a failure's traceback (a few KB) off the console: its line names the user's frame (``user_frame``), and
    events.jsonl and ``esper.tail`` keep the frames."""
    event_dict.pop("traceback", None)
    return event_dict


@final
class LoggingHandle:
    """What configure_logging() set up: the JSON file (if any). close() flushes and closes it.

    After close() events still reach the console but are no longer written to the file. close() is idempotent.
    """

    def __init__(
        self,
        json_path: Path | None,
        writer: _JsonLineWriter | None,
        console: ConsoleStream,
        *,
        previous: dict[str, Any] | None = None,
        stdout: ConsoleStream | None = None,
    ) -> None:
        """``previous``: structlog's configuration before configure_logging (None: it was not configured).
        ``stdout``: the stream on sys.stdout whose loss and drops the file notes, until release."""
        self.json_path = json_path
        self._writer = writer
        # The console stream, for others writing to the same terminal (the progress lines): its loss is noted once.
        self.console = console
        self._stdout = stdout
        self._previous = previous
        # What configure_logging installed, until released: a configuration made since is someone else's to keep.
        self._installed: object = structlog.get_config()["processors"]

    def held_by(self, system: EsperSystem) -> None:
        """Name the run writing the file: a start refused meanwhile (LogFileInUse) hands it to its caller."""
        if self._writer is not None and self._writer.is_open:
            self._writer.running = system

    def close(self) -> None:
        """Close the JSON file; later events skip it. Safe to call twice."""
        if self._writer is not None:
            self._writer.close()

    def release(self) -> None:
        """Close the JSON file and give structlog back the configuration it had before configure_logging (the
        defaults if it had none), unless someone configured it since; the console's last lines get a bounded wait
        (DRAIN_S) to reach their reader. Safe to call twice."""
        self.close()
        self.console.forget_listeners()  # a loss or a drop from now on has no file to be noted in
        if self._stdout is not None:
            self._stdout.forget_listeners()
        if self.console.owns_writer:  # else the stream it was made on is drained by its owner (standard_consoles)
            self.console.drain()
        installed, self._installed = self._installed, None
        if installed is None or structlog.get_config()["processors"] is not installed:
            return
        if self._previous is None:
            structlog.reset_defaults()
        else:
            structlog.configure(**self._previous)

    def __enter__(self) -> LoggingHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def configure_logging(
    run_dir: Path | None,
    *,
    level: str = "info",
    console: bool = True,
    json_file: str = "events.jsonl",
    console_level: str | None = None,
    console_stream: TextIO | None = None,
    colors: bool | None = None,
    cache_loggers: bool = False,
    console_omit: Collection[str] = (),
    console_lines: Mapping[str, ConsoleLine] | None = None,
    run_id: str | None = None,
) -> LoggingHandle:
    """Configure structlog for the whole process; call once at start-up (tests call reset_logging() afterwards).

    Args:
        run_dir: directory for the JSON lines file (created if missing); None logs to the console only.
        level: minimum level for the JSON file (which keeps the records a run reads back, RECORD_EVENTS, whatever it
            says), and for the console unless ``console_level`` is given.
        console: whether to render events readably on ``console_stream``.
        json_file: the JSON lines file's name inside ``run_dir``; appended to if it exists.
        console_level: minimum level for the console (may be above or below ``level``); defaults to ``level``.
        console_stream: where the console goes; defaults to sys.stderr as it is when this is called.
        colors: colour the console; defaults to whether ``console_stream`` is a TTY.
        cache_loggers: let each logger keep the pipeline it first used (faster per event); off by default because a
            cached logger ignores a later configure_logging(), which tests and re-configuration rely on.
        console_omit: event names the console leaves to another view (the progress console's lifecycle lines show
            the telemetry events that matter readably); the JSON file still gets them.
        console_lines: event names the console shows as the line their function makes of the event's fields (in the
            progress console's style) instead of a structured line, or not at all where it returns None (another
            view shows it); the JSON file gets them as any other.
        run_id: the run the JSON file is for: each of its lines that names no run of its own carries it (this
            configuration's, so each run of a process that runs several in turn stamps its own).

    Returns:
        The handle whose close() closes the file.

    Raises:
        ValueError: ``level`` or ``console_level`` is not a level name.
        OSError: the run directory or the file cannot be created.
        LogFileInUse: the current configuration still writes another run's event file (see check_log_file_free).
    """
    file_level = LEVEL_NUMBERS[parse_level(level)]
    screen_level = LEVEL_NUMBERS[parse_level(console_level, parameter="console_level")] if console_level else file_level
    check_log_file_free()
    previous = structlog.get_config() if structlog.is_configured() else None

    writer: _JsonLineWriter | None = None
    json_path: Path | None = None

    def notes(
        named: dict[str, str], lost_detail: str, dropped_detail: str
    ) -> tuple[Callable[[BaseException], None], Callable[[int], None]]:
        """A console's loss and first drop, noted in the file once it is open (``named``: which stream, if not the
        console's)."""

        def lost(err: BaseException) -> None:
            if writer is not None:
                error = f"{type(err).__name__}: {err}"
                writer.note("warning", "console_lost", **named, error=error, detail=lost_detail)

        def dropped(queued: int) -> None:
            if writer is not None:
                writer.note("warning", "console_lines_dropped", **named, queued=queued, detail=dropped_detail)

        return lost, dropped

    console_lost, console_dropped = notes({}, _CONSOLE_LOST, _CONSOLE_DROPPED)
    stdout_lost, stdout_dropped = notes({"stream": "stdout"}, _STDOUT_LOST, _STDOUT_DROPPED)

    given = console_stream if console_stream is not None else sys.stderr
    stream = ConsoleStream(given, console_lost, console_dropped)
    # Under the command line stdout is queued too (the user's prints): its loss and drops are noted as well, unless
    # it shares the console's writer (one terminal), whose notes cover both.
    stdout: ConsoleStream | None = None
    if isinstance(sys.stdout, ConsoleStream) and not sys.stdout.shares_writer_with(stream):
        stdout = ConsoleStream(sys.stdout, stdout_lost, stdout_dropped)
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        json_path = run_dir / json_file
        writer = _JsonLineWriter(_open_for_lines(json_path), file_level, json_path, stream, run_id)
        # A reader gone before the log opened (``| head -1`` that saw a start-up line) is noted all the same.
        if given is not None and stream.lost is not None:
            console_lost(stream.lost)
        if stdout is not None and stdout.lost is not None:
            stdout_lost(stdout.lost)

    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
    ]
    levels = [rank for rank, used in ((file_level, writer is not None), (screen_level, console)) if used]
    # Calls below every output's level are no-ops; with no output at all only critical events are built, then dropped.
    floor = min(levels, default=LEVEL_NUMBERS["critical"])
    if writer is not None and floor > LEVEL_NUMBERS["info"]:
        # The records the run reads back are logged at info: they reach the file, the rest below the floor does not.
        processors.append(_RecordGate(floor))
        floor = LEVEL_NUMBERS["info"]
    processors += [_STAMP, structlog.processors.StackInfoRenderer()]
    if writer is not None:
        processors.append(writer)
    logger_factory: structlog.WriteLoggerFactory | structlog.ReturnLoggerFactory
    if console:
        if screen_level > floor or console_omit:
            processors.append(_ConsoleGate(screen_level, frozenset(console_omit)))
        processors.append(_console_trim)
        use_colors = colors if colors is not None else stream.isatty() and not plain_terminal()
        # Plain tracebacks: the rich formatter prints local variables, and a run's secrets must never reach a log.
        renderer = structlog.dev.ConsoleRenderer(colors=use_colors, exception_formatter=structlog.dev.plain_traceback)
        processors.append(_ConsoleLines(renderer, console_lines) if console_lines else renderer)
        logger_factory = structlog.WriteLoggerFactory(file=cast("TextIO", stream))
    else:
        # Nothing to render: hand the dict to a logger that returns it, cheaper than raising DropEvent per event.
        logger_factory = structlog.ReturnLoggerFactory()
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(floor),
        logger_factory=logger_factory,
        cache_logger_on_first_use=cache_loggers,
    )
    return LoggingHandle(json_path, writer, stream, previous=previous, stdout=stdout)


def reset_logging() -> None:
    """Forget the configuration and every bound contextvar; for tests, so they share no logging state."""
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


def get_logger() -> FilteringBoundLogger:
    """A logger using the current configuration (resolved on each call, so reconfiguring takes effect)."""
    logger: FilteringBoundLogger = structlog.get_logger()
    return logger


def _context_items(actor: str | None, run_id: str | None, step: int | None) -> dict[str, str | int]:
    items: dict[str, str | int] = {}
    if actor is not None:
        items["actor"] = actor
    if run_id is not None:
        items["run_id"] = run_id
    if step is not None:
        items["step"] = step
    return items


def bind_log_context(*, actor: str | None = None, run_id: str | None = None, step: int | None = None) -> None:
    """Bind actor / run_id / step for every later event in this context (an asyncio task copies it at creation)."""
    structlog.contextvars.bind_contextvars(**_context_items(actor, run_id, step))


@contextlib.contextmanager
def log_context(*, actor: str | None = None, run_id: str | None = None, step: int | None = None) -> Iterator[None]:
    """Bind actor / run_id / step inside a with block, restoring the previous values after it."""
    with structlog.contextvars.bound_contextvars(**_context_items(actor, run_id, step)):
        yield
