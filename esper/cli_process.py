"""How ``python -m esper.run`` treats its signals and its terminal: which signals stop a run, writing to a console
that may be gone, and leaving with the run's own status."""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import sys
from typing import TextIO

# Each stops the run in order with a checkpoint; SIGHUP (the terminal closed) also drops the console's output.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def handled_signals() -> tuple[signal.Signals, ...]:
    """STOP_SIGNALS, without SIGHUP when the process was started ignoring it (nohup): that choice is kept."""
    ignored = signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    return tuple(sig for sig in STOP_SIGNALS if not (ignored and sig is signal.SIGHUP))


def exit_on_signal(code: int) -> None:
    """From here on the run is over and written (summary.json): a Ctrl-C or SIGTERM while the summary prints or the
    interpreter shuts down (a second or so) ends the process with the run's own status (a scheduler recorded a
    completed run as killed, 143)."""

    def leave(_signum: int, _frame: object) -> None:
        os._exit(code)

    for sig in handled_signals():
        signal.signal(sig, leave)


def say(stream: TextIO | None, text: str) -> None:
    """Write to the console if it is still there: a closed pipe (``| head``) or terminal, or none at all (a process
    started with its standard streams closed), must not end the run."""
    if stream is None:
        return
    with contextlib.suppress(OSError, ValueError):
        stream.write(text)
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
