"""The checkpoints a resume or the trainer may load: each file checked against its manifest entry, newest first."""

from __future__ import annotations

import hashlib
import os
import stat
from typing import TYPE_CHECKING, final

import structlog

from actors.tolaria.checkpoint_codec import CheckpointError, decode_state
from actors.tolaria.checkpoints import read_manifest

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from actors.tolaria.checkpoints import CheckpointInfo
    from actors.tolaria.snapshots import TrainState

_log = structlog.get_logger("actors.tolaria")


@final
class DigestMemo:
    """The checkpoints one start's checks have hashed: a file read again unchanged (its device, inode, size, mtime and
    ctime the same before and after the read as when it matched its manifest entry) is not hashed again. A resume's
    checks hashed the newest checkpoint four times (its fit, its step, its journal cover, its graft log); a
    gigabyte's checkpoint is about 1.5 s of SHA-256 here each time. Only the start's checks take one: the trainer
    hashes what it loads itself. The checksums guard against damage, not against someone who can write the run
    directory (the manifest that holds them is not signed), so a file's identity standing for its bytes between two
    reads of one start is enough here."""

    __slots__ = ("_matched",)

    def __init__(self) -> None:
        self._matched: dict[str, tuple[tuple[int, ...], str]] = {}

    def knows(self, path: Path, identity: tuple[int, ...], sha256: str) -> bool:
        """Whether the file at ``path``, as ``identity`` says it is now, matched ``sha256`` when it was hashed."""
        return self._matched.get(str(path)) == (identity, sha256)

    def matched(self, path: Path, identity: tuple[int, ...], sha256: str) -> None:
        """The file at ``path``, unchanged through its read (``identity``), matched ``sha256``."""
        self._matched[str(path)] = (identity, sha256)


def load_latest(
    directory: Path, *, at_most: int | None = None, checksums_said: int | None = None, memo: DigestMemo | None = None
) -> tuple[TrainState, tuple[str, ...], CheckpointInfo] | None:
    """The newest checkpoint whose SHA-256 matches the manifest and that decodes to the step its entry names; a
    corrupt, truncated or inconsistent one is skipped with a ``checkpoint_corrupt`` warning and the previous one is
    tried. ``at_most``: only checkpoints of that step or earlier (a resume's point, see esper.resume). None when the
    directory has no checkpoint (of that step or earlier). ``checksums_said``: the step of the checkpoint the
    caller's ``latest_good`` has just returned, having warned of the newer files that fail their checksum: those (and
    that one) are not said again, save one that does not decode; an older one is. ``memo``: see DigestMemo.

    Blocking (file I/O): lane thread or a worker thread.

    Raises:
        CheckpointError: checkpoints are listed but none is usable.
    """
    for info, data in verified_newest_first(directory, said_from=checksums_said, at_most=at_most, memo=memo):
        try:
            state, pending = decode_state(data)
        except CheckpointError as err:
            _log.warning("checkpoint_corrupt", file=str(directory / info.file), error=str(err)[:300])
            continue
        if (state.global_step, state.epoch, state.batch_index) != (info.global_step, info.epoch, info.batch_index):
            _log.warning(
                "checkpoint_corrupt",
                file=str(directory / info.file),
                error=f"it holds step {state.global_step}, its manifest entry says {info.global_step}",
            )
            continue
        return state, pending, info
    entries = [e for e in read_manifest(directory) if at_most is None or e.global_step <= at_most]
    if entries:
        raise CheckpointError(f"{directory}: no usable checkpoint ({len(entries)} listed)")
    return None


def latest_good_step(directory: Path) -> int | None:
    """The global step of the checkpoint ``load_latest`` would resume from (verified the same way, not decoded);
    None when the directory has no checkpoint. Blocking.

    Raises:
        CheckpointError: checkpoints are listed but none is usable.
    """
    info = latest_good(directory)
    return None if info is None else info.global_step


