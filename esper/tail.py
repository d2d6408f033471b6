"""``python -m esper.tail EVENTS.jsonl``: a readable tail of a run's structured log, with filters and a state table."""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO, final

from esper.log_levels import LEVEL_NUMBERS, LogLevel, parse_level
from esper.run_files import run_files
from esper.runtime.clock import MonotonicClock
from esper.tail_follow import LineReader, follow_lines, read_lines_once
from esper.tail_liveness import run_gone, run_held
from esper.tail_render import EventFilter, TailSession
from esper.terminal import plain_terminal

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

EXIT_OK = 0
EXIT_UNREADABLE = 2
_CLEAR_SCREEN = "\x1b[H\x1b[J"
RUN_GONE = (
    "esper.tail: the run is no longer running (its run.lock is free and its log has no run_finished line: killed?)"
)


@final
class NoEventsError(Exception):
    """The file's lines were read and not one was an Esper event: the tail was pointed at another file."""


@final
@dataclass(frozen=True, slots=True)
class TailOptions:
    """What the command line asked for, already validated."""

    path: Path
    follow: bool = False
    actor: str | None = None
    min_level: LogLevel | None = None
    state: bool = False
    color: bool = False
    poll_interval_s: float = 0.25
    run_dir: Path | None = None
    """The run directory given instead of its log: until the log appears, its name is re-read from the directory's
    config.toml (``logging.json_file``), which the run may not have written yet."""


def _write(out: TextIO, lines: Sequence[str]) -> None:
    if lines:
        out.write("".join(f"{line}\n" for line in lines))
        out.flush()


def _show_state(session: TailSession, out: TextIO, *, refresh: bool) -> None:
    # On a terminal the table redraws in place; in a pipe or file each version follows the last.
    in_place = refresh and out.isatty() and not plain_terminal()
    prefix = _CLEAR_SCREEN if in_place else ""
    suffix = "\n" if refresh and not in_place else ""
    out.write(f"{prefix}{session.render_state()}\n{suffix}")
    out.flush()


def _check_events(path: Path, session: TailSession, *, pending: bool) -> None:
    """Raise NoEventsError when ``path``'s lines were read and none was an event. ``pending``: the one skipped line
    may be a first line a killed run left unterminated, which says nothing about the file."""
    if pending and session.malformed == 1:
        return
    problem = session.no_events(path)
    if problem is not None:
        raise NoEventsError(problem)


def _is_runs_log(path: Path) -> bool:
    """Whether ``path`` is the event log its directory's run writes (events.jsonl, or the name its config.toml gives):
    only that file's emptiness or torn first line says something of the run. A symbolic link is judged by its target."""
    try:
        path = path.resolve()
    except (OSError, RuntimeError):  # a link loop: no run's log
        return False
    return path.name == run_files(path.parent).events


def _ends_unterminated(path: Path) -> bool:
    """Whether the file's last byte is not a newline (an unterminated last line); False if it cannot be read."""
    try:
        with path.open("rb") as file:
            if file.seek(0, os.SEEK_END) == 0:
                return False
            file.seek(-1, os.SEEK_END)
            return file.read(1) != b"\n"
    except OSError:
        return False


