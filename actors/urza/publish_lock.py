"""Urza's publish lock: an flock on ``publish.lock`` waited for only so long, so a stopped holder cannot hang a run."""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final, final

import structlog

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

_log = structlog.get_logger("actors.urza")

PUBLISH_LOCK_WAIT_S: Final = 3.0
"""How long a publisher waits for another's publish lock before it publishes without it. A publish holds the lock
for a look and a put (well under a second); a holder stopped meanwhile (SIGSTOP, Ctrl-Z, a debugger, a frozen
container) held it for as long as it stayed stopped, and every run sharing the store hung behind it."""
_POLL_S: Final = 0.05
_PROC_LOCKS: Final = Path("/proc/locks")


@final
class PublishLock:
    """The exclusive flock a publisher holds from its look for an equal artifact to its put, across processes and
    threads (an flock belongs to an open file description: each ``held()`` opens its own). Blocking; any thread.

    Where the lock cannot be had, the publish goes ahead unlocked, which costs at worst one duplicate artifact: a
    lock file nobody may read, or one held past ``wait_s``. After a wait ran out, later publishes try the lock once
    and do not wait again until they have had it: a stopped holder costs one wait, not one a blueprint.
    """

    def __init__(
        self,
        path: Path,
        *,
        wait_s: float = PUBLISH_LOCK_WAIT_S,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        proc_locks: Path = _PROC_LOCKS,
    ) -> None:
        self._path = path
        self._wait_s = wait_s
        self._clock = clock
        self._sleep = sleep
        self._proc_locks = proc_locks
        self._guard = threading.Lock()
        self._said_unlocked = False
        self._stuck = False

    @property
    def path(self) -> Path:
        return self._path

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Hold the lock for the block, or run the block unlocked where it cannot be had (warned once a stuck
        episode, and once a store for an unreadable lock file)."""
        try:
            # Read-only and created as the store's other files are (the umask decides): an flock needs no write
            # access, so a user who may write the catalogue but not this file (another user made it) still locks.
            fd = os.open(self._path, os.O_RDONLY | os.O_CREAT, 0o666)
        except OSError as err:
            with self._guard:
                said, self._said_unlocked = self._said_unlocked, True
            if not said:  # once a store, not once a blueprint
                _log.warning("urza_publish_unlocked", path=str(self._path), error=str(err))
            yield
            return
        try:
            if not self._acquire(fd):
                yield
                return
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _acquire(self, fd: int) -> bool:
        """Take the flock on ``fd`` within the wait (no wait while stuck); False when the holder kept it."""
        with self._guard:
            stuck = self._stuck
        deadline = self._clock() + (0.0 if stuck else self._wait_s)
        while not _try_lock(fd):
            left = deadline - self._clock()
            if left <= 0:
                self._kept_from(fd)
                return False
            self._sleep(min(_POLL_S, left))
        with self._guard:
            self._stuck = False
        return True

    def _kept_from(self, fd: int) -> None:
        with self._guard:
            said, self._stuck = self._stuck, True
        if said:
            return
        _log.warning(
            "urza_publish_lock_held",
            path=str(self._path),
            holder_pid=lock_holder(fd, self._proc_locks),
            waited_s=self._wait_s,
            detail="publishing without it (at worst one duplicate artifact); is a run sharing urza.root stopped?",
        )


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def lock_holder(fd: int, proc_locks: Path = _PROC_LOCKS) -> int | None:
    """The pid holding an flock on the file open at ``fd``, from ``/proc/locks`` (Linux), or None where that file
    does not say (no /proc, the holder in another pid namespace, the lock released meanwhile)."""
    try:
        st = os.fstat(fd)
        text = proc_locks.read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:2162962 0 EOF"; a waiter's line has "->" after the number.
    wanted = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5] == wanted and parts[4].isdigit():
            pid = int(parts[4])
            return pid if pid > 0 else None
    return None
