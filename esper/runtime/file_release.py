"""Closing an aiofiles file at once, without awaiting: for an actor whose task is being cancelled."""

from __future__ import annotations


def close_now(file: object) -> None:
    """Close the file an aiofiles wrapper holds, on this thread. For a task being cancelled (the event loop ending),
    which cannot await ``close()``; the wrapper's pending writes, if any, were flushed by the OS or are lost with the
    task, as its own ``close()`` would have lost them. Never raises."""
    inner = getattr(file, "_file", None)  # aiofiles keeps the blocking file object here
    try:
        if inner is not None:
            inner.close()
    except (OSError, ValueError):
        pass
