"""A console stream that outlives its reader: after a failed write (a closed pipe or terminal) output is dropped."""

from __future__ import annotations

import io
import threading
from typing import TYPE_CHECKING, final

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TextIO

__all__ = ["ConsoleStream"]


@final
class ConsoleStream(io.TextIOBase):
    """Writes through to ``inner`` until a write or flush fails, then drops every later write.

    The console is a view of the run, not part of it: ``python -m esper.run config.toml | head`` (the pipe's reader
    leaves: EPIPE), a terminal that closed (EIO) or a redirect onto a full disk must not stop training, and a logging
    call must not raise into the actor that made it. ``on_lost`` is called once, with the error, from the write that
    failed: it may record the loss elsewhere but must not log to this console (structlog holds its lock meanwhile).
    """

    def __init__(self, inner: TextIO | None, on_lost: Callable[[BaseException], None] | None = None) -> None:
        super().__init__()
        self._inner = inner if inner is not None else io.StringIO()
        self._on_lost = on_lost
        self._lock = threading.Lock()
        # No stream at all (the process was started with it closed, sys.stderr None): lost from the start, unsaid.
        self._lost: BaseException | None = None if inner is not None else OSError("no console stream")

    @property
    def lost(self) -> BaseException | None:
        """The error that ended the console, or None while it works."""
        return self._lost

    @property
    def inner(self) -> TextIO:
        return self._inner

    def write(self, text: str) -> int:
        if self._lost is None:
            try:
                self._inner.write(text)
            except (OSError, ValueError) as err:  # ValueError: the stream was closed under us
                self._lose(err)
        return len(text)

    def flush(self) -> None:
        if self._lost is None:
            try:
                self._inner.flush()
            except (OSError, ValueError) as err:
                self._lose(err)

    def isatty(self) -> bool:
        if self._lost is not None:
            return False
        try:
            return self._inner.isatty()
        except (OSError, ValueError):
            return False

    def writable(self) -> bool:
        return True

    def _lose(self, err: BaseException) -> None:
        with self._lock:
            if self._lost is not None:
                return
            self._lost = err
        if self._on_lost is not None:
            self._on_lost(err)
