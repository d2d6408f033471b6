"""Urza's blob directory: reading a blob safely and the directory fsync after a rename.

The sweep of temp files dead writers left is esper.runtime.atomic_write's, shared with the other writers."""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path


_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a directory"),
)


def read_blob(path: Path, catalogued_bytes: int) -> bytes | str:
    """The bytes of the blob at ``path``, or why it is not a blob: anything but a regular file ("not a regular file:
    a FIFO"). Blocking; any thread.

    Checked before the file is opened, since opening a FIFO blocks until a writer comes (the run hung for good after
    training), and re-checked on the open descriptor (opened non-blocking) in case it was swapped meanwhile. The read
    stops after the larger of ``catalogued_bytes`` and the file's size at the open, plus one byte (so a longer blob
    still shows as longer): a file that grows while it is read is not followed. It is not capped at the catalogued
    size alone, because a row's damaged size must not make its good blob look truncated.

    Raises:
        FileNotFoundError: no file at ``path``. OSError: it cannot be read.
    """
    why = _not_regular(os.stat(path).st_mode)
    if why:
        return why
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        opened = os.fstat(fd)
        why = _not_regular(opened.st_mode)
        if why:
            return why
        return handle.read(max(catalogued_bytes, opened.st_size) + 1)


def _not_regular(mode: int) -> str:
    if stat.S_ISREG(mode):
        return ""
    kind = next((name for test, name in _KINDS if test(mode)), f"mode {stat.filemode(mode)}")
    return f"not a regular file: {kind}"


def fsync_dir(directory: Path) -> None:
    """fsync a directory, so that a rename into it outlives a crash."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
