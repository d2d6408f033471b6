"""Urza's store: put/load round trips, idempotent puts, and every broken-blob case ending in a clear typed error."""

from __future__ import annotations

import itertools
import os
import sqlite3
from typing import TYPE_CHECKING

import pytest
import structlog
import torch

from actors.urza.artifact import (
    ArtifactCorrupt,
    ArtifactFailed,
    ArtifactFormatError,
    ArtifactNotFound,
    ArtifactQuarantined,
    BlobMissing,
    BlueprintUnavailable,
    sha256_hex,
)
from actors.urza.store import UrzaStore
from schemas.domain_enums import KernelErrorReason
from tests.test_urza_artifact import linear_artifact, linear_blob, linear_state

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture
def store(tmp_path: Path) -> Iterator[UrzaStore]:
    ticks = itertools.count(1000)
    with UrzaStore(tmp_path / "urza", now=lambda: float(next(ticks))) as opened:
        yield opened


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_layout_and_wal_mode(store: UrzaStore) -> None:
    sha = store.put(linear_blob()).sha256
    assert (store.root / "blobs" / sha).is_file()
    assert (store.root / "quarantine").is_dir()
    with sqlite3.connect(store.catalog_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    conn.close()
    assert {"artifacts", "blueprints"} <= tables


def test_put_then_load_is_bit_exact(store: UrzaStore) -> None:
    metadata, blob = linear_artifact(in_features=6, out_features=2, seed=5)
    entry = store.put(blob)
    assert entry.sha256 == sha256_hex(blob)
    assert (entry.status, entry.blueprint_id, entry.signature_key) == ("ready", "bp-linear", "flat/6/float32")
    assert entry.size_bytes == len(blob)
    loaded = store.load(entry.sha256)
    assert loaded.metadata == metadata
    for name, tensor in linear_state(6, 2, seed=5).items():
        assert torch.equal(loaded.tensors[name], tensor)
    assert store.statistics().loads == 1


def test_put_is_idempotent(store: UrzaStore) -> None:
    blob = linear_blob()
    first = store.put(blob)
    second = store.put(blob)
    assert first == second
    assert len(store.entries()) == 1
    stats = store.statistics()
    assert (stats.puts, stats.puts_new) == (2, 1)
    assert sorted(p.name for p in (store.root / "blobs").iterdir()) == [first.sha256]


def test_put_refuses_bytes_that_are_not_an_artifact(store: UrzaStore) -> None:
    with pytest.raises(ArtifactFormatError):
        store.put(b"\x80\x04 a pickle, say")
    assert store.entries() == ()
    assert list((store.root / "blobs").iterdir()) == []


def test_flipped_byte_is_detected_and_quarantined(store: UrzaStore) -> None:
    sha = store.put(linear_blob()).sha256
    blob_path = store.blob_path(sha)
    flip_byte(blob_path, offset=len(blob_path.read_bytes()) - 3)  # a weight byte: decoding alone would not notice
    with pytest.raises(ArtifactCorrupt) as caught:
        store.load(sha)
    err = caught.value
    assert err.reason is KernelErrorReason.CHECKSUM_MISMATCH
    assert err.why == "sha256 mismatch"
    assert sha in str(err)
    assert str(blob_path) in str(err)
    assert "\n" not in str(err)
    assert not blob_path.exists()
    assert err.quarantine_path == store.quarantine_path(sha)
    assert err.quarantine_path.is_file()
    entry = store.entry(sha)
    assert entry is not None
    assert (entry.status, entry.reason) == ("quarantined", "sha256 mismatch")
    assert store.statistics().integrity_failures == 1
    with pytest.raises(ArtifactQuarantined, match="quarantined") as again:
        store.load(sha)
    assert again.value.reason is KernelErrorReason.CHECKSUM_MISMATCH
    with pytest.raises(ArtifactNotFound):
        store.resolve("bp-linear")


def test_putting_the_good_bytes_again_repairs_a_quarantined_artifact(store: UrzaStore) -> None:
    blob = linear_blob()
    sha = store.put(blob).sha256
    flip_byte(store.blob_path(sha), offset=20)
    with pytest.raises(ArtifactCorrupt):
        store.load(sha)
    assert store.put(blob).status == "ready"
    assert store.load(sha).metadata.blueprint_id == "bp-linear"


def test_truncated_blob_is_quarantined_with_its_sizes(store: UrzaStore) -> None:
    blob = linear_blob()
    sha = store.put(blob).sha256
    store.blob_path(sha).write_bytes(blob[:40])
    with pytest.raises(ArtifactCorrupt, match=f"truncated: 40 of {len(blob)} bytes") as caught:
        store.load(sha)
    assert caught.value.reason is KernelErrorReason.CHECKSUM_MISMATCH
    assert store.quarantine_path(sha).read_bytes() == blob[:40]


def test_verify_names_what_is_wrong_with_a_blob_and_quarantines_a_corrupt_one(store: UrzaStore) -> None:
    blob = linear_blob()
    sha = store.put(blob).sha256
    assert store.verify(sha) is None
    store.blob_path(sha).unlink()
    assert store.verify(sha) == "blob missing"
    store.blob_path(sha).write_bytes(blob[:40])
    assert store.verify(sha) == f"truncated: 40 of {len(blob)} bytes"
    assert store.quarantine_path(sha).read_bytes() == blob[:40]
    assert store.verify(sha) == "quarantined"
    with pytest.raises(ArtifactNotFound):
        store.verify(sha256_hex(b"never stored"))


def test_unknown_artifact_is_not_found(store: UrzaStore) -> None:
    missing = sha256_hex(b"never stored")
    with pytest.raises(ArtifactNotFound) as caught:
        store.load(missing)
    assert caught.value.reason is KernelErrorReason.NOT_FOUND
    assert missing in str(caught.value)
    assert str(store.catalog_path) in str(caught.value)


def test_blob_without_a_row_is_not_served(store: UrzaStore) -> None:
    blob = linear_blob()
    sha = sha256_hex(blob)
    store.blob_path(sha).write_bytes(blob)
    with pytest.raises(ArtifactNotFound):
        store.load(sha)
    assert store.check_integrity().orphan_blobs == (sha,)


def test_row_without_a_blob_is_a_fetch_error_naming_the_path(store: UrzaStore) -> None:
    sha = store.put(linear_blob()).sha256
    os.unlink(store.blob_path(sha))
    with pytest.raises(BlobMissing) as caught:
        store.load(sha)
    err = caught.value
    assert err.reason is KernelErrorReason.FETCH_ERROR
    assert str(err) == f"artifact {sha} of 'bp-linear' is catalogued but its blob {store.blob_path(sha)} is missing"
    assert store.check_integrity().missing == (sha,)
    store.put(linear_blob())
    assert store.check_integrity().clean


def test_artifact_ids_that_are_not_hashes_are_refused_before_touching_files(store: UrzaStore) -> None:
    with pytest.raises(ValueError, match="64 lower-case hex"):
        store.load("../catalog.sqlite")
    with pytest.raises(ValueError, match="64 lower-case hex"):
        store.blob_path("A" * 64)


def test_marked_failed_artifacts_are_not_served(store: UrzaStore) -> None:
    sha = store.put(linear_blob()).sha256
    store.mark_failed(sha, "probe output not finite")
    with pytest.raises(ArtifactFailed, match="probe output not finite"):
        store.load(sha)
    assert store.put(linear_blob()).status == "failed"  # a re-put does not clear a verdict
    with pytest.raises(ArtifactNotFound):
        store.mark_failed(sha256_hex(b"other"), "x")


def test_resolve_picks_the_newest_ready_artifact_for_a_signature(store: UrzaStore) -> None:
    old = store.put(linear_blob(seed=1)).sha256
    new = store.put(linear_blob(seed=2)).sha256
    wide = store.put(linear_blob(seed=3, in_features=8)).sha256
    assert store.resolve("bp-linear", "flat/4/float32").sha256 == new
    assert store.resolve("bp-linear").sha256 == wide
    store.mark_failed(new, "bad")
    assert store.resolve("bp-linear", "flat/4/float32").sha256 == old
    with pytest.raises(ArtifactNotFound, match="no ready artifact for signature 'flat/2/float32'") as caught:
        store.resolve("bp-linear", "flat/2/float32")
    assert caught.value.reason is KernelErrorReason.NOT_FOUND
    assert [e.sha256 for e in store.entries("bp-linear")] == [old, new, wide]


def test_blueprint_status_blocks_and_clears(store: UrzaStore) -> None:
    store.put(linear_blob())
    assert store.blueprint_status("bp-linear") is None
    store.set_blueprint_status("bp-linear", "quarantined", "karn: risk review")
    status = store.blueprint_status("bp-linear")
    assert status is not None
    assert (status.state, status.reason) == ("quarantined", "karn: risk review")
    with pytest.raises(BlueprintUnavailable, match=r"quarantined .*karn: risk review"):
        store.resolve("bp-linear")
    store.set_blueprint_status("bp-linear", "failed", "compile failed")
    with pytest.raises(BlueprintUnavailable, match="is failed"):
        store.resolve("bp-linear")
    store.set_blueprint_status("bp-linear", "ok")
    assert store.resolve("bp-linear").blueprint_id == "bp-linear"


def test_integrity_check_finds_and_optionally_quarantines_corruption(store: UrzaStore) -> None:
    good = store.put(linear_blob(seed=1)).sha256
    bad = store.put(linear_blob(seed=2)).sha256
    flip_byte(store.blob_path(bad), offset=30)
    report = store.check_integrity()
    assert (report.checked, report.ok, report.corrupt, report.clean) == (2, 1, (bad,), False)
    assert store.blob_path(bad).exists()
    assert store.check_integrity(quarantine=True).corrupt == (bad,)
    assert not store.blob_path(bad).exists()
    assert store.check_integrity().clean
    assert store.load(good).entry.status == "ready"


def test_catalogue_survives_reopening(tmp_path: Path) -> None:
    with UrzaStore(tmp_path) as first:
        sha = first.put(linear_blob()).sha256
    with UrzaStore(tmp_path) as second:
        assert second.load(sha).metadata.family == "linear"


def test_a_row_whose_metadata_cannot_be_read_is_dropped_and_written_again_by_the_next_put(store: UrzaStore) -> None:
    """One damaged catalogue row used to make every read of the catalogue raise, so each Tezzeret pass blamed and
    marked the blueprint failed, for good. The row is forgotten (counted, one warning) and the blob's next put, as
    the next compile pass does, writes it again."""
    bad = store.put(linear_blob(seed=1)).sha256
    good = store.put(linear_blob(seed=2)).sha256
    with sqlite3.connect(store.catalog_path) as conn:
        conn.execute("UPDATE artifacts SET metadata = '{}' WHERE sha256 = ?", (bad,))
    with structlog.testing.capture_logs() as logs:
        assert [e.sha256 for e in store.entries()] == [good]
    assert [(e["event"], e["artifact"]) for e in logs] == [("urza_row_dropped", bad)]
    assert "catalogue metadata does not decode" in logs[0]["reason"]
    assert store.entry(bad) is None
    assert store.statistics().integrity_failures == 1
    assert store.put(linear_blob(seed=1)).status == "ready"
    assert sorted(e.sha256 for e in store.entries()) == sorted([bad, good])


def _open_catalogues(root: Path) -> int:
    fd_dir = "/proc/self/fd"
    return sum(1 for fd in os.listdir(fd_dir) if os.path.realpath(f"{fd_dir}/{fd}").startswith(str(root)))


def test_a_catalogue_that_is_not_a_database_leaves_no_connection_open(tmp_path: Path) -> None:
    """The failed open kept its SQLite connection (a descriptor per attempt, until garbage collection)."""
    (tmp_path / "catalog.sqlite").write_bytes(b"not a database, " * 64)
    before = _open_catalogues(tmp_path)
    for _ in range(3):
        with pytest.raises(sqlite3.DatabaseError):
            UrzaStore(tmp_path)
    assert _open_catalogues(tmp_path) == before
