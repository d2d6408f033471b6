"""Urza's publish lock: a holder that stops (SIGSTOP, Ctrl-Z, a debugger) no longer hangs every run on the store."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest
import structlog.testing

from actors.tezzeret.compile import CompileJob, CompileSettings, run_job
from actors.urza.publish import UrzaArtifactSink
from actors.urza.publish_lock import PUBLISH_LOCK_WAIT_S, PublishLock, lock_holder
from actors.urza.store import UrzaStore
from esper.nn.blueprints import SlotShape, default_catalogue

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.timeout(90)  # a real second process (and, without the fix, a hang the guard ends)

# Holds an exclusive flock on argv[1] from its own open file description, says so, then waits to be killed.
_HOLD = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_CREAT, 0o666)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()
"""


class FakeClock:
    """A monotonic clock that only a sleep moves: the lock's wait is counted, never really waited."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.now += seconds
        self.slept += seconds


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding ``<tmp_path>/urza/publish.lock``, stopped (SIGSTOP) as the user's run was."""
    (tmp_path / "urza").mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(tmp_path / "urza" / "publish.lock")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "held\n"  # the barrier: the lock is held from here on
        os.kill(proc.pid, signal.SIGSTOP)
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=30)
        assert proc.stdin is not None
        assert proc.stdout is not None
        proc.stdin.close()
        proc.stdout.close()


def _publish(store: UrzaStore, blueprint_id: str) -> None:
    job = CompileJob(default_catalogue().get(blueprint_id), SlotShape("flat", 5))
    outcome = run_job(job, UrzaArtifactSink(store), CompileSettings())
    assert outcome.ok, outcome


def test_a_stopped_process_holding_the_publish_lock_does_not_hang_a_publish(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    """A run stopped while it held publish.lock hung every other run on the store (12 minutes in the user's test):
    the flock waited with no end. Now a publish waits PUBLISH_LOCK_WAIT_S, then publishes unlocked with one
    warning naming the lock file and its holder; later publishes do not wait again while the holder keeps it."""
    clock = FakeClock()
    root = tmp_path / "urza"
    with (
        UrzaStore(root, publish_lock=lambda path: PublishLock(path, clock=clock, sleep=clock.sleep)) as store,
        structlog.testing.capture_logs() as logs,
    ):
        _publish(store, "BP001")
        assert clock.slept == pytest.approx(PUBLISH_LOCK_WAIT_S)  # the whole wait, counted on the fake clock
        _publish(store, "BP002")
        assert clock.slept == pytest.approx(PUBLISH_LOCK_WAIT_S)  # the holder is still stopped: no second wait
        assert {e.blueprint_id for e in store.entries()} == {"BP001", "BP002"}
        assert {e.status for e in store.entries()} == {"ready"}
    held = [entry for entry in logs if entry["event"] == "urza_publish_lock_held"]
    assert len(held) == 1
    assert held[0]["log_level"] == "warning"
    assert held[0]["path"] == str(root / "publish.lock")
    assert held[0]["holder_pid"] == holder.pid


def test_the_lock_is_waited_for_again_once_it_has_been_had(tmp_path: Path) -> None:
    """After a wait ran out, a publish that gets the lock ends the stuck episode: the next holder is waited for
    (and warned about) again. The other holder is a second open file description in this process, which an flock
    treats as another holder."""
    path = tmp_path / "publish.lock"
    clock = FakeClock()
    lock = PublishLock(path, clock=clock, sleep=clock.sleep, wait_s=2.0)
    other = os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)
    try:
        with structlog.testing.capture_logs() as logs:
            fcntl.flock(other, fcntl.LOCK_EX)
            with lock.held():
                pass
            assert clock.slept == pytest.approx(2.0)
            fcntl.flock(other, fcntl.LOCK_UN)
            with lock.held():  # had at the first try: no wait
                assert lock_holder(other) == os.getpid()
                with pytest.raises(BlockingIOError):
                    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # really held by the block
            assert clock.slept == pytest.approx(2.0)
            fcntl.flock(other, fcntl.LOCK_EX)
            with lock.held():
                pass
            assert clock.slept == pytest.approx(4.0)
    finally:
        os.close(other)
    assert [entry["event"] for entry in logs].count("urza_publish_lock_held") == 2


def test_the_holder_pid_comes_from_proc_locks_and_is_none_when_it_does_not_say(tmp_path: Path) -> None:
    path = tmp_path / "publish.lock"
    fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)
    try:
        st = os.fstat(fd)
        device = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}"
        locks = tmp_path / "locks"
        locks.write_text(
            f"1: POSIX  ADVISORY  WRITE 11 {device}:{st.st_ino} 0 EOF\n"  # an fcntl lock, not an flock
            f"2: FLOCK  ADVISORY  WRITE 22 {device}:{st.st_ino + 1} 0 EOF\n"  # another file
            f"3: FLOCK  ADVISORY  WRITE 33 {device}:{st.st_ino} 0 EOF\n"
            f"3: -> FLOCK  ADVISORY  WRITE 44 {device}:{st.st_ino} 0 EOF\n"  # a waiter
        )
        assert lock_holder(fd, locks) == 33
        locks.write_text(f"1: FLOCK  ADVISORY  WRITE 0 {device}:{st.st_ino} 0 EOF\n")  # another pid namespace
        assert lock_holder(fd, locks) is None
        assert lock_holder(fd, tmp_path / "missing") is None
    finally:
        os.close(fd)
