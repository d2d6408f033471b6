"""Urza's SQLite catalogue: the schema, WAL mode, write transactions, and rows read (a damaged one dropped)."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from typing import TYPE_CHECKING, final

import structlog

from actors.urza.artifact import ArtifactFormatError, ArtifactNotFound, BlueprintUnavailable
from actors.urza.records import ArtifactEntry, BlueprintState, BlueprintStatus, check_sha
from actors.urza.rows import COLUMN_NAMES, StandingRow, checked_row, entry_from_row, text_or_marker

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

_log = structlog.get_logger("actors.urza")

_SCHEMA_VERSION = 1
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS artifacts (
        sha256 TEXT PRIMARY KEY,
        blueprint_id TEXT NOT NULL,
        signature_key TEXT NOT NULL,
        size_bytes INTEGER NOT NULL,
        metadata TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('ready', 'quarantined', 'failed')),
        reason TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS artifacts_by_slot ON artifacts (blueprint_id, signature_key, status, created_at)",
    """CREATE TABLE IF NOT EXISTS blueprints (
        blueprint_id TEXT PRIMARY KEY,
        state TEXT NOT NULL CHECK (state IN ('ok', 'failed', 'quarantined')),
        reason TEXT NOT NULL DEFAULT '',
        updated_at REAL NOT NULL)""",
)
COLUMNS = ", ".join(COLUMN_NAMES)
_SELECT = f"SELECT rowid, {COLUMNS} FROM artifacts"  # the rowid drops a row whose own key is what is damaged


def _enable_wal(conn: sqlite3.Connection, timeout_s: float) -> None:
    """Put the catalog in WAL mode (persistent in the file), retrying while another process holds the lock.

    SQLite does not call the busy handler for every lock a journal-mode change meets: two processes opening a new
    catalog at once got "database is locked" at once (seen in CI). So the change is retried with a short backoff
    until ``timeout_s``; a catalog already in WAL mode is left alone.
    """
    deadline = time.monotonic() + timeout_s
    delay_s = 0.005
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() >= deadline:
                raise
            time.sleep(delay_s)  # a retry backoff against another process, not a wait for a test
            delay_s = min(delay_s * 2, 0.1)


@final
class Catalog:
    """The catalogue of an Urza store: tables ``artifacts`` and ``blueprints`` (schema above). Thread-safe and safe to
    share with other processes; every method blocks (SQLite)."""

    def __init__(self, path: Path, *, now: Callable[[], float], busy_timeout_ms: int) -> None:
        """Open (creating if needed) the catalogue at ``path``.

        Args:
            path: ``<root>/catalog.sqlite``.
            now: wall clock for the rows' created/updated times, in seconds.
            busy_timeout_ms: how long a statement waits for another process's write lock.

        Raises:
            sqlite3.Error: the catalogue cannot be opened.
        """
        self.path = path
        self._now = now
        # One connection behind this lock, held only for single SQL statements or transactions (never across blob
        # I/O); the store's counters are kept under it too.
        self.lock = threading.Lock()
        self.integrity_failures = 0
        self._conn = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_ms / 1000
        )
        self._conn.text_factory = text_or_marker
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            _enable_wal(self._conn, busy_timeout_ms / 1000)
            with self.write() as conn:
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
        except BaseException:
            self._conn.close()  # a catalogue that is not a database, or locked: no half-open connection left behind
            raise

    def close(self) -> None:
        """Close the connection; idempotent."""
        with self.lock:
            self._conn.close()

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A ``BEGIN IMMEDIATE`` transaction under the lock: committed when the block ends, rolled back if it raises."""
        with self.lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def mark_failed(self, artifact: str, reason: str) -> None:
        """Mark an artifact failed (its module did not validate, say); loads then raise ArtifactFailed.

        Raises:
            ArtifactNotFound: no row for the artifact.
        """
        with self.write() as conn:
            cursor = conn.execute(
                "UPDATE artifacts SET status = 'failed', reason = ?, updated_at = ? WHERE sha256 = ?",
                (reason, self._now(), check_sha(artifact)),
            )
            if cursor.rowcount == 0:
                raise ArtifactNotFound(artifact, f"artifact {artifact} is not in the catalogue {self.path}")

    def set_blueprint_status(self, blueprint_id: str, state: BlueprintState, reason: str = "") -> None:
        """Record a blueprint's standing (Karn's quarantine, Tezzeret's failed compile, or ``ok`` to clear it)."""
        with self.write() as conn:
            conn.execute(
                "INSERT INTO blueprints (blueprint_id, state, reason, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (blueprint_id) DO UPDATE SET state = excluded.state, reason = excluded.reason, "
                "updated_at = excluded.updated_at",
                (blueprint_id, state, reason, self._now()),
            )

    def entry(self, artifact: str) -> ArtifactEntry | None:
        """The catalogue row of an artifact, or None."""
        rows = self._select(f"{_SELECT} WHERE sha256 = ?", (check_sha(artifact),))
        return rows[0] if rows else None

    def entries(self, blueprint_id: str | None = None) -> tuple[ArtifactEntry, ...]:
        """Every catalogue row (of one blueprint if given), oldest first."""
        if blueprint_id is None:
            return self._select(f"{_SELECT} ORDER BY created_at, rowid", ())
        return self._select(f"{_SELECT} WHERE blueprint_id = ? ORDER BY created_at, rowid", (blueprint_id,))

    def blueprint_status(self, blueprint_id: str) -> BlueprintStatus | None:
        """A blueprint's recorded standing, or None if nothing was ever recorded for it."""
        with self.lock:
            row = self._conn.execute(
                "SELECT rowid, state, reason, updated_at FROM blueprints WHERE blueprint_id = ?", (blueprint_id,)
            ).fetchone()
        if row is None:
            return None
        rowid, *columns = row
        try:
            checked = checked_row(StandingRow, ("state", "reason", "updated_at"), tuple(columns))
        except ValueError as err:
            # Its standing is unknown: the blueprint is offered again, and a failed compile marks it again.
            self._drop_row("blueprints", rowid, blueprint_id, f"blueprint {blueprint_id!r}: row is damaged: {err}")
            return None
        return BlueprintStatus(
            blueprint_id=blueprint_id, state=checked.state, reason=checked.reason, updated_at=checked.updated_at
        )

    def resolve(self, blueprint_id: str, signature_key: str | None = None) -> ArtifactEntry:
        """The newest ready artifact of a blueprint (for one slot signature if given).

        Raises:
            BlueprintUnavailable: the blueprint is marked failed or quarantined.
            ArtifactNotFound: it has no ready artifact (for that signature).
        """
        status = self.blueprint_status(blueprint_id)
        if status is not None and status.state != "ok":
            raise BlueprintUnavailable(
                blueprint_id, f"blueprint {blueprint_id!r} is {status.state} in {self.path}: {status.reason}"
            )
        query = f"{_SELECT} WHERE blueprint_id = ? AND status = 'ready'"
        args: tuple[str, ...] = (blueprint_id,)
        if signature_key is not None:
            query += " AND signature_key = ?"
            args += (signature_key,)
        rows = self._select(query + " ORDER BY created_at DESC, rowid DESC LIMIT 1", args)
        if not rows:
            slot = "" if signature_key is None else f" for signature {signature_key!r}"
            raise ArtifactNotFound(
                blueprint_id, f"blueprint {blueprint_id!r} has no ready artifact{slot} in {self.path}"
            )
        return rows[0]

    def _select(self, query: str, args: tuple[str, ...]) -> tuple[ArtifactEntry, ...]:
        """The rows ``query`` (``_SELECT`` and a tail) selects, each checked; a damaged one is dropped and the query
        run again, so a ``LIMIT`` still finds the good row behind a damaged newer one."""
        while True:
            with self.lock:
                rows = self._conn.execute(query, args).fetchall()
            entries: list[ArtifactEntry] = []
            dropped = False
            for row in rows:
                try:
                    entries.append(entry_from_row(row[1:]))
                except ArtifactFormatError as err:
                    self._drop_row("artifacts", row[0], err.subject, err.detail)
                    dropped = True
            if not dropped:
                return tuple(entries)

    def drop_row_of(self, entry: ArtifactEntry, why: str) -> None:
        with self.lock:
            row = self._conn.execute("SELECT rowid FROM artifacts WHERE sha256 = ?", (entry.sha256,)).fetchone()
        if row is not None:
            self._drop_row("artifacts", row[0], entry.sha256, f"artifact {entry.sha256}: {why}")

    def _drop_row(self, table: str, rowid: int, name: str, why: str) -> None:
        """Forget a catalogue row that cannot be read: its blueprint is not to blame, and the next put of the blob
        (a Tezzeret pass) writes the row again. Without it every read of the catalogue failed, for good. By rowid:
        the damaged row's own key may be what is unreadable."""
        with self.write() as conn:
            conn.execute(f"DELETE FROM {table} WHERE rowid = ?", (rowid,))
        with self.lock:
            self.integrity_failures += 1
        subject = "artifact" if table == "artifacts" else "blueprint_id"
        _log.warning("urza_row_dropped", table=table, reason=why[:300], **{subject: name})
