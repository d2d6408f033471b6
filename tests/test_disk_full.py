"""A full disk, on the real /dev/full: supervisor, event log and step loop each end their writes as they should.

A supervisor escalates at once instead of restarting an actor whose writes will only fail again; the event log never
raises into its caller and says once that it stopped; a torn last line is ended before new ones are appended; a failed
checkpoint write stops the step loop at the next checkpoint."""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, final

import aiofiles
import pytest
import structlog
from structlog.testing import capture_logs

import esper.logs
import esper.runtime.atomic_write
from actors.kasmina.journal import BoundaryJournal, JournalReceipt
from actors.tamiyo.field_reports import FieldReportWal
from actors.tamiyo.heuristic import HeuristicState
from actors.tamiyo.outcomes import OutcomeState
from actors.tamiyo.state import TamiyoCounters, TamiyoState
from actors.tamiyo.state_journal import STATE_JOURNAL_FILENAME, TamiyoStateJournal
from actors.tolaria.checkpoints import CheckpointWriter
from esper.logs import configure_logging, reset_logging
from esper.run import main
from esper.run_parser import EXIT_OK
from esper.runtime.actor import Actor
from esper.runtime.atomic_write import atomic_write_chunks
from esper.runtime.child_spec import ChildSpec
from esper.runtime.errors import UnrecoverableFailure, unrecoverable_cause
from esper.runtime.supervisor import Supervisor
from esper.runtime.system import ActorSystem
from schemas.base import Message
from schemas.boundary import BoundaryApplied
from schemas.runtime import ChildFailed, ChildRestarted, SupervisorEscalated
from tests.test_kernel_support import Get, Probe, Recorder
from tests.test_tamiyo_field_reports import report
from tests.test_tolaria_checkpoint_format import sample_state

if TYPE_CHECKING:
    from collections.abc import Callable

    from esper.runtime.clock import ManualClock
    from esper.runtime.events import RecordingSink

FULL = Path("/dev/full")
pytestmark = pytest.mark.skipif(not FULL.exists(), reason="needs /dev/full, whose writes fail with ENOSPC")


@pytest.fixture(autouse=True)
def _fresh_logging() -> None:
    reset_logging()


def test_the_unrecoverable_cause_is_found_wherever_it_hides() -> None:
    full = OSError(errno.ENOSPC, "No space left on device")
    assert unrecoverable_cause(full) is full
    assert unrecoverable_cause(ExceptionGroup("task group", [ValueError("x"), full])) is full
    wrapped = RuntimeError("escalated")
    wrapped.__cause__ = ExceptionGroup("task group", [full])
    assert unrecoverable_cause(wrapped) is full
    read_only = OSError(errno.EROFS, "Read-only file system")
    assert unrecoverable_cause(read_only) is read_only
    # ulimit -f, a quota, a run directory's modes, an immutable attribute (chattr +i)
    for code in (errno.EFBIG, errno.EDQUOT, errno.EACCES, errno.EPERM):
        limited = OSError(code, os.strerror(code), "/runs/x/checkpoints/.step-20.pt.tmp")
        assert unrecoverable_cause(ExceptionGroup("task group", [limited])) is limited
    # A permission error that names no file (os.kill of another user's process, a user model's own call) is no run
    # directory's: restarted, within the restart limits.
    for code in (errno.EACCES, errno.EPERM):
        assert unrecoverable_cause(ExceptionGroup("task group", [OSError(code, os.strerror(code))])) is None
    # An I/O error can pass (a network file system's hiccup): restarted, within the restart limits.
    assert unrecoverable_cause(OSError(errno.EIO, os.strerror(errno.EIO))) is None
    assert unrecoverable_cause(RuntimeError("boom")) is None


class WriteFull(Message, frozen=True):
    pass


@final
class Writer(Actor[WriteFull]):
    """Appends a line to /dev/full when told to: the write fails as on a full disk."""

    def __init__(self, recorder: Recorder) -> None:
        super().__init__(inbox=(WriteFull,))
        self.recorder = recorder

    async def on_start(self) -> None:
        self.recorder.record("start writer")

    async def on_stop(self) -> None:
        self.recorder.record("stop writer")

    async def handle(self, msg: WriteFull) -> None:
        async with aiofiles.open(FULL, "ab") as out:
            await out.write(b"a line\n")
            await out.flush()


async def test_a_full_disk_escalates_at_the_first_failure_and_stops_every_actor_in_order(
    clock: ManualClock, sink: RecordingSink
) -> None:
    recorder = Recorder()
    specs = [
        ChildSpec("a", lambda: Probe(recorder, "a")),
        ChildSpec("writer", lambda: Writer(recorder)),
        ChildSpec("b", lambda: Probe(recorder, "b")),
    ]
    system = ActorSystem(clock=clock, sink=sink)
    await system.start(Supervisor(specs, max_restarts=5, backoff_initial_s=0.0))
    await system.ref("writer", Writer).tell(WriteFull())
    with pytest.raises(UnrecoverableFailure) as gave_up:
        await system.wait()
    assert str(gave_up.value) == (
        "writer failed: No space left on device; a restart cannot fix that, so every actor stopped"
    )
    assert sink.of_type(ChildRestarted) == []
    [escalated] = sink.of_type(SupervisorEscalated)
    assert (escalated.supervisor, escalated.child, escalated.reason, escalated.restarts) == (
        "root",
        "writer",
        "unrecoverable",
        0,
    )
    assert recorder.log[-2:] == ["stop b", "stop a"]  # the others stopped in reverse start order
    assert recorder.count("start writer") == 1


