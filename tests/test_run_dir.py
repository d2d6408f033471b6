"""A run directory's claim: one run writes it at a time, a new run never writes over an earlier one.

The lock dies with its process, and the command line and ``esper.start`` refuse in one line without touching what is
there."""

from __future__ import annotations

import errno
import fcntl
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from actors.nissa.metrics import METRICS_COLUMNS
from esper.logs import reset_logging
from esper.run import main
from esper.run_dir import LOCK_NAME, check_not_in_use, claim_run_dir, sweep_partial_writes, write_run_config
from esper.run_parser import EXIT_CONFIG_ERROR
from esper.runtime.errors import ConfigError


@pytest.fixture(autouse=True)
def _fresh_logging() -> None:
    reset_logging()


def test_a_claim_is_exclusive_until_released(tmp_path: Path) -> None:
    directory = tmp_path / "a" / "run"
    lock = claim_run_dir(directory, resume=False)
    assert (directory / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    in_use = rf"^run directory {directory}: another run is using it \(pid {os.getpid()}\)"
    with pytest.raises(ConfigError, match=in_use):
        claim_run_dir(directory, resume=True)
    lock.release()
    lock.release()  # idempotent
    assert not lock.held
    again = claim_run_dir(directory, resume=True)
    again.release()


def test_a_claim_that_meets_a_liveness_probes_instant_lock_takes_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """esper.tail and esper.report probe whether a run holds the directory by taking its lock for an instant; a
    --resume that tried at that instant was refused as if another run were using the directory."""
    claim_run_dir(tmp_path, resume=False).release()
    probe = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the probe's lock, held when the claim first tries
    real_flock = fcntl.flock
    refused: list[int] = []

    def flock_while_probed(fd: int, operation: int) -> None:
        try:
            real_flock(fd, operation)
        except BlockingIOError:
            refused.append(fd)
            os.close(probe)  # the probe ends, as it does a few system calls later
            raise

    monkeypatch.setattr(fcntl, "flock", flock_while_probed)
    lock = claim_run_dir(tmp_path, resume=True)
    assert lock.held
    assert len(refused) == 1
    lock.release()


def test_deleting_run_lock_under_a_live_run_lets_no_second_run_in(tmp_path: Path) -> None:
    """The claim was an flock of run.lock: once that file was deleted, the next run made a new one, locked it and
    trained into the live run's directory (two writers of one journal). The directory itself is what is locked."""
    lock = claim_run_dir(tmp_path, resume=False)
    try:
        (tmp_path / LOCK_NAME).unlink()
        in_use = rf"^run directory {tmp_path}: another run is using it; let it finish or stop it \(Ctrl-C\), then"
        with pytest.raises(ConfigError, match=in_use):
            claim_run_dir(tmp_path, resume=True)
        with pytest.raises(ConfigError, match=in_use):
            check_not_in_use(tmp_path)
        assert not (tmp_path / LOCK_NAME).exists()  # the refused claim wrote no pid over the holder's
    finally:
        lock.release()
    claim_run_dir(tmp_path, resume=True).release()


def test_a_new_run_refuses_an_earlier_runs_directory_and_leaves_it_as_it_was(tmp_path: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "kasmina_journal.jsonl").write_text('{"step": 4}\n')  # a run that trained a while
    (tmp_path / "events.jsonl").write_text('{"event": "run_starting"}\n')
    with pytest.raises(ConfigError) as refused:
        claim_run_dir(tmp_path, resume=False)
    assert str(refused.value) == (
        f"run directory {tmp_path} already holds a run (checkpoints): continue it with --resume"
        f" {tmp_path}, or choose another --run-dir"
    )
    assert (tmp_path / "events.jsonl").read_text() == '{"event": "run_starting"}\n'
    claim_run_dir(tmp_path, resume=True).release()  # the same directory is fine to resume


def test_a_directory_with_only_a_refused_attempts_config_and_log_or_other_files_is_usable(tmp_path: Path) -> None:
    write_run_config(tmp_path, "")  # what a refused attempt leaves
    (tmp_path / "events.jsonl").write_text('{"event": "run_starting"}\n')
    # ... and a start that failed after some actors were built: a metrics.csv header, empty journals.
    (tmp_path / "metrics.csv").write_text(",".join(METRICS_COLUMNS) + "\n")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "kasmina_journal.jsonl").write_text("")
    (tmp_path / "field_reports.wal").write_bytes(b"")  # Tamiyo makes it when it starts
    (tmp_path / "notes.txt").write_text("mine")
    claim_run_dir(tmp_path, resume=False).release()
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_directory_that_cannot_be_made(tmp_path: Path) -> None:
    """A file in the way said "cannot write there: File exists" (or "Not a directory"): it is named as a file."""
    (tmp_path / "file").write_text("")
    below = re.escape(f"run directory {tmp_path / 'file' / 'run'}: is under {tmp_path / 'file'}, which is a file, not")
    with pytest.raises(ConfigError, match=rf"^{below} a directory: choose another --run-dir$"):
        claim_run_dir(tmp_path / "file" / "run", resume=False)
    itself = re.escape(f"run directory {tmp_path / 'file'}: is a file, not a directory: choose another --run-dir")
    with pytest.raises(ConfigError, match=rf"^{itself}$"):
        claim_run_dir(tmp_path / "file", resume=False)
    assert (tmp_path / "file").read_text() == ""