def latest_good(directory: Path, *, quiet: bool = False, memo: DigestMemo | None = None) -> CheckpointInfo | None:
    """The manifest entry of the checkpoint ``load_latest`` would resume from (its SHA-256 checked, not decoded);
    None when the directory has no checkpoint. ``quiet``: a lookup that skips a corrupt file without a warning (the
    resume's checks and the trainer, which verify what they load, say it). Blocking.

    Raises:
        CheckpointError: checkpoints are listed but none is usable.
    """
    for info, _ in verified_newest_first(directory, said_from=0 if quiet else None, memo=memo):
        return info
    if read_manifest(directory):
        raise CheckpointError(
            f"{directory}: no checkpoint passes its checksum ({len(read_manifest(directory))} listed)"
        )
    return None


def verified_newest_first(
    directory: Path, *, said_from: int | None = 0, at_most: int | None = None, memo: DigestMemo | None = None
) -> Iterator[tuple[CheckpointInfo, bytes]]:
    """Each listed checkpoint (of step ``at_most`` or earlier) whose file is a regular file of its listed size and
    SHA-256, with its bytes, newest first; each other one skipped with a ``checkpoint_corrupt`` warning unless its step
    is ``said_from`` or later (said already by the caller, or 0, the default: a quiet lookup, the trainer's load says
    it). What a checkpoint's header says (its run, its shapes, its halt) is read from these bytes only: a damaged
    header read unverified refused a resume the load would have made from an older checkpoint. ``memo``: see
    DigestMemo. Blocking.

    Raises:
        CheckpointError: the manifest cannot be read (read_manifest).
    """
    for info in reversed(read_manifest(directory)):
        if at_most is not None and info.global_step > at_most:
            continue  # not hashed, nor said again by the restore's search for an older checkpoint
        # One corrupt file was said five times on a resume: once by each lookup and check that read it. An older one
        # than the caller's lookup reached is said, though: nothing else would.
        warn = _unsaid if said_from is not None and info.global_step >= said_from else _log.warning
        data = _verified(directory, info, warn, memo)
        if data is not None:
            yield info, data


def verified_checkpoint(directory: Path, info: CheckpointInfo, *, memo: DigestMemo | None = None) -> bytes | None:
    """The bytes of the checkpoint ``info`` names when its file passes its size and SHA-256, else None (quietly, see
    verified_newest_first). ``memo``: see DigestMemo. Blocking."""
    return _verified(directory, info, _unsaid, memo)


def _verified(
    directory: Path, info: CheckpointInfo, warn: Callable[..., None], memo: DigestMemo | None = None
) -> bytes | None:
    path = directory / info.file
    try:
        size = path.lstat().st_size if path.is_file() and not path.is_symlink() else None
        if size != info.size_bytes:
            found = f"{size} bytes" if size is not None else _not_a_file(path)
            warn("checkpoint_corrupt", file=str(path), error=f"{found}, the manifest says {info.size_bytes} bytes")
            return None
        with path.open("rb") as file:
            opened = os.fstat(file.fileno())
            if not stat.S_ISREG(opened.st_mode):  # replaced since the check above
                warn("checkpoint_corrupt", file=str(path), error="not a regular file")
                return None
            data = file.read()
            before = _identity(opened)
            unchanged = before == _identity(os.fstat(file.fileno()))
    except OSError as err:
        warn("checkpoint_corrupt", file=str(path), error=f"unreadable: {err}")
        return None
    if memo is not None and unchanged and memo.knows(path, before, info.sha256):
        return data
    digest = hashlib.sha256(data).hexdigest()
    if digest != info.sha256:
        warn(
            "checkpoint_corrupt",
            file=str(path),
            error=f"sha256 {digest[:12]} does not match the manifest's {info.sha256[:12]}",
            size_bytes=len(data),
            expected_size_bytes=info.size_bytes,
        )
        return None
    if memo is not None and unchanged:
        memo.matched(path, before, digest)
    return data


def _not_a_file(path: Path) -> str:
    return "not a regular file" if path.is_symlink() or path.exists() else "missing"


def _identity(status: os.stat_result) -> tuple[int, ...]:
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns)


def _unsaid(event: str, **fields: object) -> None:
    """A warning left unsaid (see verified_newest_first's ``said_from``)."""
