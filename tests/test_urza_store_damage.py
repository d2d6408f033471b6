"""Urza's store against a damaged catalogue: a damaged row is dropped (counted, named, warned once), never raised."""

from __future__ import annotations

import itertools
import sqlite3
from typing import TYPE_CHECKING

import pytest
import structlog

from actors.urza.artifact import ArtifactNotFound
from actors.urza.store import UrzaStore
from tests.test_urza_artifact import linear_blob

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture
def store(tmp_path: Path) -> Iterator[UrzaStore]:
    ticks = itertools.count(1000)
    with UrzaStore(tmp_path / "urza", now=lambda: float(next(ticks))) as opened:
        yield opened


def damage(store: UrzaStore, statement: str, *args: object) -> None:
    with sqlite3.connect(store.catalog_path) as conn:
        conn.execute(statement, args)


def test_a_metadata_byte_that_is_not_utf8_drops_that_row_only(store: UrzaStore) -> None:
    """A flipped bit in one row's metadata text raised OperationalError from every query that met the row (all of
    them: fetchall decodes every row), so Tezzeret failed at start, again after each restart, and the run failed."""
    bad = store.put(linear_blob(seed=1)).sha256
    good = store.put(linear_blob(seed=2)).sha256
    text = store.entry(bad)
    assert text is not None
    flipped = bytearray(text.metadata.blueprint_id.join(['{"blueprint_id":"', '"}']).encode())
    flipped[5] ^= 0xFF
    damage(store, "UPDATE artifacts SET metadata = CAST(? AS TEXT) WHERE sha256 = ?", bytes(flipped), bad)
    with structlog.testing.capture_logs() as logs:
        assert [e.sha256 for e in store.entries()] == [good]
        assert [e.sha256 for e in store.entries()] == [good]  # dropped: not met (nor warned) again
    assert [(e["event"], e["table"], e["artifact"]) for e in logs] == [("urza_row_dropped", "artifacts", bad)]
    assert "column metadata: byte 5 of" in logs[0]["reason"]
    assert "is not UTF-8" in logs[0]["reason"]
    assert store.statistics().integrity_failures == 1
    assert store.put(linear_blob(seed=1)).status == "ready"  # the next compile pass writes it again
    assert sorted(e.sha256 for e in store.entries()) == sorted([bad, good])


def test_a_column_of_the_wrong_type_drops_the_row(store: UrzaStore) -> None:
    """A text size raised TypeError ('<' between int and str) in the blob check, failing Tezzeret at every start."""
    sha = store.put(linear_blob()).sha256
    damage(store, "UPDATE artifacts SET size_bytes = 'abc' WHERE sha256 = ?", sha)
    with structlog.testing.capture_logs() as logs:
        assert store.entry(sha) is None
    assert [e["event"] for e in logs] == ["urza_row_dropped"]
    assert "$.size_bytes" in logs[0]["reason"]
    assert store.put(linear_blob()).size_bytes == len(linear_blob())


def test_a_damaged_key_is_dropped_by_its_rowid(store: UrzaStore) -> None:
    sha = store.put(linear_blob()).sha256
    damage(store, "UPDATE artifacts SET sha256 = CAST(? AS TEXT) WHERE sha256 = ?", b"\xff" + sha[1:].encode(), sha)
    with structlog.testing.capture_logs() as logs:
        assert store.entries() == ()
    assert [e["event"] for e in logs] == ["urza_row_dropped"]
    assert "column sha256" in logs[0]["reason"]
    with sqlite3.connect(store.catalog_path) as conn:
        assert conn.execute("SELECT count(*) FROM artifacts").fetchone() == (0,)


def test_resolve_finds_the_good_row_behind_a_damaged_newer_one(store: UrzaStore) -> None:
    old = store.put(linear_blob(seed=1)).sha256
    new = store.put(linear_blob(seed=2)).sha256
    damage(store, "UPDATE artifacts SET metadata = '{}' WHERE sha256 = ?", new)
    with structlog.testing.capture_logs():
        assert store.resolve("bp-linear").sha256 == old


def test_a_row_naming_another_blueprints_blob_is_dropped_not_served(store: UrzaStore) -> None:
    """Rows swapped between two blueprints: each blob passed its SHA-256 check, so the start pass kept the rows and a
    germination loaded one blueprint's weights into the other's builder (ModuleMismatch, the seed culled)."""
    first = store.put(linear_blob(blueprint_id="bp-a")).sha256
    second = store.put(linear_blob(blueprint_id="bp-b", seed=1)).sha256
    damage(store, "UPDATE artifacts SET sha256 = 'x' WHERE sha256 = ?", first)
    damage(store, "UPDATE artifacts SET sha256 = ? WHERE sha256 = ?", first, second)
    damage(store, "UPDATE artifacts SET sha256 = ? WHERE sha256 = 'x'", second)
    assert store.resolve("bp-a").sha256 == second  # the catalogue alone cannot tell
    with structlog.testing.capture_logs() as logs, pytest.raises(ArtifactNotFound) as caught:
        store.load(second)
    assert "its catalogue row did not match its verified blob" in str(caught.value)
    assert "catalogued as 'bp-a'" in str(caught.value)
    assert "the blob is 'bp-b'" in str(caught.value)
    assert [e["event"] for e in logs] == ["urza_row_dropped"]
    assert store.entry(second) is None
    reason = store.verify(first)  # the start pass's check (publish) drops the other row
    assert reason is not None
    assert reason.startswith("catalogue row dropped: catalogued as 'bp-b'")
    assert store.entries() == ()
    assert store.blob_path(first).exists()  # the blobs are good: nothing quarantined
    assert store.blob_path(second).exists()
    assert store.put(linear_blob(blueprint_id="bp-a")).sha256 == first
    assert store.resolve("bp-a").sha256 == first
    assert store.load(first).metadata.blueprint_id == "bp-a"


def test_a_put_mends_a_row_that_disagrees_with_its_blob(store: UrzaStore) -> None:
    sha = store.put(linear_blob()).sha256
    damage(store, "UPDATE artifacts SET size_bytes = 7 WHERE sha256 = ?", sha)
    entry = store.put(linear_blob())
    assert (entry.size_bytes, entry.status) == (len(linear_blob()), "ready")
    assert store.statistics().integrity_failures == 0


def test_a_wrong_size_in_the_row_does_not_quarantine_a_good_blob(store: UrzaStore) -> None:
    """The size was compared before the hash, so a row's damaged size quarantined the good blob, every run."""
    sha = store.put(linear_blob()).sha256
    damage(store, "UPDATE artifacts SET size_bytes = 7 WHERE sha256 = ?", sha)
    with structlog.testing.capture_logs():
        assert store.verify(sha) == f"catalogue row dropped: catalogued 7 bytes, the blob has {len(linear_blob())}"
    assert store.blob_path(sha).exists()
    assert not store.quarantine_path(sha).exists()


def test_a_damaged_blueprint_standing_is_dropped(store: UrzaStore) -> None:
    store.set_blueprint_status("bp-linear", "failed", "compile failed")
    damage(store, "UPDATE blueprints SET reason = CAST(? AS TEXT)", b"compile \xfe failed")
    with structlog.testing.capture_logs() as logs:
        assert store.blueprint_status("bp-linear") is None
    assert [(e["event"], e["table"], e["blueprint_id"]) for e in logs] == [
        ("urza_row_dropped", "blueprints", "bp-linear")
    ]
    assert "column reason" in logs[0]["reason"]
    store.set_blueprint_status("bp-linear", "failed", "again")
    status = store.blueprint_status("bp-linear")
    assert status is not None
    assert status.reason == "again"
