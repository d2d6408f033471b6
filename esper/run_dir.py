"""A run directory's claim: one process writes it at a time, and a new run never writes over an earlier run's files."""

from __future__ import annotations

import fcntl
import os
import re
import shlex
import stat
import time
from pathlib import Path
from typing import final

from actors.nissa.csv_writer import MetricsFileError, check_existing
from esper.run_files import RunFiles
from esper.run_key import KEY_FILE
from esper.runtime.atomic_write import atomic_write_text
from esper.runtime.errors import ConfigError

LOCK_NAME = "run.lock"
# The first line of the config.toml a run writes: a new run overwrites only a config.toml that starts with it (a
# refused attempt's), never one a user put there.
RESOLVED_MARK = "# The resolved configuration of this run (every key), written by esper.run.\n"
# esper.runtime.atomic_write's temp files: ".tmp-<pid>-" (before it, ".") + the target's name + "." + mkstemp's eight
# characters + ".tmp".
_PARTIAL = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")
# What a run that got as far as its actors leaves behind; a directory holding any of these is an earlier run's. A
# config.toml and an events.jsonl alone are not: an attempt refused at assembly (a user model that does not fit the
# data) writes only those, and retrying into the same directory appends to its log and loses nothing.
RUN_FILES = ("checkpoints", "metrics.csv", "summary.json", "field_reports.wal", "report.png")
# What a run writes in its directory besides the files its config names (RunFiles): none may be a symbolic link, which
# the run would write through (the pid into the lock's target, the event log appended to another file, checkpoints
# and journals into another directory).
_DEFAULT_FILES = RunFiles()
_PROBE_PATIENCE_S = 0.1
_PROBE_RETRY_S = 0.002
_WRITTEN = (LOCK_NAME, KEY_FILE, "config.toml", "data.json", "field_reports.wal", "report.png", "checkpoints")


@final
class RunDirLock:
    """An exclusive ``flock`` on the run directory itself (a descriptor of the directory), held for the run's life.

    The directory, not ``run.lock``: a lock on a file that someone deletes is held on a name no other process can
    open any more, and the next run made a new run.lock, locked it and trained into the live run's directory. A
    directory cannot be deleted while it holds the run's files. The kernel drops the lock when its process dies,
    ``kill -9`` included, so nothing left behind ever blocks a ``--resume``; run.lock only holds the holder's pid,
    which makes the refusal's message useful.
    """

    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Drop the lock (closing the descriptor drops it). Idempotent."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def claim_run_dir(directory: Path, *, resume: bool, files: RunFiles = _DEFAULT_FILES) -> RunDirLock:
    """Make ``directory`` if needed and lock it for this run. Blocking (a few system calls).

    A new run (``resume`` False) refuses a directory that holds an earlier run's files: it would append to that
    run's events and overwrite its checkpoints and metrics; and a metrics file (``files.metrics``) Nissa could not
    append to. A resumed run needs the directory's files and only the lock. Either refuses a directory where a file
    it writes is a symbolic link; the directory itself may be one.

    Raises:
        ConfigError: the directory cannot be made or written, a file the run writes there is a symbolic link,
            another process's run holds it, or (for a new run) it holds an earlier run or a foreign metrics file.
    """
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        blocker = _file_in_the_way(directory)
        if blocker is not None:  # "cannot write there: File exists" did not say the path is a file
            named = "is" if blocker == directory else f"is under {blocker}, which is"
            raise ConfigError(
                f"run directory {directory}: {named} a file, not a directory: choose another --run-dir"
            ) from err
        raise ConfigError(f"run directory {directory}: cannot write there: {err.strerror or err}") from err
    check_run_dir_files(directory, files)
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as err:
        raise ConfigError(f"run directory {directory}: cannot open it: {err.strerror or err}") from err
    try:
        _lock_or_refuse(fd, directory)
        if not resume:
            # A foreign metrics file first: with rows it also looks like a run's, and the advice to --resume it failed.
            try:
                check_existing(directory / files.metrics)  # what Nissa's open would refuse, restarting until it gave up
            except MetricsFileError as err:
                raise ConfigError(
                    f"run directory {directory}: {err}; a new run would add its epochs to it: move it aside, or"
                    " choose another --run-dir"
                ) from err
            earlier = earlier_run_files(directory)
            if earlier and not (directory / "checkpoints").is_dir():
                # --resume refuses it too (nothing to load): naming it as the way out sent the user in a circle.
                raise ConfigError(
                    f"run directory {directory} already holds a run ({', '.join(earlier)}) whose checkpoints directory"
                    " is gone, so no --resume can continue it: choose another --run-dir (or move this one aside)"
                )
            if earlier:
                raise ConfigError(
                    f"run directory {directory} already holds a run ({', '.join(earlier)}): continue it with --resume"
                    f" {shlex.quote(str(directory))}, or choose another --run-dir"
                )
            if not _written_by_a_run(directory / "config.toml"):
                raise ConfigError(
                    f"run directory {directory} holds a config.toml no run wrote, which a new run would replace with"
                    " its resolved config: choose another --run-dir"
                )
        _write_pid(directory)
    except BaseException:
        os.close(fd)
        raise
    return RunDirLock(fd)