async def run_tail(
    options: TailOptions,
    session: TailSession,
    out: TextIO,
    *,
    poll: Callable[[], Awaitable[None]] | None = None,
    err: TextIO | None = None,
) -> str | None:
    """Show the file on ``out`` as ``options`` ask; with ``follow`` it runs until the run has finished (the file's
    last line is its ``run_finished`` and no process holds its directory: see run_held), the run is gone (killed:
    see run_gone), a followed pipe ends, or it is cancelled.

    ``session`` keeps the counts, so a caller that cancels this (Ctrl-C) can still report them. ``poll`` replaces the
    wait between looks at a growing file (default: sleep ``options.poll_interval_s``). ``err`` gets the one line
    saying a followed file does not exist yet (default: not said).

    Returns:
        RUN_GONE when the log has events but no run_finished at its end and the run is gone (killed), read once or
        followed; else None.

    Raises:
        FileNotFoundError: the file does not exist and ``follow`` is off.
        NoEventsError: the file holds lines and none is an event (read once, or followed to its current end).
        OSError: the file cannot be read.
    """
    async with LineReader(options.path, follow=options.follow) as reader:
        if not options.follow:
            async for batch in read_lines_once(reader):
                _write(out, session.feed(batch))
            own_log = not reader.stream and await asyncio.to_thread(_is_runs_log, reader.path)
            torn = own_log and await asyncio.to_thread(_ends_unterminated, reader.path)
            _check_events(reader.path, session, pending=torn)
            # A killed run's log reads like a live one's (or is empty: killed before its first line): without this
            # its --state table looked current.
            a_log = session.events > 0 or (own_log and session.malformed == (1 if torn else 0))
            if a_log and not session.finished and not reader.stream:
                if await asyncio.to_thread(run_gone, reader.path.parent):
                    session.mark_gone()
            if options.state:
                _show_state(session, out, refresh=False)
            return RUN_GONE if session.gone else None
        clock = MonotonicClock()
        wait = poll if poll is not None else (lambda: clock.sleep(options.poll_interval_s))
        shown_version = -1
        gone = False
        said_waiting = False

        def show_state() -> None:
            # Drawn once caught up with the file, not before its first read: a finished run's log showed the empty
            # "(no actor_state events yet)" table first, then the real one.
            nonlocal shown_version
            if options.state and session.version != shown_version:
                _show_state(session, out, refresh=True)
                shown_version = session.version

        async def look() -> None:
            nonlocal said_waiting
            show_state()  # nothing new to read: the table as the file stands so far (empty before any actor_state)
            if not reader.opened and not said_waiting and err is not None:
                # Once: a mistyped run id waited forever without a word.
                said_waiting = True
                err.write(f"esper.tail: waiting for {reader.path} to appear\n")
                err.flush()
            await wait()
            if options.run_dir is not None and not reader.opened:  # the run may have written its config.toml since
                reader.path = options.run_dir / run_files(options.run_dir).events

        async def stop() -> bool:
            nonlocal gone
            if not reader.opened or reader.stream:
                return False
            if session.finished:
                # A --resume of a finished run holds its directory before it writes its first line: the old
                # session's run_finished ends the log until then, and following must not end with it.
                return not await asyncio.to_thread(run_held, reader.path.parent)
            # Another file of a finished run with lines (metrics.csv) never gets here: it is refused at its first end
            # (_check_events). An empty run's log does: its run may have been killed before its first line.
            a_log = session.events > 0 or await asyncio.to_thread(_is_runs_log, reader.path)
            gone = a_log and await asyncio.to_thread(run_gone, reader.path.parent)
            return gone

        try:
            async for batch in follow_lines(reader, poll=look, stop=stop):
                _write(out, session.feed(batch))
                if reader.at_end:
                    # Before the table: a wrong file showed an empty one. An unterminated line is not read yet.
                    _check_events(reader.path, session, pending=False)
                    show_state()
                if session.finished and reader.at_end and reader.stream:
                    break  # the run has finished: following ends with it, as `docker logs -f` does (a file: stop())
        finally:
            # A line still unterminated when following stops never completed: it counts as malformed.
            if reader.take_pending() is not None:
                session.malformed += 1
        if gone and not session.finished:
            session.mark_gone()
        show_state()
        return RUN_GONE if session.gone else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m esper.tail",
        description=(
            "Show an Esper run's structured log (events.jsonl) readably: time, level, actor, event, key=value pairs. "
            "Lines that are not valid events are counted and skipped; the count is reported on stderr at the end."
        ),
        epilog="Exit status: 0 on success (also after Ctrl-C with --follow), 2 if the file cannot be read or holds "
        "no Esper events.",
    )
    parser.add_argument(
        "path",
        type=Path,
        help="the events.jsonl file, or a run directory that holds (or, with --follow, will hold) one (runs/<run-id>)",
    )
    parser.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="keep reading as the file grows, waiting for it to appear and reopening it if truncated or replaced; "
        "stops once the run has finished (its run_finished line ends the file and no --resume holds its directory), "
        "once it is no longer running (killed: its run.lock is free), at a pipe's end, or with Ctrl-C",
    )
    parser.add_argument("--actor", metavar="NAME", help="show only events whose actor is NAME (exact match)")
    parser.add_argument(
        "--level",
        metavar="LEVEL",
        type=str.lower,
        choices=list(LEVEL_NUMBERS),
        help="show only events at LEVEL or above: " + ", ".join(LEVEL_NUMBERS),
    )
    parser.add_argument(
        "--state",
        action="store_true",
        help="instead of events, show a table of each actor's latest actor_state (mailbox depth, messages handled, "
        "restarts, breaker, last handling latency); with --follow it is redrawn as states arrive; --actor limits "
        "the rows, --level does not apply",
    )
    parser.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="colour the output: auto (default) colours only when stdout is a terminal",
    )
    parser.add_argument(
        "--interval",
        metavar="SECONDS",
        type=float,
        default=0.25,
        help="with --follow, how long to wait between looks at the file (default 0.25)",
    )
    return parser


