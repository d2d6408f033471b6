"""The whole run from the command line, killed or interrupted and resumed.

After kill -9 and SIGINT mid-run, then --resume, it ends bitwise where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest
import torch

from actors.tolaria.checkpoint_codec import decode_state
from actors.tolaria.checkpoints import read_manifest
from esper.run import main
from esper.session import EXIT_INTERRUPTED
from tests.far_budgets import far_budgets

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

pytestmark = pytest.mark.slow

# Wall-clock budgets far above any real time (tests/far_budgets.py): the runs compared bitwise must not differ by the
# machine's load (a decision over its budget is the fallback's, a plan past its deadline fails the epoch).
TINY_TOML = f"""
[tolaria]
epochs = 6
dataset_samples = 1000
batch_size = 50
checkpoint_every_epochs = 1
num_threads = 1
{far_budgets("tolaria")}
[kasmina]
{far_budgets("kasmina")}
[tamiyo]
{far_budgets("tamiyo")}
[logging]
state_interval_s = 60.0
"""


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    directory = run_dir / "checkpoints"
    newest = read_manifest(directory)[-1]
    state, _ = decode_state((directory / newest.file).read_bytes())
    return {k: v for k, v in state.model.items() if isinstance(v, torch.Tensor)}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli")
    (path / "tiny.toml").write_text(TINY_TOML)
    return path


@pytest.fixture(scope="module")
def uninterrupted(workdir: Path) -> dict[str, torch.Tensor]:
    assert (
        main([str(workdir / "tiny.toml"), "--run-dir", str(workdir / "straight"), "--set", "logging.console=false"])
        == 0
    )
    return final_weights(workdir / "straight")


# The info log on stderr too (on a pipe it is otherwise only in events.jsonl): the tests wait on its lines.
INFO_ON_STDERR = ("--set", 'logging.console_level="info"')


def start_run(workdir: Path, run_dir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "esper.run", str(workdir / "tiny.toml"), "--run-dir", str(run_dir), *INFO_ON_STDERR],
        cwd=workdir,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )


def wait_for_line(process: subprocess.Popen[str], needle: str) -> None:
    """Read the run's console until an event appears (a fact, not a duration)."""
    assert process.stderr is not None
    for line in process.stderr:
        if needle in line:
            return
    raise AssertionError(f"the run ended before logging {needle!r}")


def resume(workdir: Path, run_dir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "esper.run", str(workdir / "tiny.toml"), "--resume", str(run_dir), *INFO_ON_STDERR],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "tolaria_restored" in result.stderr


def assert_bitwise(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


@pytest.mark.timeout(120)
def test_kill_9_mid_run_then_resume_ends_bitwise_equal(workdir: Path, uninterrupted: dict[str, torch.Tensor]) -> None:
    run_dir = workdir / "killed"
    process = start_run(workdir, run_dir)
    try:
        # The second checkpoint: the lifecycle journal (not fsynced, written as boundaries are planned) covers the
        # first one by then, so the resume restores one (killed at the first, on a loaded machine it could find none
        # the journal covered and train again from step 0).
        wait_for_line(process, "checkpoint_written")
        wait_for_line(process, "checkpoint_written")
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=60)
        if process.stderr is not None:
            process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    killed_at = read_manifest(run_dir / "checkpoints")[-1].global_step
    assert killed_at < 6 * 13, "the run was killed before it finished"
    resume(workdir, run_dir)
    assert_bitwise(final_weights(run_dir), uninterrupted)


@pytest.mark.timeout(120)
def test_sigint_checkpoints_exits_130_and_resume_ends_bitwise_equal(
    workdir: Path, uninterrupted: dict[str, torch.Tensor]
) -> None:
    run_dir = workdir / "interrupted"
    process = start_run(workdir, run_dir)
    rest = _stopped_after_an_epoch(process, signal.SIGINT)
    assert process.returncode == EXIT_INTERRUPTED, rest[-2000:]
    summary = (run_dir / "summary.json").read_text()
    assert '"interrupted"' in summary
    resume(workdir, run_dir)
    assert_bitwise(final_weights(run_dir), uninterrupted)


def _stopped_after_an_epoch(process: subprocess.Popen[str], sig: signal.Signals) -> str:
    """Send ``sig`` once the run's first epoch has ended; the rest of its stderr, once it has exited."""
    try:
        wait_for_line(process, "epoch_end")
        process.send_signal(sig)
        assert process.stderr is not None
        return process.stderr.read()
    finally:
        process.wait(timeout=60)
        if process.stderr is not None:
            process.stderr.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_a_schedulers_signal_stops_with_a_checkpoint_and_is_named(workdir: Path, sig: signal.Signals) -> None:
    """SIGUSR1 (Slurm's --signal=USR1@N: "checkpoint and stop, the time is nearly up") killed the run (exit 138, no
    checkpoint of its last steps, no summary.json); and a SIGTERM was recorded as only "interrupted", as a Ctrl-C is:
    a wrapper script could not tell a scheduler's stop from a user's."""
    run_dir = workdir / f"stopped by {sig.name}"
    process = start_run(workdir, run_dir)
    rest = _stopped_after_an_epoch(process, sig)
    assert process.returncode == EXIT_INTERRUPTED, rest[-2000:]
    assert f"interrupted by {sig.name}: finishing the step, writing a checkpoint" in rest
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["status"], summary["signal"]) == ("interrupted", sig.name)
    last = json.loads((run_dir / "events.jsonl").read_text().splitlines()[-1])
    assert (last["event"], last["status"], last["signal"]) == ("run_finished", "interrupted", sig.name)
    # The stop's own checkpoint: at the step the run stopped at, which is short of the end.
    stopped_at = summary["training"]["global_step"]
    assert read_manifest(run_dir / "checkpoints")[-1].global_step == stopped_at < 6 * 13