def _file_in_the_way(directory: Path) -> Path | None:
    """``directory`` or the nearest of its parents that exists, when that is not a directory; else None."""
    for path in (directory, *directory.parents):
        try:
            if path.exists():
                return None if path.is_dir() else path
        except OSError:
            return None
    return None


def _write_pid(directory: Path) -> None:
    """The claimant's pid into run.lock, for another run's refusal to name. Blocking.

    Raises:
        ConfigError: the file cannot be written (a full disk or quota: the run could not write its first file either).
    """
    try:
        # O_NOFOLLOW: a link planted after check_no_links is refused all the same (ELOOP), never written through.
        pid_fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    except OSError as err:
        raise ConfigError(f"run directory {directory}: cannot write there: {err.strerror or err}") from err
    try:
        os.ftruncate(pid_fd, 0)
        os.pwrite(pid_fd, f"{os.getpid()}\n".encode("ascii"), 0)
    except OSError as err:
        raise ConfigError(f"run directory {directory}: cannot write there: {err.strerror or err}") from err
    finally:
        os.close(pid_fd)


def check_run_dir_files(directory: Path, files: RunFiles = _DEFAULT_FILES) -> None:
    """Refuse ``directory`` if a file the run reads or writes there is a symbolic link (check_no_links) or not what
    it must be (check_file_kinds). Read-only and blocking (no file is opened).

    Raises:
        ConfigError: one line naming the file.
    """
    check_no_links(directory, files)
    check_file_kinds(directory, files)


