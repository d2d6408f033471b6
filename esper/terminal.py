"""What the terminal the console writes to can show: ANSI codes (NO_COLOR, TERM=dumb) and its width."""

from __future__ import annotations

import os
import shutil
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping


def plain_terminal(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the console must write no ANSI colour or erase codes: ``NO_COLOR`` set to any non-empty value
    (no-color.org) or ``TERM=dumb`` (a terminal that shows the codes as text). ``environ``: os.environ by default."""
    env = os.environ if environ is None else environ
    return bool(env.get("NO_COLOR")) or env.get("TERM") == "dumb"


def terminal_columns(stream: object) -> int:
    """The width of the terminal ``stream`` writes to; when it is no terminal or says 0 columns (``script``, a serial
    console), $COLUMNS or the standard output's terminal, else 80 (shutil.get_terminal_size)."""
    fileno = getattr(stream, "fileno", None)
    if callable(fileno):
        try:
            number = fileno()
            if isinstance(number, int) and (columns := os.get_terminal_size(number).columns) > 0:
                return columns
        except (OSError, ValueError):
            pass
    return shutil.get_terminal_size().columns