def test_a_full_disk_when_claiming_is_one_line_and_leaves_the_lock_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new run on a full disk printed os.pwrite's traceback. (The disk is simulated: the claim's one write fails
    as the kernel's does; filling a real file system needs a mount the tests cannot make.)"""

    def full(fd: int, data: bytes, offset: int) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(ConfigError, match=rf"^run directory {tmp_path}: cannot write there: No space left on device$"):
        claim_run_dir(tmp_path, resume=False)
    monkeypatch.undo()
    claim_run_dir(tmp_path, resume=False).release()  # the refused claim's descriptor and lock were let go


_HOLDER = """
import sys
from pathlib import Path
from esper.run_dir import claim_run_dir
lock = claim_run_dir(Path(sys.argv[1]), resume=False)
print("held", flush=True)
sys.stdin.read()
"""


def test_the_lock_dies_with_its_process_even_by_kill_9(tmp_path: Path) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as holder:
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline() == "held\n"  # the barrier: the other process holds the lock now
            with pytest.raises(ConfigError, match=rf"another run is using it \(pid {holder.pid}\)"):
                claim_run_dir(tmp_path, resume=True)
        finally:
            os.kill(holder.pid, signal.SIGKILL)
            holder.wait(timeout=30)
    claim_run_dir(tmp_path, resume=True).release()


def test_the_command_line_refuses_an_earlier_runs_directory_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "manifest.json").write_text("{}")
    (run / "events.jsonl").write_text("earlier\n")
    (run / "config.toml").write_text("# earlier\n")
    (tmp_path / "c.toml").write_text("[tolaria]\nepochs = 1\n")
    assert main([str(tmp_path / "c.toml"), "--run-dir", str(run)]) == EXIT_CONFIG_ERROR
    err = capsys.readouterr().err
    assert err == (
        f"run directory {run} already holds a run (checkpoints): continue it with --resume {run}, or"
        " choose another --run-dir\n"
    )
    assert (run / "events.jsonl").read_text() == "earlier\n"
    assert (run / "config.toml").read_text() == "# earlier\n"