async def test_a_nested_supervisor_hands_the_full_disk_up_and_the_root_stops_at_once(
    clock: ManualClock, sink: RecordingSink
) -> None:
    recorder = Recorder()
    inner = ChildSpec("sub", lambda: Supervisor([ChildSpec("writer", lambda: Writer(recorder))], max_restarts=5))
    system = ActorSystem(clock=clock, sink=sink)
    await system.start(Supervisor([inner, ChildSpec("other", lambda: Probe(recorder, "other"))], max_restarts=5))
    other = system.ref("other", Probe)
    assert await other.ask(Get(), int) == 0
    await system.ref("sub/writer", Writer).tell(WriteFull())
    with pytest.raises(UnrecoverableFailure, match=r"^sub/writer failed: No space left on device; a restart cannot"):
        await system.wait()
    assert [(e.supervisor, e.child, e.error_type) for e in sink.of_type(ChildFailed)] == [
        ("sub", "sub/writer", "OSError"),
        ("root", "sub", "UnrecoverableFailure"),
    ]
    assert [(e.supervisor, e.reason) for e in sink.of_type(SupervisorEscalated)] == [
        ("sub", "unrecoverable"),
        ("root", "unrecoverable"),
    ]
    assert sink.of_type(ChildRestarted) == []
    assert recorder.log[-1] == "stop other"


def test_the_event_log_on_a_full_disk_never_raises_and_says_so_once(tmp_path: Path) -> None:
    console = io.StringIO()
    logging = configure_logging(tmp_path, console_stream=console, colors=False, json_file=str(FULL))
    log = structlog.get_logger("test")
    log.warning("first_event")  # buffered, then flushed: the flush fails
    log.warning("second_event")
    log.error("third_event")
    logging.close()
    lines = console.getvalue().splitlines()
    notices = [line for line in lines if "cannot write the event log" in line]
    assert notices == [
        f"{FULL}: cannot write the event log (No space left on device); later events reach the console only"
    ]
    assert [name for name in ("first_event", "second_event", "third_event") if any(name in x for x in lines)] == [
        "first_event",
        "second_event",
        "third_event",
    ]


def test_a_torn_last_line_is_ended_before_new_events_are_appended(tmp_path: Path) -> None:
    (tmp_path / "events.jsonl").write_bytes(b'{"event": "before"}\n{"event": "torn", "fie')
    logging = configure_logging(tmp_path, console=False)
    structlog.get_logger("test").warning("run_starting")
    logging.close()
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    assert lines[:2] == ['{"event": "before"}', '{"event": "torn", "fie']
    assert json.loads(lines[2])["event"] == "run_starting"


def test_a_failed_checkpoint_write_is_raised_by_the_next_submit(tmp_path: Path) -> None:
    blocked = tmp_path / "checkpoints"
    blocked.write_text("a file where the checkpoint directory should be")
    writer = CheckpointWriter(blocked, keep_last=2)
    try:
        writer.submit(sample_state())
        writer._queue.join()  # the barrier: the writer thread has failed the write
        with pytest.raises(FileExistsError):
            writer.submit(sample_state())
        writer.flush()  # raised once: nothing more is pending
    finally:
        writer.close()


_WRITE_OVER_THE_LIMIT = """
import resource, signal, sys
from pathlib import Path
from esper.runtime.atomic_write import atomic_write_bytes
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write over the limit fails (EFBIG) instead of killing the process
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
try:
    atomic_write_bytes(Path(sys.argv[1]), bytes(65536))
except OSError as err:
    print(err.errno, err.filename, err.strerror, sep="|")
"""


def test_a_write_that_does_not_fit_names_the_file_it_was_writing(tmp_path: Path) -> None:
    """A write's error names no file: a full disk ended with "tolaria/trainer failed: No space left on device", not
    which file (a read-only disk's, raised by the open, named it). A real failed write (past a file-size limit, as
    ``ulimit -f``), in a process of its own: the limit would fail the test runner's writes too."""
    target = tmp_path / "step-16.pt"
    done = subprocess.run(
        [sys.executable, "-c", _WRITE_OVER_THE_LIMIT, str(target)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == f"{errno.EFBIG}|{target}|{os.strerror(errno.EFBIG)}"
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []  # the temp file is gone too


def test_a_run_whose_event_log_fails_still_completes_with_one_notice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "c.toml").write_text("[tolaria]\nepochs = 2\ndataset_samples = 500\n")
    events = tmp_path / "run" / "events.jsonl"
    opened = esper.logs._open_for_lines
    # The event log's disk is full from the first line (a link to /dev/full in the run directory is refused).
    monkeypatch.setattr(esper.logs, "_open_for_lines", lambda path: opened(FULL if path == events else path))
    assert main([str(tmp_path / "c.toml"), "--run-dir", str(tmp_path / "run")]) == EXIT_OK
    err = capsys.readouterr().err
    assert err.count("cannot write the event log") == 1
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["status"], summary["training"]["epochs"]) == ("completed", 2)


