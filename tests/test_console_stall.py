"""python -m esper.run with a console nobody reads (a full stderr pipe) or one that cannot show a character."""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import subprocess
import sys
import termios
import time
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

# The command line, with each epoch's end written to the inherited descriptor EPOCH_FD once the console has been
# given the epoch's line: the test's barrier, on a channel of its own since the console is the thing that stalls.
_MARKED_RUN = """
import os, runpy, sys
import esper.console

MARK = int(os.environ["EPOCH_FD"])
_on_packet = esper.console.Console.on_packet

def on_packet(self, packet):
    _on_packet(self, packet)
    if packet.epoch_progress >= 1.0:
        os.write(MARK, f"{packet.epoch + 1}\\n".encode())

esper.console.Console.on_packet = on_packet
sys.argv = ["esper.run", *sys.argv[1:]]
runpy.run_module("esper.run", run_name="__main__", alter_sys=True)
"""


def _wait_for_epoch(fd: int, epoch: int, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Read epoch marks from ``fd`` until ``epoch`` ends; the process is killed and the test fails at ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    seen = b""
    while f"\n{epoch}\n".encode() not in b"\n" + seen:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(fd, 4096) if ready else b""
        if not chunk:
            process.kill()
            pytest.fail(f"epoch {epoch} never ended (marks seen: {seen!r}): the run stalled behind its console")
        seen += chunk


def _pending(fd: int) -> int:
    """The bytes in the pipe ``fd`` reads, unread."""
    count = bytearray(4)
    fcntl.ioctl(fd, termios.FIONREAD, count)
    return int.from_bytes(count, sys.byteorder)


def test_a_stderr_nobody_reads_neither_stalls_training_nor_its_sigterm(tmp_path: Path) -> None:
    """A parent that never read the run's stderr pipe (Popen(stderr=PIPE) and wait()) stopped training once the pipe
    was full, and the SIGTERM was not acted on: the event loop sat in the console's write."""
    stderr_read, stderr_write = os.pipe()
    fcntl.fcntl(stderr_write, fcntl.F_SETPIPE_SZ, 4096)  # the smallest pipe: the debug log fills it within an epoch
    pipe_size = fcntl.fcntl(stderr_write, fcntl.F_GETPIPE_SZ)
    marks_read, marks_write = os.pipe()
    config = tmp_path / "c.toml"
    config.write_text(
        '[tolaria]\nepochs = 500\ndataset_samples = 500\n[logging]\nconsole_level = "debug"\n', encoding="utf-8"
    )
    run = tmp_path / "run"
    env = {**os.environ, "EPOCH_FD": str(marks_write)}
    command = [sys.executable, "-c", _MARKED_RUN, str(config), "--run-dir", str(run)]
    try:
        with subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=stderr_write, pass_fds=(marks_write,), env=env, cwd=tmp_path
        ) as process:
            os.close(stderr_write)
            os.close(marks_write)
            # Three epochs' debug log is several times the pipe's size: it is full (a write that does not fit in its
            # one page waits), and five more epochs end without a byte more taken.
            _wait_for_epoch(marks_read, 3, process, timeout_s=90)
            full = _pending(stderr_read)
            _wait_for_epoch(marks_read, 8, process, timeout_s=60)
            assert 0 < _pending(stderr_read) == full <= pipe_size
            process.send_signal(signal.SIGTERM)
            out, _ = process.communicate(timeout=60)  # stdout only: stderr stays unread to the end
    finally:
        os.close(stderr_read)
        os.close(marks_read)
    assert process.returncode == 130
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    assert summary["status"] == "interrupted"
    checkpoint = summary["training"]["checkpoint"]
    assert (run / "checkpoints" / checkpoint).is_file()
    # The summary on stdout, whose reader reads, is whole, down to the line that resumes the run.
    assert f"--resume {run}" in out.decode(), out


def test_a_console_that_cannot_show_the_run_directory_still_gets_the_summary(tmp_path: Path) -> None:
    """With PYTHONIOENCODING=ascii and a non-ASCII run directory the summary on stdout was silently lost (exit 0,
    nothing printed): the UnicodeEncodeError was taken for a console gone."""
    config = tmp_path / "c.toml"
    config.write_text("[tolaria]\nepochs = 1\ndataset_samples = 500\n", encoding="utf-8")
    run = tmp_path / "ünï cødé's"
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    done = subprocess.run(
        [sys.executable, "-m", "esper.run", str(config), "--run-dir", str(run)],
        capture_output=True,
        env=env,
        cwd=tmp_path,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out, err = done.stdout.decode("ascii"), done.stderr.decode("ascii")
    assert " completed in " in out, out
    assert "\\xfcn\\xef c\\xf8d\\xe9" in out  # the directory, escaped rather than shown as some other path
    assert "cannot show some characters above" in out
    assert "cannot show some characters above" in err  # the console's header names the directory too
    assert "epoch   1/1" in err
    events = (run / "events.jsonl").read_text(encoding="utf-8")
    assert '"console_lost"' not in events
