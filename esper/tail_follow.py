"""Reading a growing log file from coroutines: complete lines only, across late creation, truncation and rotation.

A pipe or a terminal is read as a stream, to its end."""

from __future__ import annotations

import os
import stat as stat_module
from typing import TYPE_CHECKING, Final, final

import aiofiles
import aiofiles.os

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from pathlib import Path
    from types import TracebackType

    from aiofiles.threadpool.binary import AsyncBufferedReader

MAX_LINE_BYTES: Final = 16 << 20
"""The longest line a LineReader hands out; an event line is a few hundred bytes, a traceback's a few kilobytes."""
SKIPPED_LINE: Final = "<line over the length limit skipped>"
"""Handed out in place of a line longer than the limit: no JSON, so the tail counts it as a malformed line."""


@final
class LineReader:
    """Reads the complete lines of a file that may not exist yet, may grow, and may be truncated or replaced.

    A line is complete once its newline has been read; the bytes after the last newline wait in ``pending`` until the
    rest arrives. A line longer than ``max_line_bytes`` is not held: its bytes are dropped as they arrive and it is
    handed out as ``SKIPPED_LINE`` once its newline is read (``skipped`` counts these). When the file is truncated
    (shorter than what was read) or replaced (the path names another file), the pending bytes are handed out as a
    final line of the old content and reading restarts at the new file's start.
    Truncation followed by regrowth past the old size before the next read is not detectable, as with ``tail -F``.

    A pipe, a socket or a terminal (``/dev/stdin``) is a stream: it cannot be truncated or replaced, and its end is
    final (``ended``). With ``follow`` a read of one returns at once when nothing is there (the follower polls), else
    it waits for data or the end. Anything else that is not a regular file (``/dev/zero``) is refused: reading it
    would never end.

    File I/O runs on aiofiles' worker threads (a followed stream's reads do not block), so the event loop never
    blocks. Event-loop only; not thread-safe.
    """

    def __init__(
        self, path: Path, *, chunk_bytes: int = 1 << 20, follow: bool = False, max_line_bytes: int = MAX_LINE_BYTES
    ) -> None:
        if chunk_bytes <= 0:
            raise ValueError(f"chunk_bytes must be > 0, got {chunk_bytes}")
        if max_line_bytes <= 0:
            raise ValueError(f"max_line_bytes must be > 0, got {max_line_bytes}")
        self.path = path
        """The file read; the caller may point it elsewhere while ``opened`` is False (the name became known)."""
        self._chunk_bytes = chunk_bytes
        self._follow = follow
        self._file: AsyncBufferedReader | None = None
        self._identity: tuple[int, int] | None = None
        self._position = 0
        self._max_line_bytes = max_line_bytes
        # The unfinished line as the chunks it arrived in: joined once when its newline comes, so a line spanning
        # many chunks costs linear work (re-joining it per chunk was quadratic).
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._overlong = False
        """Whether the unfinished line has passed ``max_line_bytes``: its bytes are dropped until its newline."""
        self.skipped = 0
        """Lines longer than ``max_line_bytes`` handed out as SKIPPED_LINE."""
        self.truncations = 0
        self.reopens = 0
        self.stream = False
        """Whether the file opened is a pipe, a socket or a terminal."""
        self.ended = False
        """Whether a stream has reached its end (its writer closed it)."""
        self.at_end = False
        """Whether the last read_available() reached the end of the file (or found no file)."""

    @property
    def opened(self) -> bool:
        return self._file is not None

    @property
    def pending(self) -> bytes:
        """Bytes read after the last newline and held: a line still being written (none once it is over the limit)."""
        return b"".join(self._pending)

    @property
    def held_bytes(self) -> int:
        """How many bytes of the unfinished line are held (at most ``max_line_bytes``)."""
        return self._pending_bytes

    def take_pending(self) -> str | None:
        """Hand out the pending partial line (at the end of reading) and forget it; None if there is none."""
        if self._overlong:
            self._overlong = False
            self.skipped += 1
            return SKIPPED_LINE
        pending = self.pending
        self._pending, self._pending_bytes = [], 0
        return _decode(pending) if pending else None

    async def read_available(self, *, missing_ok: bool = True) -> list[str]:
        """The complete lines written since the last call (at most about ``chunk_bytes`` of them); [] if none.

        Args:
            missing_ok: when the file does not exist yet, return [] (True) or raise FileNotFoundError (False).

        Raises:
            OSError: the file cannot be opened or read (FileNotFoundError only when ``missing_ok`` is False;
                IsADirectoryError for a directory; NotReadableError for a device that is not a stream).

        Cancellation: a cancel while a read is in flight loses that chunk; stop using the reader afterwards.
        """
        lines: list[str] = []
        self.at_end = True
        if self._file is None:
            if not await self._open(missing_ok=missing_ok):
                return lines
        elif not self.stream:
            lines.extend(await self._follow_path())
        file = self._file
        if file is None:  # replaced by a path that vanished again before it could be opened
            return lines
        if self.stream and self._follow:
            try:
                data = os.read(file.fileno(), self._chunk_bytes)  # non-blocking: a quiet pipe must not hold a thread
            except BlockingIOError:
                return lines
        else:
            data = await file.read(self._chunk_bytes)
        self.ended = self.stream and not data
        self._position += len(data)
        self.at_end = len(data) < self._chunk_bytes
        lines.extend(self._split(data))
        return lines

    async def aclose(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            await file.close()

    async def __aenter__(self) -> LineReader:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _open(self, *, missing_ok: bool) -> bool:
        try:
            file = await aiofiles.open(self.path, "rb")
        except FileNotFoundError:
            if missing_ok:
                return False
            raise
        stat = await aiofiles.os.stat(file.fileno())
        kind = stat.st_mode
        stream = stat_module.S_ISFIFO(kind) or stat_module.S_ISSOCK(kind) or os.isatty(file.fileno())
        if not stat_module.S_ISREG(kind) and not stream:
            await file.close()
            raise NotReadableError(self.path)
        if stream and self._follow:
            os.set_blocking(file.fileno(), False)  # this open's own descriptor: the shell's stdin is untouched
        self._file, self._identity, self._position, self.stream = file, (stat.st_dev, stat.st_ino), 0, stream
        return True

    async def _follow_path(self) -> list[str]:
        """Notice truncation or replacement of the path; returns the old file's last lines when it was replaced."""
        assert self._file is not None
        try:
            stat: os.stat_result | None = await aiofiles.os.stat(self.path)
        except FileNotFoundError:
            stat = None  # removed: keep the old handle until a new file appears at the path
        if stat is None:
            return []
        if (stat.st_dev, stat.st_ino) != self._identity:
            # Replaced (rotated): finish the old file, then start the new one from its first byte.
            lines: list[str] = []
            while data := await self._file.read(self._chunk_bytes):
                lines.extend(self._split(data))
            lines.extend(self._flush_pending())
            await self.aclose()
            self.reopens += 1
            await self._open(missing_ok=True)
            return lines
        if stat.st_size < self._position:
            self.truncations += 1
            await self._file.seek(0)
            self._position = 0
            return self._flush_pending()
        return []

    def _flush_pending(self) -> list[str]:
        pending = self.take_pending()
        return [] if pending is None else [pending]

    def _split(self, data: bytes) -> list[str]:
        if not data:
            return []
        parts = data.split(b"\n")
        rest = parts.pop()
        lines: list[str] = []
        for index, part in enumerate(parts):
            if index == 0 and (self._pending or self._overlong):
                self._hold(part)
                line = self.take_pending()
                assert line is not None
                lines.append(line)
            elif len(part) > self._max_line_bytes:
                self.skipped += 1
                lines.append(SKIPPED_LINE)
            else:
                lines.append(_decode(part))
        self._hold(rest)
        return lines

    def _hold(self, part: bytes) -> None:
        """Add ``part`` to the unfinished line, dropping the line's bytes once it is longer than the limit."""
        if self._overlong or not part:
            return
        if self._pending_bytes + len(part) > self._max_line_bytes:
            self._pending, self._pending_bytes, self._overlong = [], 0, True
            return
        self._pending.append(part)
        self._pending_bytes += len(part)


class NotReadableError(OSError):
    """Raised for a path that is neither a regular file nor a stream (a device such as /dev/zero)."""

    def __init__(self, path: Path) -> None:
        super().__init__(0, "not a regular file, a pipe or a terminal", str(path))


def _decode(raw: bytes) -> str:
    # Invalid UTF-8 becomes U+FFFD rather than an error: the parser then counts the line as malformed or shows it.
    return raw.decode("utf-8", errors="replace").removesuffix("\r")


async def follow_lines(
    reader: LineReader,
    *,
    poll: Callable[[], Awaitable[None]],
    stop: Callable[[], Awaitable[bool]] | None = None,
) -> AsyncIterator[list[str]]:
    """Yield batches of complete lines, awaiting ``poll()`` whenever the file has nothing new, until a stream ends
    (its last line, unterminated or not, included) or ``stop()`` says so.

    ``poll`` is the wait between looks: ``lambda: clock.sleep(0.25)`` in the tool, an event a test sets in tests.
    ``stop`` is asked whenever the file has nothing new: once it returns True, the lines written meanwhile are read
    and the following ends. The reader stays the caller's, so after the loop ends (a cancel, a break, a stop) the
    caller can take its pending line.

    Raises:
        OSError: from the reader, when the file exists but cannot be read.
    """
    stopping = False
    while True:
        lines = await reader.read_available()
        if lines:
            yield lines
        elif reader.ended:
            last = reader.take_pending()
            if last is not None:
                yield [last]
            return
        elif reader.at_end:
            if stopping:
                return
            if stop is not None and await stop():
                stopping = True  # one more look: what was written before it stopped is shown
                continue
            await poll()


async def read_lines_once(reader: LineReader) -> AsyncIterator[list[str]]:
    """Yield the file's lines in batches up to its current end, the final unterminated line included.

    Raises:
        FileNotFoundError: the file does not exist.
        OSError: it cannot be read.
    """
    lines = await reader.read_available(missing_ok=False)
    while True:
        if lines:
            yield lines
        if reader.at_end:
            break
        lines = await reader.read_available()
    last = reader.take_pending()
    if last is not None:
        yield [last]
