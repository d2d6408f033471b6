"""Atomic file writes: temp file in the same directory, fsync, rename, directory fsync; never a torn file.

Temp files carry their writer's pid, so the ones a killed writer left can be told from a live one's and swept."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

_PROC_STATUS = Path("/proc/self/status")
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS})
_TEMP_RE = re.compile(r"^\.tmp-(\d+)-")


def _umask_at_import() -> int:
    # os.umask can only be read by setting it, which races any thread creating a file meanwhile; at import (before
    # the run starts its threads) the window is harmless, and this is only the fallback where /proc is missing.
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


_IMPORT_UMASK = _umask_at_import()


def current_umask(status: Path = _PROC_STATUS) -> int:
    """The process's umask, read without changing it: the ``Umask:`` line of ``/proc/self/status`` (Linux 4.7+), or
    the umask this module saw at import where that file or line is missing."""
    try:
        with status.open(encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split(":", 1)[1].strip(), 8) & 0o777
    except (OSError, ValueError):
        pass
    return _IMPORT_UMASK


def shared_file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would create a file with: 0o666 less the umask."""
    return 0o666 & ~current_umask()


def temp_prefix() -> str:
    """The start of the name of a temp file this process writes: ``.tmp-<pid>-`` (remove_dead_temp_files reads it)."""
    return f".tmp-{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def remove_dead_temp_files(directory: Path) -> int:
    """Remove the temp files (``.tmp-<pid>-*``) in ``directory`` whose writing process is gone; returns how many.
    A live process's are left alone (another run may be writing), and so is a directory named like one.

    Raises:
        OSError: ``directory`` cannot be listed (missing, not a directory) or a file in it cannot be removed.
    """
    removed = 0
    for path in directory.iterdir():
        match = _TEMP_RE.match(path.name)
        if match is None or _pid_alive(int(match.group(1))):
            continue
        if path.is_dir() and not path.is_symlink():
            continue  # writers here make files only: someone else's directory is left alone
        path.unlink(missing_ok=True)
        removed += 1
    return removed


def atomic_write_bytes(path: Path, data: bytes, *, shared: bool = False, replace: bool = True) -> None:
    """Replace ``path`` with ``data`` so that a crash at any point leaves either the old file or the new one.

    The file is readable by its owner only (mode 0600, as the temp file is made) unless ``shared``: then it gets the
    mode the umask gives any new file (0644 under umask 022), for outputs others may read (a shared ``urza.root``,
    a run directory a team reads); keys and files that may hold a password stay private. With ``replace`` False an
    existing ``path`` is left as it is (FileExistsError), checked by the rename itself: a file that appeared since the
    caller last looked is not overwritten either.

    Blocking (disk I/O and fsync): call it from a lane or a worker thread, or at start-up before the loop is busy.

    Raises:
        FileExistsError: ``replace`` is False and ``path`` exists; it is unchanged.
        OSError: the directory is not writable or the disk is full; ``path`` is then unchanged.
    """
    atomic_write_chunks(path, (data,), shared=shared, replace=replace)


def atomic_write_chunks(
    path: Path, chunks: Iterable[bytes | memoryview], *, shared: bool = False, replace: bool = True
) -> None:
    """atomic_write_bytes for contents made as they are written (a file too large to hold in memory at once; a
    memoryview piece is written from its own memory, not copied).

    Raises:
        OSError: as atomic_write_bytes; and whatever ``chunks`` raises, with ``path`` unchanged.
    """
    directory = path.parent
    # The pid in the name tells a killed writer's leftover from a live writer's (remove_dead_temp_files).
    fd, tmp_name = tempfile.mkstemp(prefix=f"{temp_prefix()}{path.name}.", suffix=".tmp", dir=directory)
    try:
        # The close named too: after a failed write of small pieces it flushes what is still buffered, fails again,
        # and its error (no file name) replaced the write's (a full disk said "No space left on device" alone).
        with named_os_errors(path), os.fdopen(fd, "wb") as tmp:
            if shared:
                # Best effort: a file system that refuses modes (some CIFS and vfat mounts) keeps its own, and the
                # write must not fail for it.
                with contextlib.suppress(OSError):
                    os.fchmod(tmp.fileno(), shared_file_mode())
            for chunk in chunks:
                tmp.write(chunk)
            tmp.flush()
            os.fsync(tmp.fileno())
        if replace:
            os.replace(tmp_name, path)
        else:
            _link_new(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    if not replace:
        Path(tmp_name).unlink(missing_ok=True)
    # The rename is durable only once the directory entry is on disk.
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _link_new(tmp_name: str, path: Path) -> None:
    """Give the written temp file the name ``path`` unless something has it: a hard link fails on an existing name,
    where a rename would replace it. A file system without hard links (vfat, some network mounts) gets a look and a
    rename instead, which a file created in between would still lose to."""
    try:
        os.link(tmp_name, path)
    except OSError as err:
        # Only "no hard links here": a full disk, a quota or an I/O error is the write's failure, not a reason to
        # take the weaker path.
        if err.errno not in _NO_HARD_LINKS:
            raise
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path)) from None
        os.replace(tmp_name, path)


@contextlib.contextmanager
def named_os_errors(path: Path) -> Iterator[None]:
    """An OSError without a file name, as a write's or an fsync's is (``No space left on device`` alone), raised again
    naming ``path``: the user must know which file did not fit (an open's or a rename's names one already)."""
    try:
        yield
    except OSError as err:
        if err.filename is not None:
            raise
        raise OSError(err.errno, err.strerror, str(path)) from err


def atomic_write_text(path: Path, text: str, *, shared: bool = False) -> None:
    """atomic_write_bytes for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"), shared=shared)
