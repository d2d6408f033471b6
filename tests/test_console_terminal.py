"""The console on the terminal it has.

Shell-quoted paths in its hints, no ANSI codes under NO_COLOR or TERM=dumb, and a progress line that fits the terminal's
width."""

from __future__ import annotations

import io
import os
import shlex
from pathlib import Path

import pytest
import structlog

from esper.console import Console
from esper.logs import configure_logging, reset_logging
from esper.summary_table import format_summary
from esper.terminal import plain_terminal, terminal_columns
from schemas.run import RunSummary
from tests.nissa_packets import packet


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_path_with_a_space_is_quoted_in_the_hints_to_paste() -> None:
    stream = io.StringIO()
    Console(stream, epochs=5, interactive=False).started("r1", Path("my runs/r1"), "events.jsonl", resume=False)
    watch = stream.getvalue().splitlines()[1]
    assert watch == "  watch it: python -m esper.tail 'my runs/r1/events.jsonl' --follow --state"
    assert shlex.split(watch.split(": ", 1)[1])[3] == "my runs/r1/events.jsonl"
    summary = RunSummary(
        run_id="r1", run_dir="my runs/r1", status="interrupted", started_at="x", duration_s=1.0, exit_code=130,
        dead_letters=0,
    )  # fmt: skip
    resume = format_summary(summary).splitlines()[-1]
    assert resume == "continue it with: python -m esper.run 'my runs/r1/config.toml' --resume 'my runs/r1'"


@pytest.mark.parametrize(
    ("environ", "plain"),
    [
        ({}, False),
        ({"NO_COLOR": "1"}, True),
        ({"NO_COLOR": ""}, False),
        ({"TERM": "dumb"}, True),
        ({"TERM": "xterm"}, False),
    ],
)
def test_no_color_with_a_value_or_a_dumb_terminal_is_plain(environ: dict[str, str], plain: bool) -> None:
    assert plain_terminal(environ) is plain


@pytest.mark.parametrize(("name", "value"), [("NO_COLOR", "1"), ("TERM", "dumb")])
def test_a_plain_terminal_gets_plain_progress_lines(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    stream = _Tty()
    console = Console(stream, epochs=2, interactive=None, columns=lambda: 200)
    console.on_packet(packet(4, epoch=0))
    console.on_packet(packet(8, epoch=0, val=0.9))
    text = stream.getvalue()
    assert "\x1b" not in text
    assert "\r" not in text
    assert text.startswith("epoch   1/2 loss ")


def test_the_redrawn_progress_line_fits_the_terminal() -> None:
    """Redrawn with \\r: a line wider than the terminal wrapped, and every packet left another line behind."""
    stream = _Tty()
    console = Console(stream, epochs=2, interactive=True, columns=lambda: 30)
    console.on_packet(packet(4, epoch=0))
    drawn = stream.getvalue()
    assert drawn.startswith("\repoch   1/2 [")
    assert len(drawn) - 1 == 29


class _ZeroColumnTerminal(io.StringIO):
    def fileno(self) -> int:
        return 7


@pytest.mark.parametrize(("environ", "expected"), [({}, 80), ({"COLUMNS": "132"}, 132)])
def test_a_terminal_that_reports_no_columns_gets_columns_or_80(
    monkeypatch: pytest.MonkeyPatch, environ: dict[str, str], expected: int
) -> None:
    """Under ``script`` the terminal said 0 columns, and the redrawn progress line was cut to one character."""
    monkeypatch.setattr(os, "get_terminal_size", lambda _fd=0: os.terminal_size((0, 0)))
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.delenv("LINES", raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert terminal_columns(_ZeroColumnTerminal()) == expected
    stream = _Tty()
    console = Console(stream, epochs=2, interactive=True, columns=lambda: terminal_columns(_ZeroColumnTerminal()))
    console.on_packet(packet(4, epoch=0))
    assert stream.getvalue().startswith("\repoch   1/2 [")


def test_the_log_console_has_no_colour_under_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    stream = _Tty()
    handle = configure_logging(None, level="info", console=True, console_stream=stream)
    try:
        structlog.get_logger("t").warning("something_odd", detail="x")
    finally:
        handle.close()
        reset_logging()
    assert "something_odd" in stream.getvalue()
    assert "\x1b" not in stream.getvalue()
