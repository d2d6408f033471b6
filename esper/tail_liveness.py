"""Whether the run that writes a followed log is gone: killed, so that no ``run_finished`` line will ever come."""

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
    for an instant, which a run claiming the directory at that instant would take for another run's.
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