@pytest.mark.timeout(120)
def test_the_terminal_closing_stops_the_run_with_a_checkpoint_and_resume_ends_bitwise_equal(
    workdir: Path, uninterrupted: dict[str, torch.Tensor]
) -> None:
    """SIGHUP with the console on a terminal that hung up: the run used to die at once (no checkpoint of its last
    steps); stopping in order must not trip over the dead terminal (every write to it fails with EIO)."""
    run_dir = workdir / "hung_up"
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "esper.run", str(workdir / "tiny.toml"), "--run-dir", str(run_dir), *INFO_ON_STDERR],
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        stdout=terminal,
        stderr=terminal,
        start_new_session=True,
        # A run on a terminal: the hang-up's default disposition, whatever the test runner's is (under nohup it is
        # ignored, and the run rightly keeps it: it trained to the end and exited 0).
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL),
    )
    os.close(terminal)
    try:
        seen = b""
        while b"epoch_end" not in seen:
            chunk = os.read(controller, 65536)
            assert chunk, "the run ended before its first epoch end"
            seen += chunk
    finally:
        os.close(controller)  # the terminal is gone: the run's writes to it now fail
    process.send_signal(signal.SIGHUP)
    assert process.wait(timeout=60) == EXIT_INTERRUPTED
    summary = (run_dir / "summary.json").read_text()
    assert '"interrupted"' in summary
    resume(workdir, run_dir)
    assert_bitwise(final_weights(run_dir), uninterrupted)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("console", ["info lines", "progress only"])
def test_a_console_piped_into_a_reader_that_leaves_does_not_stop_the_run(
    workdir: Path, uninterrupted: dict[str, torch.Tensor], console: str
) -> None:
    """`python -m esper.run config.toml | head`: the first write after head left raised BrokenPipeError into the
    actor that logged, and the run failed (exit 1)."""
    run_dir = workdir / f"piped {console}"
    # With the default console level only the progress lines are written: their loss must be noted as well.
    extra = INFO_ON_STDERR if console == "info lines" else ()
    process = subprocess.Popen(
        [sys.executable, "-m", "esper.run", str(workdir / "tiny.toml"), "--run-dir", str(run_dir), *extra],
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stderr is not None
    assert process.stdout is not None
    process.stderr.readline()  # the run is writing to its console: now its reader leaves
    process.stderr.close()
    process.stdout.close()
    assert process.wait(timeout=60) == 0
    assert '"completed"' in (run_dir / "summary.json").read_text()
    events = (run_dir / "events.jsonl").read_text()
    assert events.count('"console_lost"') == 1
    assert_bitwise(final_weights(run_dir), uninterrupted)


def _run_with(workdir: Path, run_dir: Path, preexec: Callable[[], None], *, stdout: int = subprocess.DEVNULL) -> int:
    return subprocess.run(
        [sys.executable, "-m", "esper.run", str(workdir / "tiny.toml"), "--run-dir", str(run_dir)],
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.DEVNULL,
        preexec_fn=preexec,  # only signal dispositions and fds, before exec
        timeout=120,
        check=False,
    ).returncode


@pytest.mark.timeout(120)
def test_under_nohup_a_hang_up_leaves_the_run_training(workdir: Path) -> None:
    """Handling SIGHUP replaced the ignored disposition nohup gives: a closed terminal stopped the run after all."""
    run_dir = workdir / "nohup"
    process = subprocess.Popen(
        [sys.executable, "-m", "esper.run", str(workdir / "tiny.toml"), "--run-dir", str(run_dir), *INFO_ON_STDERR],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN),  # what nohup does
    )
    try:
        wait_for_line(process, "epoch_end")
        process.send_signal(signal.SIGHUP)
        assert process.stderr is not None
        process.stderr.read()
    finally:
        process.wait(timeout=60)
        if process.stderr is not None:
            process.stderr.close()
    assert process.returncode == 0
    assert '"completed"' in (run_dir / "summary.json").read_text()


@pytest.mark.timeout(120)
def test_a_run_started_with_its_output_closed_completes(workdir: Path) -> None:
    """sys.stdout is None then: printing the summary raised AttributeError and a completed run exited 1."""
    assert _run_with(workdir, workdir / "closed_out", lambda: os.close(1)) == 0
    assert '"completed"' in (workdir / "closed_out" / "summary.json").read_text()
