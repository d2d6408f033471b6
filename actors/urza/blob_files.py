"""Urza's blob directory: the directory fsync after a rename, and the sweep of temp files dead writers left."""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

_TMP_RE = re.compile(r"^\.tmp-(\d+)-")


def fsync_dir(directory: Path) -> None:
    """fsync a directory, so that a rename into it outlives a crash."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_dead_temp_files(blobs: Path) -> int:
    """Remove the temp files (``.tmp-<pid>-*``) in ``blobs`` whose writing process is gone; returns how many."""
    removed = 0
    for path in blobs.iterdir():
        match = _TMP_RE.match(path.name)
        if match is None or _pid_alive(int(match.group(1))):
            continue
        if path.is_dir() and not path.is_symlink():
            continue  # this store writes files only: someone else's directory is left alone
        path.unlink(missing_ok=True)
        removed += 1
    return removed
