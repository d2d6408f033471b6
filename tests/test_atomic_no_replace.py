"""An atomic write told not to replace leaves an existing file as it is, on file systems with and without hard links."""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING

import pytest

from esper.runtime.atomic_write import atomic_write_bytes

if TYPE_CHECKING:
    from pathlib import Path


def test_a_new_file_is_written_and_an_existing_one_is_kept(tmp_path: Path) -> None:
    target = tmp_path / "model.safetensors"
    atomic_write_bytes(target, b"first", replace=False)
    assert target.read_bytes() == b"first"
    with pytest.raises(FileExistsError):
        atomic_write_bytes(target, b"second", replace=False)
    assert target.read_bytes() == b"first"
    assert os.listdir(tmp_path) == ["model.safetensors"]  # neither write left its temp file
    atomic_write_bytes(target, b"third")
    assert target.read_bytes() == b"third"


def test_a_file_system_without_hard_links_still_gets_the_file_and_keeps_an_existing_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """vfat and some network mounts refuse link(); the write must not fail there for it."""

    def no_links(src: str, dst: str) -> None:
        raise OSError(errno.EPERM, os.strerror(errno.EPERM), src, None, dst)

    monkeypatch.setattr(os, "link", no_links)
    target = tmp_path / "model.safetensors"
    atomic_write_bytes(target, b"first", replace=False)
    assert target.read_bytes() == b"first"
    with pytest.raises(FileExistsError):
        atomic_write_bytes(target, b"second", replace=False)
    assert (target.read_bytes(), os.listdir(tmp_path)) == (b"first", ["model.safetensors"])


def test_a_failing_link_on_a_file_system_with_hard_links_is_the_writes_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any failed link() was taken for a file system without hard links, and the write fell back to a look and a
    rename, which a file made in between loses to."""

    def disk_full(src: str, dst: str) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), src, None, dst)

    monkeypatch.setattr(os, "link", disk_full)
    target = tmp_path / "model.safetensors"
    with pytest.raises(OSError, match="No space left on device"):
        atomic_write_bytes(target, b"first", replace=False)
    assert os.listdir(tmp_path) == []
