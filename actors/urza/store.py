"""Urza's store: content-addressed artifact blobs plus a SQLite catalogue, SHA-256 verified before every decode.

On-disk layout under ``root`` (config ``urza.root``, default ``.esper/urza/``, shared by runs and processes)::

    catalog.sqlite         WAL-mode catalogue: tables ``artifacts`` and ``blueprints`` (schema in catalog.py)
    blobs/<sha256>         one artifact blob each (see actors.urza.artifact), named by the SHA-256 of its bytes
    blobs/.tmp-<pid>-*     a blob being written; renamed into place once complete and fsynced
    quarantine/<sha256>    blobs that failed verification, moved aside for inspection
    publish.lock           held (flock) by a publisher from its look for an equal artifact to its put; waited for
                           a few seconds at most (a stopped holder), then a publish goes ahead without it

Crash safety: a blob is written to a temp file in ``blobs/``, fsynced, renamed onto its final name and the directory
fsynced, so a final name only ever holds a complete blob; the catalogue row is inserted after the rename, so a row
always names a blob that was complete (an orphan blob without a row is harmless: the next put of it adds the row).
Temp files left by dead processes are removed when a store opens.

Concurrency: several processes and threads may use one root. Each write is one short ``BEGIN IMMEDIATE`` transaction
(busy_timeout waits for the lock), rows are keyed by content so a repeated put is a no-op, and no lock is held while
a blob is read, hashed or written. Every method here blocks (disk, fsync, SQLite): call them on a lane (``io``).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, final

import msgspec

from actors.urza.artifact import (
    ArtifactCorrupt,
    ArtifactFailed,
    ArtifactFormatError,
    ArtifactNotFound,
    ArtifactQuarantined,
    BlobMissing,
    BlobUnreadable,
    decode_artifact,
    decode_metadata,
    sha256_hex,
)
from actors.urza.blob_files import fsync_dir, read_blob
from actors.urza.catalog import COLUMNS, Catalog
from actors.urza.publish_lock import PublishLock
from actors.urza.records import (
    ArtifactEntry,
    BlueprintState,
    BlueprintStatus,
    IntegrityReport,
    LoadedArtifact,
    StoreStatistics,
    check_sha,
    is_sha,
)
from actors.urza.rows import blob_problem, row_mismatch
from esper.runtime.atomic_write import remove_dead_temp_files, shared_file_mode, temp_prefix

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from types import TracebackType


_PUBLISH_LOCK = "publish.lock"
_PUT_ATTEMPTS = 3
# The columns a put derives from the blob (its content address fixes them), so a put of the blob mends a damaged row.
_BLOB_COLUMNS = ("blueprint_id", "signature_key", "size_bytes", "metadata")
_FROM_BLOB = ", ".join(f"{c} = excluded.{c}" for c in _BLOB_COLUMNS)
_DIFFERS_FROM_BLOB = " OR ".join(f"artifacts.{c} IS NOT excluded.{c}" for c in _BLOB_COLUMNS)


@final
class UrzaStore:
    """A content-addressed artifact store with a SQLite catalogue. Blocking throughout: use it from a lane.

    Thread-safe (one connection behind a lock held only for single SQL statements or transactions, never across
    blob I/O) and safe to share a root with other processes.
    """

    def __init__(
        self,
        root: Path,
        *,
        now: Callable[[], float] = time.time,
        busy_timeout_ms: int = 5000,
        before_publish: Callable[[Path], None] | None = None,
        publish_lock: Callable[[Path], PublishLock] = PublishLock,
    ) -> None:
        """Open (creating if needed) the store at ``root`` and remove temp files left by dead processes.

        Args:
            root: the store directory (config ``urza.root``).
            now: wall clock for the rows' created/updated times, in seconds.
            busy_timeout_ms: how long a statement waits for another process's write lock.
            before_publish: test hook, called with the fsynced temp file of a blob just before it is renamed.
            publish_lock: makes the lock publishing() holds from the lock file's path (a test injects its clock).

        Raises:
            OSError: the root cannot be created; sqlite3.Error: the catalogue cannot be opened.
        """
        self._root = root
        self._blobs = root / "blobs"
        self._quarantine = root / "quarantine"
        self._now = now
        self._before_publish = before_publish
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._quarantine.mkdir(parents=True, exist_ok=True)
        self._publish_lock = publish_lock(root / _PUBLISH_LOCK)
        self._puts = 0
        self._puts_new = 0
        self._loads = 0
        self._catalog = Catalog(root / "catalog.sqlite", now=now, busy_timeout_ms=busy_timeout_ms)
        try:
            self._temp_files_removed = remove_dead_temp_files(self._blobs)
        except BaseException:
            self._catalog.close()
            raise

    # ------------------------------------------------------------------ paths and lifecycle

    @property
    def root(self) -> Path:
        return self._root

    @contextlib.contextmanager
    def publishing(self) -> Iterator[None]:
        """An exclusive lock across processes (and threads) on this root, for a publisher's look for an equal artifact
        and its put: two runs compiling one blueprint at once on a cold store stored it twice (equal weights, other
        validation timings). Waits for a holder at most ``PUBLISH_LOCK_WAIT_S``, then publishes unlocked with a
        warning (a stopped holder hung every run on the store); see actors.urza.publish_lock."""
        with self._publish_lock.held():
            yield

    @property
    def catalog_path(self) -> Path:
        return self._catalog.path

    def blob_path(self, artifact: str) -> Path:
        """``<root>/blobs/<sha256>``. Raises ValueError if ``artifact`` is not a SHA-256 hex digest."""
        return self._blobs / check_sha(artifact)

    def quarantine_path(self, artifact: str) -> Path:
        """``<root>/quarantine/<sha256>``. Raises ValueError if ``artifact`` is not a SHA-256 hex digest."""
        return self._quarantine / check_sha(artifact)

    def close(self) -> None:
        """Close the catalogue connection; idempotent."""
        self._catalog.close()

    def __enter__(self) -> UrzaStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def statistics(self) -> StoreStatistics:
        """This object's counters; takes the connection lock only for the copy."""
        with self._catalog.lock:
            return StoreStatistics(
                puts=self._puts,
                puts_new=self._puts_new,
                loads=self._loads,
                integrity_failures=self._catalog.integrity_failures,
                temp_files_removed=self._temp_files_removed,
            )

    # ------------------------------------------------------------------ writing

    def put(self, blob: bytes) -> ArtifactEntry:
        """Store an artifact blob and catalogue it as ready; returns its entry. Idempotent: putting the same bytes
        again writes nothing new (and repairs the blob if the row had been quarantined for a bad copy, and the row's
        columns if they no longer match the blob's: a damaged row).

        The blob is decoded (metadata and safetensors) before anything is written, so the store never holds an
        artifact that cannot be loaded. An artifact marked failed stays failed.

        Raises:
            ArtifactFormatError: the bytes are not a valid artifact.
            OSError: the blob could not be written (nothing is catalogued then).
        """
        sha = sha256_hex(blob)
        metadata = decode_artifact(blob, name=sha).metadata
        meta_json = msgspec.json.encode(metadata).decode()
        for _ in range(_PUT_ATTEMPTS):
            self._ensure_blob(sha, blob)
            stamp = self._now()
            with self._catalog.write() as conn:
                # A concurrent quarantine may have moved the blob away since we wrote it; write it again then,
                # so a ready row never names a missing blob.
                if not self.blob_path(sha).exists():
                    continue
                cursor = conn.execute(
                    f"INSERT INTO artifacts ({COLUMNS}) VALUES (?, ?, ?, ?, ?, 'ready', '', ?, ?) "
                    "ON CONFLICT (sha256) DO UPDATE SET "
                    "status = CASE artifacts.status WHEN 'quarantined' THEN 'ready' ELSE artifacts.status END, "
                    "reason = CASE artifacts.status WHEN 'quarantined' THEN '' ELSE artifacts.reason END, "
                    f"{_FROM_BLOB}, updated_at = excluded.updated_at "
                    f"WHERE artifacts.status = 'quarantined' OR {_DIFFERS_FROM_BLOB}",
                    (sha, metadata.blueprint_id, metadata.signature_key, len(blob), meta_json, stamp, stamp),
                )
                inserted = cursor.rowcount > 0
            with self._catalog.lock:
                self._puts += 1
                self._puts_new += int(inserted)
            entry = self.entry(sha)
            assert entry is not None  # rows are never deleted
            return entry
        raise BlobUnreadable(sha, f"artifact {sha}: blob {self.blob_path(sha)} kept vanishing while being stored")

    def _ensure_blob(self, sha: str, blob: bytes) -> None:
        final_path = self.blob_path(sha)
        with contextlib.suppress(FileNotFoundError):
            existing = read_blob(final_path, len(blob))  # a FIFO there is replaced, not read (which blocked for good)
            if isinstance(existing, bytes) and sha256_hex(existing) == sha:
                return
        fd, tmp_name = tempfile.mkstemp(prefix=temp_prefix(), dir=self._blobs)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as handle:
                # mkstemp makes it 0600; a shared root is read by other users' runs, so the umask decides, as for
                # the catalogue and the lock file.
                os.fchmod(handle.fileno(), shared_file_mode())
                handle.write(blob)
                handle.flush()
                os.fsync(handle.fileno())
            if self._before_publish is not None:
                self._before_publish(tmp)
            os.replace(tmp, final_path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(self._blobs)

    # ------------------------------------------------------------------ the catalogue (catalog.py)

    def mark_failed(self, artifact: str, reason: str) -> None:
        """Mark an artifact failed (its module did not validate, say); loads then raise ArtifactFailed.

        Raises:
            ArtifactNotFound: no row for the artifact.
        """
        self._catalog.mark_failed(artifact, reason)

    def set_blueprint_status(self, blueprint_id: str, state: BlueprintState, reason: str = "") -> None:
        """Record a blueprint's standing (Karn's quarantine, Tezzeret's failed compile, or ``ok`` to clear it)."""
        self._catalog.set_blueprint_status(blueprint_id, state, reason)

    def entry(self, artifact: str) -> ArtifactEntry | None:
        """The catalogue row of an artifact, or None."""
        return self._catalog.entry(artifact)

    def entries(self, blueprint_id: str | None = None) -> tuple[ArtifactEntry, ...]:
        """Every catalogue row (of one blueprint if given), oldest first."""
        return self._catalog.entries(blueprint_id)

    def blueprint_status(self, blueprint_id: str) -> BlueprintStatus | None:
        """A blueprint's recorded standing, or None if nothing was ever recorded for it."""
        return self._catalog.blueprint_status(blueprint_id)

    def resolve(self, blueprint_id: str, signature_key: str | None = None) -> ArtifactEntry:
        """The newest ready artifact of a blueprint (for one slot signature if given).

        Raises:
            BlueprintUnavailable: the blueprint is marked failed or quarantined.
            ArtifactNotFound: it has no ready artifact (for that signature).
        """
        return self._catalog.resolve(blueprint_id, signature_key)

    # ------------------------------------------------------------------ loading

    def load(self, artifact: str) -> LoadedArtifact:
        """Read an artifact's blob, verify its size and SHA-256, and only then decode it.

        A blob that fails verification is moved to ``<root>/quarantine/<sha256>`` and its row marked quarantined
        before ArtifactCorrupt is raised; nothing from it is decoded.

        Raises:
            ValueError: ``artifact`` is not a SHA-256 hex digest.
            ArtifactNotFound: no catalogue row. ArtifactQuarantined / ArtifactFailed: the row says so.
            BlobMissing: the row exists but the blob file does not. BlobUnreadable: reading it failed.
            ArtifactCorrupt: size or SHA-256 mismatch (quarantined now).
            ArtifactFormatError: the verified bytes do not decode (the row is marked failed).
            ArtifactNotFound: also when the row does not match its verified blob (another blueprint's metadata, a
                wrong size: a damaged row); the row is dropped then, and nothing is served from it.
        """
        entry = self.entry(artifact)
        path = self.blob_path(artifact)
        if entry is None:
            raise ArtifactNotFound(artifact, f"artifact {artifact} is not in the catalogue {self.catalog_path}")
        if entry.status == "quarantined":
            raise ArtifactQuarantined(
                artifact, f"artifact {artifact} of {entry.blueprint_id!r} is quarantined ({entry.reason}) at {path}"
            )
        if entry.status == "failed":
            raise ArtifactFailed(artifact, f"artifact {artifact} of {entry.blueprint_id!r} is failed: {entry.reason}")
        try:
            data = read_blob(path, entry.size_bytes)
        except FileNotFoundError as err:
            raise BlobMissing(
                artifact, f"artifact {artifact} of {entry.blueprint_id!r} is catalogued but its blob {path} is missing"
            ) from err
        except OSError as err:
            raise BlobUnreadable(artifact, f"artifact {artifact}: cannot read blob {path}: {err}") from err
        why = data if isinstance(data, str) else blob_problem(data, entry)
        if why or isinstance(data, str):
            moved_to = self._quarantine_blob(artifact, why)
            raise ArtifactCorrupt(
                artifact,
                f"artifact {artifact} of {entry.blueprint_id!r}: blob {path} failed verification ({why}); "
                f"quarantined to {moved_to}",
                blueprint_id=entry.blueprint_id,
                quarantine_path=moved_to,
                why=why,
            )
        try:
            decoded = decode_artifact(data, name=artifact)
        except ArtifactFormatError as err:
            self.mark_failed(artifact, f"does not decode: {err.detail}")
            raise
        mismatch = row_mismatch(entry, len(data), decoded.metadata)
        if mismatch:
            self._catalog.drop_row_of(entry, mismatch)
            raise ArtifactNotFound(
                artifact,
                f"artifact {artifact}: its catalogue row did not match its verified blob {path} ({mismatch}); "
                "row dropped (the next put of the blob writes it again)",
            )
        with self._catalog.lock:
            self._loads += 1
        return LoadedArtifact(entry=entry, tensors=decoded.tensors)

    def verify(self, artifact: str) -> str | None:
        """Why a ready artifact's blob cannot be served (missing, unreadable, wrong size or SHA-256, a catalogue row
        that does not match it), or None when it can. A corrupt blob is quarantined, and a mismatched row dropped, as
        a load would; only the blob's metadata is decoded.

        Raises:
            ValueError: ``artifact`` is not a SHA-256 hex digest. ArtifactNotFound: no catalogue row.
        """
        entry = self.entry(artifact)
        if entry is None:
            raise ArtifactNotFound(artifact, f"artifact {artifact} is not in the catalogue {self.catalog_path}")
        if entry.status != "ready":
            return entry.status
        try:
            data = read_blob(self.blob_path(artifact), entry.size_bytes)
        except FileNotFoundError:
            return "blob missing"
        except OSError as err:
            return f"blob unreadable: {err}"
        why = data if isinstance(data, str) else blob_problem(data, entry)
        if why or isinstance(data, str):
            self._quarantine_blob(artifact, why)
            return why
        try:
            metadata, _ = decode_metadata(data, name=artifact)
        except ArtifactFormatError:
            return None  # the blob's own fault, not the row's: a load marks it failed
        mismatch = row_mismatch(entry, len(data), metadata)
        if mismatch:
            self._catalog.drop_row_of(entry, mismatch)
            return f"catalogue row dropped: {mismatch}"
        return None

    def _quarantine_blob(self, artifact: str, why: str) -> Path:
        source = self.blob_path(artifact)
        dest = self.quarantine_path(artifact)
        with self._catalog.write() as conn:
            # Inside the write transaction, so a concurrent put either sees the blob gone and rewrites it, or
            # committed before us and its good copy is quarantined with a row that says so: never ready and missing.
            with contextlib.suppress(FileNotFoundError):
                os.replace(source, dest)
                fsync_dir(self._blobs)
            conn.execute(
                "UPDATE artifacts SET status = 'quarantined', reason = ?, updated_at = ? WHERE sha256 = ?",
                (why, self._now(), artifact),
            )
            self._catalog.integrity_failures += 1
        return dest

    def check_integrity(self, *, quarantine: bool = False) -> IntegrityReport:
        """Verify the blob of every ready row (exists, right size and SHA-256) and list blobs with no row.

        Reads every blob: seconds for a large store. With ``quarantine`` the corrupt ones are quarantined as a load
        would; otherwise nothing changes.
        """
        entries = [e for e in self.entries() if e.status == "ready"]
        missing: list[str] = []
        corrupt: list[str] = []
        for entry in entries:
            try:
                data = read_blob(self.blob_path(entry.sha256), entry.size_bytes)
            except FileNotFoundError:
                missing.append(entry.sha256)
                continue
            if isinstance(data, str) or blob_problem(data, entry):
                corrupt.append(entry.sha256)
                if quarantine:
                    self._quarantine_blob(entry.sha256, "failed integrity check")
        known = {e.sha256 for e in self.entries()}
        orphans = sorted(p.name for p in self._blobs.iterdir() if is_sha(p.name) and p.name not in known)
        return IntegrityReport(
            checked=len(entries),
            ok=len(entries) - len(missing) - len(corrupt),
            missing=tuple(missing),
            corrupt=tuple(corrupt),
            orphan_blobs=tuple(orphans),
        )