# What a kind of file other than a regular one is called in a refusal.
_KINDS = (
    (stat.S_ISREG, "a regular file"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _files_in(checkpoints: Path) -> list[Path]:
    """What a real ``checkpoints`` directory holds, sorted; nothing for a link, a missing or an unreadable one (the
    run's own open reports that)."""
    if not checkpoints.is_dir() or checkpoints.is_symlink():
        return []
    try:
        return sorted(checkpoints.iterdir())
    except OSError:
        return []


def check_file_kinds(directory: Path, files: RunFiles = _DEFAULT_FILES) -> None:
    """Refuse ``directory`` if a file the run reads or writes there (or one in its ``checkpoints``) is not a regular
    file, or its ``checkpoints`` not a directory. Read-only and blocking; only ``lstat``: opening a FIFO waits for a
    writer that never comes, and the run hung before its first line, deaf to Ctrl-C; a directory named events.jsonl
    ended in a traceback.

    Raises:
        ConfigError: one line naming the file and what it is.
    """
    checkpoints = directory / "checkpoints"
    inside = _files_in(checkpoints)
    for path in (*(directory / name for name in (*_WRITTEN, *files)), *inside):
        try:
            mode = path.lstat().st_mode
        except OSError:
            continue  # absent (the run makes it), or unreadable: the run's own open reports it
        folder = path == checkpoints
        if stat.S_ISLNK(mode) or (stat.S_ISDIR(mode) if folder else stat.S_ISREG(mode)):
            continue  # a link is check_no_links' to refuse
        wanted = "a directory" if folder else "a regular file"
        kind = next((name for test, name in _KINDS if test(mode)), "a special file")
        raise ConfigError(
            f"run directory {directory}: {path.relative_to(directory)} is {kind}, not {wanted}, which the run"
            " cannot use; move it aside, or choose another --run-dir"
        )


def check_no_links(directory: Path, files: RunFiles = _DEFAULT_FILES) -> None:
    """Refuse ``directory`` if a file or folder the run writes there (or a file in its ``checkpoints``) is a symbolic
    link. Read-only and blocking.

    Raises:
        ConfigError: one line naming the link and where it leads.
    """
    names = (*_WRITTEN, *files)
    checkpoints = directory / "checkpoints"
    inside = _files_in(checkpoints)
    for path in (*(directory / name for name in names), *inside):
        if path.is_symlink():
            try:
                target = f" (to {os.readlink(path)})"
            except OSError:
                target = ""
            raise ConfigError(
                f"run directory {directory}: {path.relative_to(directory)} is a symbolic link{target}, which the run"
                " would write through; remove it, or choose another --run-dir"
            )


def earlier_run_files(directory: Path) -> list[str]:
    """The RUN_FILES in ``directory`` that hold a run's output (a run trained there). Blocking."""
    return [name for name in RUN_FILES if _holds_run_file(directory / name)]


def _holds_run_file(path: Path) -> bool:
    """Whether ``path`` is a run's output worth keeping: an empty file is not, nor a metrics.csv of its header alone,
    nor a checkpoints directory of empty files (a start that failed or was killed before any step: the corrected
    config may take the directory)."""
    if path.name == "metrics.csv" and path.is_file():
        with path.open("rb") as file:
            return len(file.read(1 << 16).splitlines()) > 1
    if path.name == "checkpoints" and path.is_dir():
        return any(entry.is_file() and entry.stat().st_size > 0 for entry in path.iterdir())
    if path.is_file():
        return path.stat().st_size > 0  # field_reports.wal is made empty when Tamiyo starts
    return path.exists()


def sweep_partial_writes(directory: Path) -> list[Path]:
    """Delete the temp files an atomic write left in ``directory`` and its subdirectories when its process died
    mid-write (``kill -9`` while a checkpoint was written): each is as large as what it was writing and nothing else
    would ever remove it. Only the holder of the directory's claim may call this, since a live writer's temp file
    looks the same. Blocking.

    Returns:
        The files removed.
    """
    removed = []
    # Only the run's own folders: a symlink may lead to another program's files, whose temp files look the same.
    own = (child for child in directory.iterdir() if child.is_dir() and not child.is_symlink())
    for folder in (directory, *own):
        for path in folder.iterdir():
            if _PARTIAL.fullmatch(path.name) and path.is_file() and not path.is_symlink():
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def check_not_in_use(directory: Path) -> None:
    """Refuse ``directory`` if another process's run holds it, creating nothing (a refused ``--resume`` must leave
    the directory as it was). Blocking (a few system calls).

    Raises:
        ConfigError: another run is using the directory.
    """
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        # No directory (or none that can be opened): no run holds it (claim_run_dir reports what else is wrong).
        return
    try:
        _lock_or_refuse(fd, directory)
    finally:
        os.close(fd)  # closing drops the probe's own lock at once


def _lock_or_refuse(fd: int, directory: Path) -> None:
    # A liveness probe (esper.tail, esper.report, another start's check) holds the lock for an instant; a claim that
    # met one was refused as if a run held the directory. A run holds it for its life: tries over a tenth of a second
    # tell the two apart.
    deadline = time.monotonic() + _PROBE_PATIENCE_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                break
        time.sleep(_PROBE_RETRY_S)
    holder = _holder(directory)
    by = f" (pid {holder})" if holder.isdigit() else ""
    raise ConfigError(
        f"run directory {directory}: another run is using it{by}; let it finish or stop it (Ctrl-C), then"
        f" --resume {directory}"
    ) from None


def _holder(directory: Path) -> str:
    """The pid run.lock names ("" when it cannot be read: deleted under the live run, say)."""
    try:
        # Never through a link, and never waiting on a FIFO planted there for a writer that will not come.
        fd = os.open(directory / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return ""
    try:
        return os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    finally:
        os.close(fd)


def _written_by_a_run(path: Path) -> bool:
    """Whether ``path`` is absent or a config.toml a run wrote (it starts with RESOLVED_MARK)."""
    try:
        with path.open("rb") as file:
            head = file.read(len(RESOLVED_MARK.encode()))
        # Before the mark, a run wrote the resolved dump alone, which starts with its first key.
        return head == RESOLVED_MARK.encode() or head.startswith(b'runs_dir = "')
    except FileNotFoundError:
        return True
    except OSError:
        return False


def check_not_the_run_config(config: str | Path, directory: Path) -> None:
    """Refuse a new run whose config file is the run directory's config.toml, which the run rewrites. Blocking.

    Raises:
        ConfigError: one line naming the file.
    """
    target = directory / "config.toml"
    try:
        same = target.exists() and Path(config).samefile(target)
    except OSError:
        same = False
    if same:
        raise ConfigError(
            f"{config}: a new run writes its resolved config to {target}, which is this very file (its comments and"
            " values would be lost); choose another --run-dir"
        )


def write_run_config(directory: Path, resolved_toml: str) -> None:
    """The resolved configuration into the run directory, atomically. Blocking.

    Raises:
        ConfigError: the directory is not writable.
    """
    try:
        atomic_write_text(directory / "config.toml", RESOLVED_MARK + resolved_toml)
    except OSError as err:
        raise ConfigError(f"run directory {directory}: cannot write there: {err.strerror or err}") from err
