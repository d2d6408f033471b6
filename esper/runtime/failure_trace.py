"""Where a failure came from: its traceback's last frames, and the innermost frame in the user's own code."""

from __future__ import annotations

import os
import sysconfig
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Final

from esper.runtime.errors import innermost

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

TRACE_FRAMES: Final = 10
TRACE_CHARS: Final = 4096

_ROOT = Path(__file__).resolve().parents[2]


def _not_users() -> tuple[str, ...]:
    """Esper's own packages, the standard library and installed packages (torch): a frame in none is the user's."""
    ours = [_ROOT / package for package in ("esper", "actors", "schemas")]
    libraries = [sysconfig.get_path(key) for key in ("stdlib", "platstdlib", "purelib", "platlib")]
    return tuple(str(path) + os.sep for path in {*ours, *(Path(p).resolve() for p in libraries if p)})


_NOT_USER: Final = _not_users()
_INSTALLED: Final = frozenset({"site-packages", "dist-packages"})


def first_failure(error: BaseException) -> BaseException:
    """The failure behind ``error``: through exception groups (their first leaf) and the escalations and wrappers
    raised from it (``raise ... from``), down to the one that started it."""
    current = innermost(error)
    seen = {id(current)}
    while current.__cause__ is not None and id(inner := innermost(current.__cause__)) not in seen:
        seen.add(id(inner))
        current = inner
    return current


def failure_traceback(error: BaseException) -> str | None:
    """The last TRACE_FRAMES frames of the first failure's traceback and its ``Type: message`` line, as Python prints
    them, cut to their last TRACE_CHARS characters; None when it has no traceback."""
    failure = first_failure(error)
    frames = traceback.extract_tb(failure.__traceback__)
    if not frames:
        return None
    lines = [
        f"Traceback (most recent call last; the last {min(len(frames), TRACE_FRAMES)} of {len(frames)} frames):\n",
        *traceback.format_list(frames[-TRACE_FRAMES:]),
        *traceback.format_exception_only(failure),
    ]
    text = "".join(lines).rstrip("\n")
    return text if len(text) <= TRACE_CHARS else "..." + text[-(TRACE_CHARS - 3) :]


def user_frame(error: BaseException, *, own: bool = False) -> str | None:
    """``file:line in function`` of the innermost frame of the first failure that lies in the user's own code (not
    in Esper, the standard library or an installed package); the file relative to the working directory when it is
    under it. None when no frame is the user's. ``own``: of ``error``'s own traceback, not of the failure it was
    raised from (the user's ``raise RuntimeError(...) from err`` is where their message comes from)."""
    failure = innermost(error) if own else first_failure(error)
    frames = traceback.extract_tb(failure.__traceback__)
    frame = next(_users(reversed(frames)), None)
    if frame is None:
        return None
    return f"{_shown(frame.filename)}:{frame.lineno} in {frame.name}"


def located(error: BaseException) -> str:
    """`` (at file:line in function)``, the user's frame (``user_frame``), for a one-line error; "" when none."""
    frame = user_frame(error)
    return "" if frame is None else f" (at {frame})"


def raised_in_one_line(error: BaseException) -> str:
    """``Type: message`` of an exception the user's code raised (the bare type when the message is empty), its
    whitespace and line breaks run together (torch's state-dict errors and a user's own take several lines), then
    where in their code it was raised (`` (at file:line in function)``, of its own traceback; none when no frame is
    the user's)."""
    text = " ".join(str(error).split())
    head = f"{type(error).__name__}: {text}" if text else type(error).__name__
    frame = user_frame(error, own=True)
    return head if frame is None else f"{head} (at {frame})"


def _users(frames: Iterable[traceback.FrameSummary]) -> Iterator[traceback.FrameSummary]:
    for frame in frames:
        name = frame.filename
        if name.startswith("<"):
            continue  # <frozen importlib._bootstrap>, <string>: no file of the user's
        resolved = Path(name).resolve()
        # An installed package outside this interpreter's own paths (pip --user, Debian's dist-packages, a venv
        # that sees the system's) is no more the user's code than torch in the venv.
        if not (str(resolved) + os.sep).startswith(_NOT_USER) and not _INSTALLED.intersection(resolved.parts):
            yield frame


def _shown(filename: str) -> str:
    path = Path(filename).resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
