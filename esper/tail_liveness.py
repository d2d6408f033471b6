"""Whether a followed log's run directory is held by a live run, or the run that wrote it is gone (killed)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from esper.run_dir import LOCK_NAME, check_not_in_use
from esper.runtime.errors import ConfigError

if TYPE_CHECKING:
    from pathlib import Path


def run_gone(directory: Path) -> bool:
    """Whether ``directory`` holds a run.lock that no process holds any more (the kernel dropped the lock when its
    run died, ``kill -9`` included). False for a directory no run has held, or one a live process holds. Blocking
    (a few system calls).

    The holder's pid, written in the file, answers first while that process lives: probing the lock itself takes it
    for an instant, which a run claiming the directory at that instant has to wait out (see run_dir's claim).
    """
    try:
        holder = (directory / LOCK_NAME).read_bytes()[:32].decode("ascii", "replace").strip()
    except OSError:
        return False  # no lock file: not a run directory, or no run has claimed it yet
    if holder.isdigit() and _alive(int(holder)):
        return False
    try:
        check_not_in_use(directory)
    except ConfigError:
        return False
    return True


def run_held(directory: Path) -> bool:
    """Whether a process holds ``directory`` as its run directory now: a run, or a ``--resume`` of a finished one
    that has not written its first line yet. False for a directory without a run.lock (no run has claimed it).
    Blocking (a few system calls).

    Asked of the lock itself, not of the pid in run.lock: a notebook's run releases the directory when it ends and
    its process lives on. A free lock is taken for an instant by the probe (a claim at that instant waits it out), and
    this is asked only once a log ends with ``run_finished`` (once the lock is free, following ends, so that is its
    last probe).
    """
    if not (directory / LOCK_NAME).exists():
        return False
    try:
        check_not_in_use(directory)
    except ConfigError:
        return True
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    except OverflowError:
        return False
    return True
