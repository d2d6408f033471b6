"""A start's checks hash each checkpoint once: a file read again unchanged is not hashed again, a changed one is."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
import types
from typing import TYPE_CHECKING

import msgspec
import structlog

import actors.tolaria.checkpoint_verify as checkpoint_verify
import esper
from actors.tolaria.checkpoint_verify import DigestMemo, latest_good, verified_checkpoint
from actors.tolaria.checkpoints import CheckpointWriter, read_manifest
from tests.test_run_embedded import quiet_config
from tests.test_tolaria_checkpoint_check import _state

if TYPE_CHECKING:
    from pathlib import Path

    import pytest


def _counting_hashes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the buffers checkpoint_verify hashes, in order."""
    hashed: list[int] = []

    def sha256(data: bytes) -> hashlib._Hash:
        hashed.append(len(data))
        return hashlib.sha256(data)

    monkeypatch.setattr(checkpoint_verify, "hashlib", types.SimpleNamespace(sha256=sha256))
    return hashed


def _written(directory: Path, *steps: int) -> None:
    writer = CheckpointWriter(directory, keep_last=len(steps))
    for step in steps:
        writer.submit(_state(step))
    writer.close()


def test_an_unchanged_checkpoint_is_hashed_once_per_memo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _written(tmp_path, 20, 40)
    hashed = _counting_hashes(monkeypatch)
    memo = DigestMemo()
    newest = latest_good(tmp_path, memo=memo)
    assert newest is not None
    assert newest.global_step == 40
    first = verified_checkpoint(tmp_path, newest, memo=memo)
    assert first == (tmp_path / "step-40.pt").read_bytes()
    assert len(hashed) == 1
    assert verified_checkpoint(tmp_path, newest) is not None, "without a memo every read is hashed"
    assert len(hashed) == 2


def test_another_manifest_entry_for_the_same_file_is_hashed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The memo vouches for a file matching the digest it was hashed against, not for any entry naming the file."""
    _written(tmp_path, 20)
    [info] = read_manifest(tmp_path)
    memo = DigestMemo()
    assert verified_checkpoint(tmp_path, info, memo=memo) is not None
    hashed = _counting_hashes(monkeypatch)
    assert verified_checkpoint(tmp_path, dataclasses.replace(info, sha256="0" * 64), memo=memo) is None
    assert len(hashed) == 1


def test_a_checkpoint_that_changes_during_its_read_is_not_remembered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its bytes matched, but what was read may be neither the file before nor after: the next read hashes again."""
    _written(tmp_path, 20)
    [info] = read_manifest(tmp_path)
    fstats = 0

    def fstat(fd: int) -> os.stat_result:
        nonlocal fstats
        fstats += 1
        status = os.fstat(fd)
        if fstats % 2:
            return status
        fields = list(status)
        fields[stat.ST_MTIME] += 1
        return os.stat_result((*fields[:10], status.st_atime_ns, status.st_mtime_ns + 1, status.st_ctime_ns))

    memo = DigestMemo()
    monkeypatch.setattr(checkpoint_verify, "os", types.SimpleNamespace(fstat=fstat, stat_result=os.stat_result))
    assert verified_checkpoint(tmp_path, info, memo=memo) is not None
    monkeypatch.undo()
    hashed = _counting_hashes(monkeypatch)
    assert verified_checkpoint(tmp_path, info, memo=memo) is not None
    assert len(hashed) == 1


def test_a_checkpoint_replaced_after_its_match_is_hashed_again_and_refused(tmp_path: Path) -> None:
    """The same size and name, another file (an atomic rewrite: a new inode): the memo does not vouch for it."""
    _written(tmp_path, 20, 40)
    memo = DigestMemo()
    newest = latest_good(tmp_path, memo=memo)
    assert newest is not None
    path = tmp_path / newest.file
    damaged = bytearray(path.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    replacement = tmp_path / "replacement"
    replacement.write_bytes(bytes(damaged))
    os.replace(replacement, path)
    assert verified_checkpoint(tmp_path, newest, memo=memo) is None
    with structlog.testing.capture_logs() as logs:
        fallback = latest_good(tmp_path, memo=memo)
    assert fallback is not None
    assert fallback.global_step == 20
    assert [entry["file"] for entry in logs if entry["event"] == "checkpoint_corrupt"] == [str(path)]


def test_a_checkpoint_rewritten_in_place_after_its_match_is_refused(tmp_path: Path) -> None:
    """The same inode and size, other bytes and another modification time."""
    _written(tmp_path, 20)
    memo = DigestMemo()
    [info] = read_manifest(tmp_path)
    assert verified_checkpoint(tmp_path, info, memo=memo) is not None
    path = tmp_path / info.file
    stat = path.stat()
    damaged = bytearray(path.read_bytes())
    damaged[-1] ^= 0xFF
    path.write_bytes(bytes(damaged))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert path.stat().st_ino == stat.st_ino
    assert verified_checkpoint(tmp_path, info, memo=memo) is None


async def test_a_resumes_start_hashes_its_newest_checkpoint_once_for_its_checks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The start's fit, resume point, journal cover and graft-log checks each hashed the newest checkpoint (with the
    run-id check and the trainer's load, six SHA-256 passes over it at every resume); now the run-id check, the other
    checks together, and the trainer's load: three (a rollback or a trainer restart would load it again)."""
    config = quiet_config(tmp_path)
    config = msgspec.structs.replace(config, urza=msgspec.structs.replace(config.urza, root=str(tmp_path / "urza")))
    run_dir = tmp_path / "run"
    summary = await (await esper.start(config, run_dir=run_dir)).wait()
    assert summary.status == "completed"
    [newest] = read_manifest(run_dir / "checkpoints")
    hashed = _counting_hashes(monkeypatch)
    longer = msgspec.structs.replace(config, tolaria=msgspec.structs.replace(config.tolaria, epochs=2))
    resumed = await (await esper.start(longer, resume=run_dir)).wait()
    assert resumed.status == "completed"
    assert resumed.training is not None
    assert resumed.training.rollbacks == 0
    assert all(actor.restarts == 0 for actor in resumed.actors)
    assert hashed == [newest.size_bytes] * 3, hashed


def test_a_deleted_checkpoint_is_said_missing(tmp_path: Path) -> None:
    """It was said to be "not a regular file"."""
    _written(tmp_path, 20, 40)
    (tmp_path / "step-40.pt").unlink()
    with structlog.testing.capture_logs() as logs:
        newest = latest_good(tmp_path)
    assert newest is not None
    assert newest.global_step == 20
    [said] = [entry for entry in logs if entry["event"] == "checkpoint_corrupt"]
    assert said["error"].startswith("missing, the manifest says ")
