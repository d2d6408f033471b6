"""A run's file that is a FIFO, a directory or another special file is refused in one line, before any open.

That is a file in the run directory the run reads or writes, refused before anything opens it (the open of a FIFO waited
forever, deaf to Ctrl-C)."""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING

import pytest

from esper.logs import configure_logging, reset_logging
from esper.run import main
from esper.run_dir import claim_run_dir
from esper.run_parser import EXIT_CONFIG_ERROR
from esper.runtime.errors import ConfigError

if TYPE_CHECKING:
    from pathlib import Path

# Without the checks these hung in open(); the timeout turns a regression into a failure.
pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def _fresh_logging() -> None:
    reset_logging()


def _refusal(run: Path, name: str, kind: str, wanted: str = "a regular file") -> str:
    return (
        f"run directory {run}: {name} is {kind}, not {wanted}, which the run cannot use; move it aside, or choose"
        " another --run-dir"
    )


@pytest.mark.parametrize("resume", [False, True])
@pytest.mark.parametrize(
    "name", ["events.jsonl", "metrics.csv", "config.toml", "summary.json", "checkpoints/kasmina_journal.jsonl"]
)
def test_a_fifo_where_the_run_writes_is_refused(tmp_path: Path, name: str, resume: bool) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    os.mkfifo(run / name)
    with pytest.raises(ConfigError) as refused:
        claim_run_dir(run, resume=resume)
    assert str(refused.value) == _refusal(run, name, "a FIFO (named pipe)")


def test_a_checkpoints_that_is_no_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "checkpoints").write_text("")
    with pytest.raises(ConfigError) as refused:
        claim_run_dir(tmp_path, resume=False)
    assert str(refused.value) == _refusal(tmp_path, "checkpoints", "a regular file", "a directory")


@pytest.mark.parametrize("special", ["fifo", "directory"])
def test_the_command_line_refuses_a_special_event_log_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], special: str
) -> None:
    """A directory named events.jsonl ended in IsADirectoryError's traceback; a FIFO hung before any output."""
    run = tmp_path / "run"
    run.mkdir()
    if special == "fifo":
        os.mkfifo(run / "events.jsonl")
    else:
        (run / "events.jsonl").mkdir()
    (tmp_path / "c.toml").write_text("[tolaria]\nepochs = 1\n")
    assert main([str(tmp_path / "c.toml"), "--run-dir", str(run)]) == EXIT_CONFIG_ERROR
    kind = "a FIFO (named pipe)" if special == "fifo" else "a directory"
    assert capsys.readouterr().err == _refusal(run, "events.jsonl", kind) + "\n"


def test_a_resume_refuses_a_fifo_before_reading_anything(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The resume read the run's id from events.jsonl before its claim: a FIFO there hung it."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    os.mkfifo(run / "events.jsonl")
    (tmp_path / "c.toml").write_text("[tolaria]\nepochs = 1\n")
    assert main([str(tmp_path / "c.toml"), "--resume", str(run)]) == EXIT_CONFIG_ERROR
    assert capsys.readouterr().err == _refusal(run, "events.jsonl", "a FIFO (named pipe)") + "\n"


def test_the_event_log_is_never_opened_waiting_on_a_fifo_put_there_after_the_check(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "events.jsonl")
    with pytest.raises(OSError, match="No such device or address") as refused:
        configure_logging(tmp_path, console=False)
    assert refused.value.errno == errno.ENXIO  # no reader: the open fails at once instead of waiting for one
    reader = os.open(tmp_path / "events.jsonl", os.O_RDONLY | os.O_NONBLOCK)
    try:
        with pytest.raises(OSError, match=r"a FIFO \(named pipe\), not a regular file"):
            configure_logging(tmp_path, console=False)
    finally:
        os.close(reader)
