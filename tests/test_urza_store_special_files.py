"""Urza's store where a blob should be and something else is (a FIFO, a device, a directory).

A corrupt blob, quarantined like a bad digest, and never opened (opening a FIFO blocked until a writer came: the run
hung for good)."""

from __future__ import annotations

import io
import itertools
import os
from typing import TYPE_CHECKING

import pytest

from actors.urza.artifact import ArtifactCorrupt
from actors.urza.store import UrzaStore
from tests.test_urza_artifact import linear_blob

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path


@pytest.fixture
def store(tmp_path: Path) -> Iterator[UrzaStore]:
    ticks = itertools.count(1000)
    with UrzaStore(tmp_path / "urza", now=lambda: float(next(ticks))) as opened:
        yield opened


@pytest.fixture
def never_opened(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], None]:
    """Fail the test at once, rather than hang it, if the path given is ever opened (os.open or io.open)."""
    guarded: list[str] = []
    real_os_open, real_io_open = os.open, io.open

    def check(target: object) -> None:
        if isinstance(target, str | os.PathLike) and os.fspath(target) in guarded:
            raise AssertionError(f"{target} was opened")

    def os_open(path: str | os.PathLike[str], *args: int, **kwargs: int) -> int:
        check(path)
        return real_os_open(path, *args, **kwargs)

    def io_open(file: str | os.PathLike[str], *args: object, **kwargs: object) -> object:
        check(file)
        return real_io_open(file, *args, **kwargs)  # type: ignore[call-overload]  # the caller's own arguments

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(io, "open", io_open)
    return lambda path: guarded.append(os.fspath(path))


def _fifo_in_place_of_the_blob(store: UrzaStore) -> str:
    sha = store.put(linear_blob()).sha256
    store.blob_path(sha).unlink()
    os.mkfifo(store.blob_path(sha))
    return sha


def test_a_fifo_in_place_of_a_blob_is_quarantined_unopened_by_load(
    store: UrzaStore, never_opened: Callable[[Path], None]
) -> None:
    sha = _fifo_in_place_of_the_blob(store)
    never_opened(store.blob_path(sha))
    with pytest.raises(ArtifactCorrupt) as caught:
        store.load(sha)
    assert caught.value.why == "not a regular file: a FIFO"
    entry = store.entry(sha)
    assert entry is not None
    assert (entry.status, entry.reason) == ("quarantined", "not a regular file: a FIFO")
    assert not store.blob_path(sha).exists()


def test_a_fifo_in_place_of_a_blob_is_quarantined_unopened_by_verify_and_the_integrity_check(
    store: UrzaStore, never_opened: Callable[[Path], None]
) -> None:
    sha = _fifo_in_place_of_the_blob(store)
    never_opened(store.blob_path(sha))
    report = store.check_integrity()
    assert report.corrupt == (sha,)
    assert store.verify(sha) == "not a regular file: a FIFO"
    assert store.quarantine_path(sha).exists()


def test_a_put_replaces_a_fifo_in_place_of_its_blob_without_opening_it(
    store: UrzaStore, never_opened: Callable[[Path], None]
) -> None:
    sha = _fifo_in_place_of_the_blob(store)
    never_opened(store.blob_path(sha))
    store.put(linear_blob())
    assert store.blob_path(sha).is_file()


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (lambda path: path.mkdir(), "a directory"),
        (lambda path: path.symlink_to("/dev/zero"), "a character device"),  # an endless read, were it read
    ],
    ids=["directory", "device"],
)
def test_anything_else_but_a_regular_file_is_a_corrupt_blob(
    store: UrzaStore, never_opened: Callable[[Path], None], make: Callable[[Path], None], kind: str
) -> None:
    sha = store.put(linear_blob()).sha256
    store.blob_path(sha).unlink()
    make(store.blob_path(sha))
    never_opened(store.blob_path(sha))
    with pytest.raises(ArtifactCorrupt) as caught:
        store.load(sha)
    assert caught.value.why == f"not a regular file: {kind}"
