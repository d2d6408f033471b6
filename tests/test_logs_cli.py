"""`python -m esper.tail` as a real process: a log written by configure_logging is shown; a missing file exits 2."""

from __future__ import annotations

import signal
import subprocess
import sys
from typing import TYPE_CHECKING

from esper.log_events import StructlogSink
from esper.logs import configure_logging, get_logger, log_context, reset_logging
from esper.tail import build_parser, options_from_args
from schemas.runtime import ChildFailed

if TYPE_CHECKING:
    from pathlib import Path


def run_tail(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "esper.tail", *args], capture_output=True, text=True, timeout=20, check=False
    )


def test_tail_process_shows_the_events_of_a_real_log(tmp_path: Path) -> None:
    logging = configure_logging(tmp_path, console=False)
    try:
        with log_context(actor="tolaria", run_id="r1"):
            get_logger().info("epoch_done", epoch=3, loss=0.25)
        StructlogSink().emit(ChildFailed(supervisor="weatherlight", child="urza", error_type="OSError", error="disk"))
    finally:
        logging.close()
        reset_logging()
    with (tmp_path / "events.jsonl").open("a") as file:
        file.write("this line is broken\n")

    result = run_tail(str(tmp_path / "events.jsonl"))
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.splitlines()
    assert first.split()[2:5] == ["info", "tolaria", "epoch_done"]
    assert "epoch=3 loss=0.25" in first
    assert second.split()[2:5] == ["warning", "-", "child_failed"]
    assert "child=urza" in second
    assert "\x1b[" not in result.stdout  # a pipe is not a terminal
    assert result.stderr == "esper.tail: 1 malformed line skipped\n"


def test_tail_process_missing_file_exits_2_with_one_line(tmp_path: Path) -> None:
    result = run_tail(str(tmp_path / "missing.jsonl"))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert "no such file" in result.stderr


def test_follow_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    """Ctrl-C ends --follow with exit 0 and the malformed count (here the line left unfinished) on stderr."""
    path = tmp_path / "events.jsonl"
    path.write_text('{"timestamp": "2026-01-02T12:00:00Z", "level": "info", "event": "ready"}\n{"timestamp": "20')
    # The child may inherit SIGINT ignored (a background job); restore Python's handler so Ctrl-C is what it sees.
    launcher = "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    launcher += "from esper.tail import main; sys.exit(main())"
    with subprocess.Popen(
        [sys.executable, "-c", launcher, str(path), "--follow"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stdout is not None
        first = process.stdout.readline()  # the barrier: the follower has read the file and is polling
        assert "ready" in first
        process.send_signal(signal.SIGINT)
        rest, err = process.communicate(timeout=20)
    assert process.returncode == 0, err
    assert rest == ""
    assert err == "esper.tail: 1 malformed line skipped\n"


def test_a_run_directory_is_its_events_file_even_before_the_run_makes_it(tmp_path: Path) -> None:
    """`tail runs/<id> --follow` may start before the run: a path that does not exist yet and does not name a
    .jsonl file is the run directory it will be (it was read as a file, then "Is a directory")."""
    parser = build_parser()

    def path_of(*argv: str) -> Path:
        return options_from_args(parser.parse_args(argv), stdout_is_tty=False).path

    later = tmp_path / "runs" / "20261206-000000-abcd"
    assert path_of(str(later), "--follow") == later / "events.jsonl"
    assert path_of(str(tmp_path / "custom.jsonl")) == tmp_path / "custom.jsonl"
    later.mkdir(parents=True)
    assert path_of(str(later)) == later / "events.jsonl"
    # A run whose config names its own event log (logging.json_file) is tailed from that file.
    (later / "config.toml").write_text('[logging]\njson_file = "log.jsonl"\n', encoding="utf-8")
    assert path_of(str(later)) == later / "log.jsonl"
