"""The JSON-lines event file's writer (a structlog processor) and the guard against two runs sharing it."""

from __future__ import annotations

import contextlib
import threading
from typing import IO, TYPE_CHECKING, Final, final

import msgspec
import structlog

from esper.log_levels import LEVEL_NUMBERS, LogLevel, is_record
from esper.runtime.errors import EsperError

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

    from structlog.typing import EventDict, Processor, WrappedLogger

    from esper.console_stream import ConsoleStream
    from esper.session import EsperSystem


_LEADING_KEYS: Final = ("timestamp", "level", "event", "actor", "run_id", "step")

# Values structlog callers pass that msgspec cannot encode (exceptions, arbitrary objects) are written as str().
_ENCODER: Final = msgspec.json.Encoder(enc_hook=str)
_STAMP: Final = structlog.processors.TimeStamper(fmt="iso", utc=True)


@final
class _JsonLineWriter:
    """A processor that appends each event dict to a file as one JSON line, flushed, and passes the dict on.

    A write that fails (a full disk) closes the file and says so once on ``notice``; the events after it still reach
    the console. A logging call never raises into its caller: the supervisor logging a failure must not fail itself.
    """

    def __init__(
        self, stream: IO[bytes], min_level: int, path: Path, notice: ConsoleStream, run_id: str | None = None
    ) -> None:
        self._stream = stream
        # Stamped here, in the file alone: users merge several runs' logs, and the console needs no id per line.
        self._run_id = run_id
        self._min_level = min_level
        self._lock = threading.Lock()
        self._closed = False
        self._path = path
        self._notice = notice
        # The run writing this file, once its handle exists: a caller that lost the handle (a sweep's timeout
        # cancelled its wait) reaches it through LogFileInUse. Structlog's configuration, which holds this writer, is
        # already process-wide, so no registry of runs is needed.
        self.running: EsperSystem | None = None

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        level = event_dict.get("level", "info")
        if LEVEL_NUMBERS.get(level, LEVEL_NUMBERS["info"]) < self._min_level and not is_record(event_dict):
            return event_dict
        ordered: dict[str, object] = {}
        for key in _LEADING_KEYS:
            if key == "run_id" and event_dict.get(key) is None and self._run_id is not None:
                ordered[key] = self._run_id  # a message's run_id field left unset (None) names no run either
            elif key in event_dict:
                ordered[key] = event_dict[key]
        for key, value in event_dict.items():
            if key not in ordered:
                ordered[key] = value
        if "exc_info" in ordered:
            # Format on a copy: the console renderer formats exc_info itself and warns if someone already has.
            ordered = dict(structlog.processors.format_exc_info(logger, method_name, ordered))
        line = _ENCODER.encode(ordered) + b"\n"
        failed: OSError | None = None
        with self._lock:
            if not self._closed:
                try:
                    self._stream.write(line)
                    self._stream.flush()
                except OSError as err:
                    failed = err
                    self._fail()
        if failed is not None:
            self._tell(failed)
        return event_dict

    def _fail(self) -> None:
        """Close the file for good (under the lock)."""
        self._closed = True
        with contextlib.suppress(OSError):  # closing flushes what is buffered, which fails the same way
            self._stream.close()

    def _tell(self, err: OSError) -> None:
        """Say on the console that the file failed. Never under the lock: the console's first line dropped calls
        note() (console_lines_dropped) in this thread, which takes the lock again."""
        with contextlib.suppress(OSError, ValueError):
            self._notice.write(
                f"{self._path}: cannot write the event log ({err.strerror or err}); later events reach the console"
                " only\n"
            )

    def note(self, level: LogLevel, event: str, **fields: object) -> None:
        """Write one event to the file alone (not the console): for what the console itself cannot show."""
        stamped = _STAMP(None, level, {"event": event, "level": level, **fields})
        self(None, level, stamped)

    @property
    def path(self) -> Path:
        return self._path

    @property
    def is_open(self) -> bool:
        return not self._closed

    def close(self) -> None:
        self.running = None  # the run has ended: nothing to reach, and its object graph may be collected
        failed: OSError | None = None
        with self._lock:
            if not self._closed:
                self._closed = True
                try:
                    self._stream.close()
                except OSError as err:
                    failed = err
        if failed is not None:
            self._tell(failed)


class LogFileInUse(EsperError):
    """The process's logging still writes a run's event file: structlog's configuration is process-wide, so a second
    run configured now would take that run's events into its own file.

    ``running`` is that run's handle (None while it is still starting, or for a configuration made outside a run):
    ``await err.running.stop()`` ends a run whose handle the caller no longer holds (a sweep's timeout cancelled
    ``await system.wait()``, which leaves the run going).
    """

    def __init__(self, message: str, running: EsperSystem | None = None) -> None:
        super().__init__(message)
        self.running = running


@final
class _StartReservation:
    """A pass-through processor whose presence in the configuration says a run of this process is starting: it keeps
    the log file's place across the awaits of the start's checks, before the run's own logging is configured."""

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        return event_dict


@final
class LogFileReservation:
    """The place of a run that is starting, taken by ``reserve_log_file``; ``release`` gives it back (call it right
    before configuring the run's logging, with no await between, or when the start fails before that)."""

    def __init__(self) -> None:
        self._was_configured = structlog.is_configured()
        # The caller's own list object comes back, not a copy: a LoggingHandle (or a user) tells whether the
        # configuration was replaced since by its identity.
        self._saved: Iterable[Processor] = structlog.get_config()["processors"]
        self._installed: list[Processor] = [_StartReservation(), *self._saved]
        structlog.configure(processors=self._installed)

    def release(self) -> None:
        if structlog.get_config()["processors"] is not self._installed:
            return  # released already, or the configuration was replaced since (a test's reset)
        if self._was_configured:
            structlog.configure(processors=self._saved)
        else:
            structlog.reset_defaults()


def reserve_log_file() -> LogFileReservation:
    """check_log_file_free, then hold the place for this run: two starts awaited at once in one process both passed
    the check before either logged, and the refused one left its run directory behind.

    Raises:
        LogFileInUse: another run in this process is going or starting.
    """
    check_log_file_free()
    return LogFileReservation()


def check_log_file_free() -> None:
    """Raise LogFileInUse while the current configuration writes an event file that has not been closed (a run in
    this process is still going: its handle closes the file when the run ends) or another run is starting.

    Raises:
        LogFileInUse: naming the file.
    """
    for processor in structlog.get_config()["processors"]:
        if isinstance(processor, _StartReservation):
            raise LogFileInUse(
                "another run in this process is still starting; its events would mix with this run's: let its start"
                " finish, then stop it (await system.stop()) or wait for it (await system.wait()) first"
            )
        if isinstance(processor, _JsonLineWriter) and processor.is_open:
            running = processor.running
            if running is None:  # still starting: no handle exists yet
                reach, how = "", "let its start finish, then stop it (await system.stop()) or wait for it"
            else:
                reach = f" (run {running.run_id}: this error's .running is its handle)"
                how = "stop it (await system.stop(), or await err.running.stop() without its handle) or wait for it"
            raise LogFileInUse(
                f"another run in this process{reach} is still logging to {processor.path}; its events would mix with"
                f" this run's: {how} (await system.wait()) first",
                running,
            )