def _temp_files_on_dev_full(monkeypatch: pytest.MonkeyPatch) -> None:
    """Atomic writes' temp files made as usual (then removed), but written to /dev/full: a write past the buffer fails
    with ENOSPC, and so does the close's flush of what is still buffered."""
    made = tempfile.mkstemp

    def mkstemp(*, prefix: str, suffix: str, dir: Path) -> tuple[int, str]:  # tempfile's names
        fd, name = made(prefix=prefix, suffix=suffix, dir=dir)
        os.close(fd)
        return os.open(FULL, os.O_WRONLY), name

    monkeypatch.setattr(esper.runtime.atomic_write, "tempfile", SimpleNamespace(mkstemp=mkstemp))


def _appends_on_dev_full(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    """aiofiles' appends to ``path`` go to /dev/full; everything else as usual."""
    opened: Callable[..., Any] = aiofiles.open

    def redirected(file: Path, mode: str = "r", **kwargs: Any) -> Any:
        return opened(FULL if file == path and "a" in mode else file, mode, **kwargs)

    monkeypatch.setattr(aiofiles, "open", redirected)


def test_a_write_of_small_pieces_that_does_not_fit_names_its_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write's error named the file, but the close then flushed the pieces still buffered, failed again and its
    error (no file) replaced it: a checkpoint's write on a full disk said "No space left on device" alone."""
    _temp_files_on_dev_full(monkeypatch)
    target = tmp_path / "step-20.pt"
    with pytest.raises(OSError, match="No space left on device") as caught:
        atomic_write_chunks(target, (bytes(100) for _ in range(1000)))
    assert (caught.value.errno, caught.value.filename) == (errno.ENOSPC, str(target))
    assert list(tmp_path.iterdir()) == []  # the temp file is gone


def test_a_failed_checkpoint_write_logs_its_step_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """checkpoint_write_failed had only the error: not which step, and on a full disk not which file."""
    _temp_files_on_dev_full(monkeypatch)
    directory = tmp_path / "checkpoints"
    writer = CheckpointWriter(directory, keep_last=2)
    state = sample_state()
    target = str(directory / f"step-{state.global_step}.pt")
    try:
        with capture_logs() as logs:
            writer.submit(state)
            writer.wait_written()  # the barrier: the writer thread has failed the write
        with pytest.raises(OSError, match="No space left on device"):
            writer.flush()
    finally:
        writer.close()
    assert [entry for entry in logs if entry["event"] == "checkpoint_write_failed"] == [
        {
            "event": "checkpoint_write_failed",
            "log_level": "error",
            "step": state.global_step,
            "file": target,
            "error": f"OSError: [Errno {errno.ENOSPC}] No space left on device: '{target}'",
        }
    ]


async def test_tamiyos_state_journal_on_a_full_disk_names_its_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run's failure blamed Tamiyo (its journal's write failed first) with "No space left on device" alone."""
    path = tmp_path / STATE_JOURNAL_FILENAME
    _appends_on_dev_full(monkeypatch, path)
    journal = TamiyoStateJournal(path)
    state = TamiyoState(
        policy="heuristic",
        policy_version="heuristic-1",
        fallback=HeuristicState(),
        outcomes=OutcomeState(),
        counters=TamiyoCounters(),
        last_step=20,
    )
    with pytest.raises(OSError, match="No space left on device") as caught:
        await journal.append(20, state)
    assert (caught.value.errno, caught.value.filename) == (errno.ENOSPC, str(path))


async def test_tamiyos_field_report_wal_on_a_full_disk_names_its_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The append's flush and the close's (what the failed append left buffered) both failed naming no file."""
    path = tmp_path / "field_reports.wal"
    _appends_on_dev_full(monkeypatch, path)
    wal = FieldReportWal(path, fsync=False)
    await wal.open()
    with pytest.raises(OSError, match="No space left on device") as caught:
        await wal.append(report(1))
    assert (caught.value.errno, caught.value.filename) == (errno.ENOSPC, str(path))
    with pytest.raises(OSError, match="No space left on device") as closing:
        await wal.close()
    assert (closing.value.errno, closing.value.filename) == (errno.ENOSPC, str(path))


def test_kasminas_journal_on_a_full_disk_names_its_file(tmp_path: Path) -> None:
    """Its close flushed the line and failed naming no file ("kasmina failed: No space left on device")."""
    path = tmp_path / "kasmina_journal.jsonl"
    path.symlink_to(FULL)
    journal = BoundaryJournal(path)
    applied = BoundaryApplied(run_id="r", decided_on_step=12, effect_step=20, applied_step=20)
    journal.append(JournalReceipt(receipt=applied))
    with pytest.raises(OSError, match="No space left on device") as caught:
        journal.write_pending()
    assert (caught.value.errno, caught.value.filename) == (errno.ENOSPC, str(path))