def options_from_args(args: argparse.Namespace, *, stdout_is_tty: bool) -> TailOptions:
    """Turn parsed arguments into TailOptions; a directory path means its event log (``logging.json_file`` of its
    config.toml, events.jsonl by default), and so does a path that does not exist yet unless it names a .jsonl file
    (``--follow`` on a run directory before the run makes it)."""
    path: Path = args.path
    run_dir = None
    # A directory named *.jsonl is a log file gone wrong, not a run directory: reading it says so.
    if path.suffix != ".jsonl" and (path.is_dir() or not path.exists()):
        run_dir, path = path, path / run_files(path).events
    color = {"always": True, "never": False}.get(args.color, stdout_is_tty)
    return TailOptions(
        path=path,
        follow=args.follow,
        actor=args.actor,
        min_level=parse_level(args.level) if args.level is not None else None,
        state=args.state,
        color=color,
        poll_interval_s=args.interval,
        run_dir=run_dir,
    )


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run the tail; returns the exit status. ``out`` / ``err`` default to sys.stdout / sys.stderr."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    parser = build_parser()
    args = parser.parse_args(argv)
    if not math.isfinite(args.interval) or args.interval <= 0:
        parser.error(f"--interval must be a finite number > 0, got {args.interval}")
    options = options_from_args(args, stdout_is_tty=out.isatty() and not plain_terminal())
    session = TailSession(
        event_filter=EventFilter(actor=options.actor, min_level=options.min_level),
        state=options.state,
        color=options.color,
    )
    status = EXIT_OK
    try:
        notice = asyncio.run(run_tail(options, session, out, err=err))
        if notice is not None:
            err.write(f"{notice}\n")
    except NoEventsError as error:
        err.write(f"{error}\n")
        return EXIT_UNREADABLE  # the line counts the skipped lines: no summary after it
    except KeyboardInterrupt:
        pass  # Ctrl-C is how --follow ends; the summary below still runs.
    except FileNotFoundError:
        err.write(f"esper.tail: no such file: {options.path}\n")
        status = EXIT_UNREADABLE
    except IsADirectoryError:
        err.write(f"esper.tail: {options.path} is a directory, not an events file\n")
        status = EXIT_UNREADABLE
    except BrokenPipeError:
        # The reader went away (| head); point stdout at devnull so the interpreter's final flush stays quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, out.fileno())
        return EXIT_OK
    except OSError as error:
        err.write(f"esper.tail: cannot read {options.path}: {error.strerror or error}\n")
        status = EXIT_UNREADABLE
    summary = session.summary()
    if summary is not None:
        err.write(f"{summary}\n")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
