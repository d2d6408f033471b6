"""How ``python -m esper.run`` treats its signals and its terminal.

The run in the foreground (a Ctrl-C stops it in order), which signals stop a run, writing to a console that may be gone,
and leaving with the run's own status."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import stat
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from esper.console_stream import drain_standard_consoles, write_shown
from esper.session import EXIT_INTERRUPTED
from esper.start_undo import stopped_by
from esper.summary_table import format_summary

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from esper.session import EsperSystem
    from schemas.run import RunSummary

# Each stops the run in order with a checkpoint; SIGHUP (the terminal closed) also drops the console's output. SIGUSR1
# is a scheduler's "checkpoint and stop, the time is nearly up" (Slurm's --signal=USR1@N): by default it killed the run.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1)
# An exit "at once" still gives the console's queued lines this long to reach a reader that reads.
EXIT_DRAIN_S = 0.5


def handled_signals() -> tuple[signal.Signals, ...]:
    """STOP_SIGNALS, without SIGHUP when the process was started ignoring it (nohup): that choice is kept."""
    ignored = signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    return tuple(sig for sig in STOP_SIGNALS if not (ignored and sig is signal.SIGHUP))


def exit_on_signal(code: int) -> None:
    """From here on the run is over and written (summary.json): a Ctrl-C or SIGTERM while the summary prints or the
    interpreter shuts down (a second or so) ends the process with the run's own status (a scheduler recorded a
    completed run as killed, 143)."""

    def leave(_signum: int, _frame: object) -> None:
        drain_standard_consoles(EXIT_DRAIN_S)  # the summary may still be on its way to the reader
        os._exit(code)

    for sig in handled_signals():
        signal.signal(sig, leave)


def hand_signals_to_the_run() -> None:
    """Replace esper.run's import-time Ctrl-C handler (leave at once) with Python's, which the run's loop takes over.
    The others keep leaving at once (exit 130: nothing is written yet) until the loop installs its own: reset to
    their defaults, a SIGTERM or SIGUSR1 in between killed the process (143, 138)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)


def say(stream: TextIO | None, text: str) -> None:
    """Write to the console if it is still there: a closed pipe (``| head``) or terminal, or none at all (a process
    started with its standard streams closed), must not end the run."""
    if stream is None:
        return
    with contextlib.suppress(OSError, ValueError):
        write_shown(stream, text)  # a character its encoding lacks is escaped: the line is never lost for it
        stream.flush()


def drop_lost_streams() -> None:
    """Point a standard stream whose reader left at /dev/null, so the interpreter's last flush of it does not fail
    (Python then prints a BrokenPipeError and exits 120 instead of the run's status)."""
    for stream in (sys.stdout, sys.stderr):
        if stream is None:  # started with that stream closed: nothing to flush
            continue
        try:
            stream.flush()
        except (OSError, ValueError):
            with contextlib.suppress(OSError, ValueError), open(os.devnull, "wb") as null:
                os.dup2(null.fileno(), stream.fileno())


def detach_from_terminal() -> None:
    """Point standard output and error at /dev/null where they are a terminal (one that hung up): the console's
    lines are dropped, the run's files (events.jsonl, summary.json) are written as ever.

    A hung-up terminal no longer answers isatty, so a character device counts (/dev/null is one too, harmlessly).
    """
    with open(os.devnull, "wb") as null:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                fd = stream.fileno()
                if not stat.S_ISCHR(os.fstat(fd).st_mode):
                    continue
                with contextlib.suppress(OSError):
                    stream.flush()  # what a live terminal can still take; a dead one's buffered text is dropped
                os.dup2(null.fileno(), fd)


@dataclass
class Interrupted:
    """Whether a stop signal came, and the first one's name: summary.json tells a scheduler's stop from a Ctrl-C."""

    event: asyncio.Event = field(default_factory=asyncio.Event)
    name: str | None = None  # "SIGTERM", ...

    def set(self, sig: signal.Signals) -> None:
        if not self.event.is_set():
            self.name = sig.name
        self.event.set()