def test_a_live_run_in_another_process_cannot_be_resumed_or_rerun(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    (tmp_path / "c.toml").write_text("[logging]\nconsole = false\n[tolaria]\ndataset_samples = 500\n")
    command = [sys.executable, "-m", "esper.run", str(tmp_path / "c.toml"), "--run-dir", str(run)]
    with subprocess.Popen([*command, "--set", "tolaria.epochs=500"], stderr=subprocess.PIPE, text=True) as live:
        try:
            assert live.stderr is not None
            assert live.stderr.readline().startswith("run ")  # the barrier: printed once the directory is claimed
            for args in (["--resume", str(run)], ["--run-dir", str(run)]):
                assert main([str(tmp_path / "c.toml"), *args]) == EXIT_CONFIG_ERROR
                assert capsys.readouterr().err == (
                    f"run directory {run}: another run is using it (pid {live.pid}); let it finish or stop it (Ctrl-C),"
                    f" then --resume {run}\n"
                )
        finally:
            live.kill()
            live.wait(timeout=30)


def test_a_resume_sweeps_the_temp_files_a_killed_write_left(tmp_path: Path) -> None:
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    fd, name = tempfile.mkstemp(prefix=".step-40.pt.", suffix=".tmp", dir=checkpoints)  # an old-style name
    os.close(fd)
    left = Path(name)
    (tmp_path / ".config.toml.ab_c1234.tmp").write_text("partial")  # named as before the writer's pid was in it
    (tmp_path / ".tmp-4242-data.json.x1y2z3w4.tmp").write_text("partial")
    outside = tmp_path.parent / f"{tmp_path.name}-elsewhere"
    outside.mkdir()
    (tmp_path / "shared").symlink_to(outside)  # another program's folder, linked in: its temp files are its own
    kept = [
        checkpoints / "step-20.pt",
        tmp_path / "notes.tmp",
        tmp_path / ".hidden.tmp",
        outside / ".n.txt.ab12cd34.tmp",
    ]
    for path in kept:
        path.write_text("mine")
    swept = [left, tmp_path / ".config.toml.ab_c1234.tmp", tmp_path / ".tmp-4242-data.json.x1y2z3w4.tmp"]
    assert sorted(sweep_partial_writes(tmp_path)) == sorted(swept)
    assert not left.exists()
    assert all(path.read_text() == "mine" for path in kept)


def test_a_new_run_refuses_to_write_its_config_over_the_config_file_it_was_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`python -m esper.run proj/config.toml --run-dir proj` replaced the user's commented config with the resolved
    dump; a user's report.png in the directory was overwritten too."""
    project = tmp_path / "proj"
    project.mkdir()
    text = "# my notes\n[tolaria]\nepochs = 1\n"
    (project / "config.toml").write_text(text)
    assert main([str(project / "config.toml"), "--run-dir", str(project)]) == EXIT_CONFIG_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "a new run writes its resolved config to" in err
    assert "which is this very file" in err
    assert (project / "config.toml").read_text() == text
    (project / "report.png").write_bytes(b"the user's figure")
    (tmp_path / "c.toml").write_text(text)
    assert main([str(tmp_path / "c.toml"), "--run-dir", str(project)]) == EXIT_CONFIG_ERROR
    assert "already holds a run (report.png)" in capsys.readouterr().err
    assert (project / "report.png").read_bytes() == b"the user's figure"


def test_a_new_run_refuses_a_directory_holding_a_users_own_config_toml(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Given another config file, a new run replaced the directory's own config.toml (the user's notes) with its
    resolved config; only a config.toml a run wrote (a refused attempt's) may be replaced."""
    project = tmp_path / "proj"
    project.mkdir()
    (project / "config.toml").write_text("# my notes\n[tolaria]\nepochs = 3\n")
    (tmp_path / "fast.toml").write_text("[tolaria]\nepochs = 1\n")
    assert main([str(tmp_path / "fast.toml"), "--run-dir", str(project)]) == EXIT_CONFIG_ERROR
    err = capsys.readouterr().err
    assert err == (
        f"run directory {project} holds a config.toml no run wrote, which a new run would replace with its resolved"
        " config: choose another --run-dir\n"
    )
    assert (project / "config.toml").read_text().startswith("# my notes")


def test_a_run_whose_checkpoints_directory_is_gone_is_sent_to_another_directory_by_both_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--run-dir said continue it with --resume, and --resume said start it again with --run-dir: neither worked."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text(",".join(METRICS_COLUMNS) + "\n1" + "," * (len(METRICS_COLUMNS) - 1) + "\n")
    (run / "summary.json").write_text("{}")
    write_run_config(run, "[tolaria]\nepochs = 1\n")
    (tmp_path / "c.toml").write_text(f'[urza]\nroot = "{tmp_path / "urza"}"\n')
    before = sorted(p.name for p in run.iterdir())
    assert main([str(tmp_path / "c.toml"), "--run-dir", str(run)]) == EXIT_CONFIG_ERROR
    fresh = capsys.readouterr().err
    assert fresh == (
        f"run directory {run} already holds a run (metrics.csv, summary.json) whose checkpoints directory is gone, so"
        " no --resume can continue it: choose another --run-dir (or move this one aside)\n"
    )
    assert main([str(tmp_path / "c.toml"), "--resume", str(run)]) == EXIT_CONFIG_ERROR
    resumed = capsys.readouterr().err
    assert resumed == (
        f"--resume {run}: no checkpoints directory to resume from, though a run trained there (metrics.csv,"
        " summary.json): nothing can continue it; start a new run with another --run-dir\n"
    )
    assert sorted(p.name for p in run.iterdir()) == before


def test_a_run_stopped_while_it_started_is_sent_to_start_again_where_it_was(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "events.jsonl").write_text("earlier\n")
    write_run_config(run, "[tolaria]\nepochs = 1\n")
    config = tmp_path / "c.toml"
    config.write_text(
        f'[tolaria]\nepochs = 1\ndataset_samples = 600\n[urza]\nroot = "{tmp_path / "urza"}"\n'
        "[logging]\nconsole = false\n"
    )
    assert main([str(config), "--resume", str(run)]) == EXIT_CONFIG_ERROR
    assert capsys.readouterr().err == (
        f"--resume {run}: no checkpoints directory to resume from (a run stopped while it started trains nothing:"
        f" start it again with --run-dir {run})\n"
    )
    assert main([str(config), "--run-dir", str(run)]) == 0  # the way out it names works
    assert (run / "summary.json").is_file()
