"""Urza across processes: concurrent writers leave the store consistent; a writer killed mid-write tears no blob."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import structlog.testing

from actors.urza.store import UrzaStore
from tests.test_urza_artifact import linear_blob

if TYPE_CHECKING:
    from multiprocessing.synchronize import Barrier, Event

# real processes (spawn start-up dominates): a slow, loaded machine may need more than the default 30 s hang guard.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


PUTS_PER_WORKER = 20
SHARED = 10  # the first puts of each worker are the same artifacts in both, the rest are its own
SPAWN = multiprocessing.get_context("spawn")
JOIN_S = 60.0  # bounds on waits for child processes: a broken test fails, a working one never waits this long


def _put_many(root: str, worker: int, start: Barrier) -> None:
    store = UrzaStore(Path(root))
    blobs = [linear_blob(blueprint_id="bp-shared", seed=i) for i in range(SHARED)]
    blobs += [linear_blob(blueprint_id=f"bp-worker{worker}", seed=i) for i in range(PUTS_PER_WORKER - SHARED)]
    if worker % 2:
        blobs.reverse()  # meet the other worker in the middle rather than in lockstep
    start.wait(JOIN_S)
    for blob in blobs:
        store.put(blob)
    store.close()


def _open_fresh_stores(roots: list[str], start: Barrier) -> None:
    for root in roots:
        start.wait(JOIN_S)  # every process opens the same new catalog at the same moment
        UrzaStore(Path(root)).close()


def _write_and_hang(root: str, paused: Event) -> None:
    def pause(_tmp: Path) -> None:
        paused.set()
        threading.Event().wait()  # blocks until the parent kills this process

    UrzaStore(Path(root), before_publish=pause).put(linear_blob(in_features=512, out_features=512))


def test_two_processes_putting_concurrently_leave_the_store_consistent(tmp_path: Path) -> None:
    start = SPAWN.Barrier(2)
    workers = [SPAWN.Process(target=_put_many, args=(str(tmp_path), w, start)) for w in range(2)]
    for proc in workers:
        proc.start()
    for proc in workers:
        proc.join(JOIN_S)
    assert [proc.exitcode for proc in workers] == [0, 0]

    with UrzaStore(tmp_path) as store:
        entries = store.entries()
        assert len(entries) == SHARED + 2 * (PUTS_PER_WORKER - SHARED)
        assert {e.status for e in entries} == {"ready"}
        assert len(store.entries("bp-shared")) == SHARED
        report = store.check_integrity()
        assert report.clean
        assert report.ok == len(entries)
        assert report.orphan_blobs == ()
        for entry in entries:
            assert store.load(entry.sha256).metadata.blueprint_id == entry.blueprint_id
        assert sorted(os.listdir(tmp_path / "blobs")) == sorted(e.sha256 for e in entries)


def test_processes_opening_a_new_catalog_at_once_all_succeed(tmp_path: Path) -> None:
    # Switching a new catalog to WAL met "database is locked" without the busy handler (about 1 open in 30 here).
    roots = [str(tmp_path / f"store-{i}") for i in range(12)]
    start = SPAWN.Barrier(4)
    workers = [SPAWN.Process(target=_open_fresh_stores, args=(roots, start)) for _ in range(4)]
    for proc in workers:
        proc.start()
    for proc in workers:
        proc.join(JOIN_S)
    assert [proc.exitcode for proc in workers] == [0, 0, 0, 0]
    for root in roots:
        with UrzaStore(Path(root)) as store:
            assert store.check_integrity().clean


def test_a_writer_killed_mid_write_leaves_no_partial_blob(tmp_path: Path) -> None:
    paused = SPAWN.Event()
    proc = SPAWN.Process(target=_write_and_hang, args=(str(tmp_path), paused))
    proc.start()
    try:
        assert paused.wait(JOIN_S), "the writer never reached the rename"
        temps = [p for p in (tmp_path / "blobs").iterdir() if p.name.startswith(f".tmp-{proc.pid}-")]
        assert len(temps) == 1
        assert temps[0].stat().st_size > 1_000_000  # the whole blob was written, only the rename is missing
        assert proc.pid is not None
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(JOIN_S)
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join(JOIN_S)
    assert proc.exitcode == -signal.SIGKILL

    names = os.listdir(tmp_path / "blobs")
    assert all(name.startswith(".tmp-") for name in names)  # nothing under a final (SHA-256) name
    with UrzaStore(tmp_path) as store:
        assert store.statistics().temp_files_removed == 1
        assert os.listdir(tmp_path / "blobs") == []
        assert store.entries() == ()
        sha = store.put(linear_blob()).sha256
        assert store.load(sha).metadata.blueprint_id == "bp-linear"
        assert store.check_integrity().clean


def test_a_directory_named_like_a_dead_writers_temp_file_does_not_stop_the_store(tmp_path: Path) -> None:
    """The sweep of dead writers' temp files unlinked whatever matched the name: a directory there (junk, or a
    user's) made every open of the store fail with IsADirectoryError."""
    (tmp_path / "blobs" / ".tmp-999999999-dir").mkdir(parents=True)
    with UrzaStore(tmp_path) as store:
        assert store.statistics().temp_files_removed == 0
        sha = store.put(linear_blob()).sha256
        assert store.load(sha).metadata.blueprint_id == "bp-linear"
    assert (tmp_path / "blobs" / ".tmp-999999999-dir").is_dir()


_PUBLISH_ONE = """
import sys
from pathlib import Path
from actors.tezzeret.compile import CompileJob, CompileSettings, run_job
from actors.urza.publish import UrzaArtifactSink
from actors.urza.store import UrzaStore
from esper.nn.blueprints import SlotShape, default_catalogue
with UrzaStore(Path(sys.argv[1])) as store:
    job = CompileJob(default_catalogue().get("BP001"), SlotShape("flat", 5))
    assert run_job(job, UrzaArtifactSink(store), CompileSettings()).ok
"""


def test_a_publish_lock_file_another_user_made_does_not_stop_the_store(tmp_path: Path) -> None:
    """publish.lock was opened for writing: a second user, who may write the catalogue and the blobs but not a lock
    file the first user made (0644), failed every compile (PermissionError) and the run failed. An flock needs only
    a read-only descriptor."""
    with UrzaStore(tmp_path) as store, store.publishing():
        pass
    lock = tmp_path / "publish.lock"
    lock.chmod(0o444)
    command = [sys.executable, "-c", _PUBLISH_ONE, str(tmp_path)]
    if os.geteuid() == 0:  # root ignores file modes: run as a root without the capabilities that let it
        if shutil.which("setpriv") is None:
            pytest.skip("needs setpriv to drop root's file-permission override")
        os.chown(lock, 65534, 65534)
        caps = "-dac_override,-dac_read_search"
        command = ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}", *command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_lock_file_nobody_may_read_is_said_once_a_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Publishing unlocked was warned about once per blueprint (8 identical lines a run)."""
    real_open = os.open

    def refusing(path: object, flags: int, mode: int = 0o777) -> int:
        if str(path).endswith("publish.lock"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, mode)  # type: ignore[arg-type]  # os.open's path type

    with UrzaStore(tmp_path) as store:
        monkeypatch.setattr(os, "open", refusing)
        with structlog.testing.capture_logs() as logs:
            for _ in range(3):
                with store.publishing():
                    pass
    assert [entry["event"] for entry in logs].count("urza_publish_unlocked") == 1