def _again(sig: signal.Signals) -> str:
    """How to end the process at once after ``sig``: any second stop signal does."""
    return "Ctrl-C again" if sig is signal.SIGINT else f"{sig.name} again or Ctrl-C"


async def run_until_done(system: EsperSystem, interrupted: Interrupted) -> RunSummary:
    """Wait for the run to end (training finished), or stop it gracefully once ``interrupted`` is set: Tolaria
    finishes its step and writes a checkpoint that ``--resume`` continues from."""
    async with asyncio.TaskGroup() as tg:
        finished = tg.create_task(system.wait())
        interrupt = tg.create_task(interrupted.event.wait())
        await asyncio.wait((finished, interrupt), return_when=asyncio.FIRST_COMPLETED)
        if not finished.done():
            tg.create_task(system.stop(status="interrupted", signal=interrupted.name))
        interrupt.cancel()
    return finished.result()


async def run_in_foreground(
    start: Callable[[], Coroutine[Any, Any, EsperSystem]], *, whole_process: bool = False
) -> int:
    """The command line's run: started, waited for and its summary printed; a Ctrl-C, SIGTERM, SIGUSR1 or hang-up
    stops it in order, a second one at once. Returns the exit status. ``whole_process``: as ``esper.run.main``'s."""
    interrupted = Interrupted()
    starting = asyncio.ensure_future(start())

    def interrupt(sig: signal.Signals) -> None:
        if interrupted.event.is_set():
            # A second Ctrl-C means now: every write that matters is atomic (temp file, fsync, rename), so what is on
            # disk is the last checkpoint, and --resume sweeps the temp file of one cut short.
            say(sys.stderr, "interrupted again: exiting at once; --resume continues from the last checkpoint\n")
            drain_standard_consoles(EXIT_DRAIN_S)
            os._exit(EXIT_INTERRUPTED)
        interrupted.set(sig)
        by, again = f"interrupted by {sig.name}", _again(sig)
        if not starting.done():
            # Loading the data, building the host, starting the actors: what has started is stopped in order, and a
            # step still running in a thread (a user's factory, the data set's generation) is left to the process's
            # exit; whatever it writes is written atomically, so nothing is left half-written.
            say(sys.stderr, f"{by} while starting: stopping what has started ({again} to exit at once)\n")
            starting.cancel(msg=stopped_by(sig.name))
            return
        if not starting.cancelled() and starting.exception() is None and starting.result().training_ended:
            # Training already ended on its own: the stop changes nothing (the run stays completed), and the
            # checkpoint promise was untrue, followed by "completed (exit 0)".
            say(
                sys.stderr,
                f"{by}: training has already ended and the run is finishing (its summary and report); it keeps"
                f" its status ({again} to exit at once; --resume then finishes it)\n",
            )
            return
        say(
            sys.stderr,
            f"{by}: finishing the step, writing a checkpoint, stopping the actors in order ({again} to exit at once)\n",
        )

    def hang_up() -> None:
        # The terminal closed: whatever is still written to it would fail (EIO) and end the stop half-way.
        detach_from_terminal()
        interrupt(signal.SIGHUP)

    # Installed before the start, so a Ctrl-C while the data set loads is heard at once.
    loop = asyncio.get_running_loop()
    # Given back once the run is over: a program calling esper.run.main keeps the handlers it set with signal.signal
    # (one set from C, faulthandler.register's, reads as the default and must be registered again).
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        loop.add_signal_handler(sig, interrupt, sig)
    if signal.SIGHUP in handled_signals():
        loop.add_signal_handler(signal.SIGHUP, hang_up)
    try:
        try:
            system = await starting
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # this task is being cancelled, not only the start
            return EXIT_INTERRUPTED
        summary = await run_until_done(system, interrupted)
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)  # leaves SIG_DFL
            handler = previous[sig]
            if handler is not None:  # None: set from outside Python, nothing to give back
                signal.signal(sig, handler)
    if whole_process:
        exit_on_signal(summary.exit_code)
    say(sys.stdout, format_summary(summary))
    return summary.exit_code
