"""Generated data sets kept on disk between runs: one self-checking .npz per key, written atomically, no pickle.

MNIST-1D is generated offline on every load (about 1.5-2 s here, most of a short run's start-up). The arrays go to
``<directory>/<key>.npz`` beside a SHA-256 of their contents; a file that fails the check (truncated, edited,
another format) is regenerated and replaced, with a warning. A directory that cannot be written costs only the
cache: the arrays are generated as before. Runs may share the directory: a temp file a killed writer left
(``.tmp-<pid>-<key>.npz.*.tmp``) is removed when a cache opens, a live writer's never.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import zipfile
from typing import TYPE_CHECKING, Literal, final

import numpy as np
import numpy.typing as npt
import structlog

from esper.nn.data import DeferredLog
from esper.nn.data_npz import oversized_member
from esper.runtime.atomic_write import atomic_write_bytes, remove_dead_temp_files

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from pathlib import Path

    from esper.nn.data import ArrayCache, Arrays4

__all__ = ["ANNOUNCED_FROM_SAMPLES", "NpzArrayCache", "announced", "log_cache_events"]

_log = structlog.get_logger("actors.tolaria")
_NAMES = ("x_train", "y_train", "x_test", "y_test")
_GENERATE_S = 0.0007  # seconds to generate one MNIST-1D sample on one core (200000 took 138 s)
ANNOUNCED_FROM_SAMPLES = 8000
"""A generation of this many samples (about 6 s) or more is said before it starts; the default 4000 take 2-3 s of a
start-up that says nothing else meanwhile either."""
# The files this process already warned it could not write: a run loads its data twice (the start's checks, then the
# run), and the same warning twice on the console read as two faults. Later failures are logged at info level, so
# the run's own log still records them.
_WARNED_UNWRITABLE: set[str] = set()


def _digest(arrays: Arrays4) -> str:
    digest = hashlib.sha256()
    parts: tuple[npt.NDArray[np.generic], ...] = arrays
    for name, array in zip(_NAMES, parts, strict=True):
        digest.update(f"{name}:{array.dtype.str}:{array.shape}\n".encode())
        digest.update(np.ascontiguousarray(array).data)  # the buffer itself, not a copy of it
    return digest.hexdigest()


@final
class NpzArrayCache:
    """``cache(key, generate)`` for ``esper.nn.data.load_dataset``. Blocking (disk); not for the event loop."""

    def __init__(self, directory: Path) -> None:
        """Open the cache at ``directory`` (made at the first write) and remove the temp files of writers that
        died there (a kill -9 mid-write left 673 KB each, forever). Blocking (a directory listing)."""
        self.directory = directory
        # Said by log_cache_events, not as they happen: the start's checks load the data before the run's log is
        # configured, when a line would reach the caller's stdout rather than events.jsonl.
        self.events: list[DeferredLog] = []
        removed = 0
        with contextlib.suppress(OSError):  # no directory yet, or not ours to clean: only the sweep is lost
            removed = remove_dead_temp_files(directory)
        if removed:
            self._say("info", "data_cache_temp_files_removed", directory=str(directory), count=removed)

    def __call__(self, key: str, generate: Callable[[], Arrays4]) -> Arrays4:
        path = self.directory / f"{key}.npz"
        cached = self._read(path)
        if cached is not None:
            return cached
        arrays = generate()
        self._write(path, arrays)
        return arrays

    def _read(self, path: Path) -> Arrays4 | None:
        if not path.is_file():
            return None
        try:
            # Read whole (under a megabyte): np.load leaks its own file handle when a damaged archive raises.
            with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as stored:
                for name in (*_NAMES, "sha256"):
                    problem = oversized_member(stored, name)
                    if problem is not None:
                        self._say("warning", "data_cache_corrupt", file=str(path), error=f"array {name!r} {problem}")
                        return None
                x_train, y_train, x_test, y_test = (stored[name] for name in _NAMES)
                expected = str(stored["sha256"])
        except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError, MemoryError) as err:
            self._say("warning", "data_cache_corrupt", file=str(path), error=f"unreadable: {type(err).__name__}: {err}")
            return None
        arrays: Arrays4 = (x_train, y_train, x_test, y_test)
        if x_train.dtype != np.float32 or x_test.dtype != np.float32 or y_train.dtype != np.int64:
            self._say("warning", "data_cache_corrupt", file=str(path), error="unexpected dtypes")
            return None
        if _digest(arrays) != expected:
            self._say("warning", "data_cache_corrupt", file=str(path), error="sha256 does not match its contents")
            return None
        return arrays

    def _write(self, path: Path, arrays: Arrays4) -> None:
        buffer = io.BytesIO()
        x_train, y_train, x_test, y_test = arrays
        np.savez(
            buffer, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, sha256=np.array(_digest(arrays))
        )
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, buffer.getvalue(), shared=True)
        except OSError as err:
            if str(path) in _WARNED_UNWRITABLE:
                self._say("info", "data_cache_unwritable", file=str(path), error=str(err))
            else:
                _WARNED_UNWRITABLE.add(str(path))
                self._say("warning", "data_cache_unwritable", file=str(path), error=str(err))
            return
        self._say("info", "data_cache_written", file=str(path), size_bytes=buffer.tell())

    def _say(self, level: Literal["info", "warning"], event: str, **fields: str | int) -> None:
        self.events.append(DeferredLog(level, event, tuple(fields.items())))


def log_cache_events(events: Iterable[DeferredLog]) -> None:
    """Log what a data load's cache recorded (``DataSplits.cache_events``), once the run's log is set up."""
    for said in events:
        log = _log.warning if said.level == "warning" else _log.info
        log(said.event, **dict(said.fields))


def announced(cache: NpzArrayCache | None, announce: Callable[[str], None], samples: int) -> ArrayCache | None:
    """``cache`` (or none) as an ``ArrayCache`` that says a line to ``announce`` before it generates the data set
    (``ANNOUNCED_FROM_SAMPLES`` or more): 200000 MNIST-1D samples were 138 s of silence before the first console
    line."""
    if samples < ANNOUNCED_FROM_SAMPLES:
        return cache
    kept = (
        f"kept in {cache.directory} for later runs" if cache is not None else "not kept: tolaria.data_cache_dir is off"
    )
    line = f"generating MNIST-1D: {samples} samples, about {max(1, round(samples * _GENERATE_S))} s ({kept})"

    def generate_or_read(key: str, generate: Callable[[], Arrays4]) -> Arrays4:
        def said() -> Arrays4:
            announce(line)
            return generate()

        return cache(key, said) if cache is not None else said()

    return generate_or_read
