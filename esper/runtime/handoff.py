"""The handoff store: where one actor leaves a prepared object (a seed module) for another to take by handle.

Messages never carry tensors; they carry handles. Kasmina builds a seed off the training path, puts it here and
names the handle in a BoundaryPlan; Tolaria takes it on its train lane at the step boundary. Thread-safe.
"""

from __future__ import annotations

import itertools
import threading
from typing import Generic, TypeVar, final

from esper.runtime.errors import HandoffMissing

T = TypeVar("T")


@final
class Handoff(Generic[T]):
    """A bounded, thread-safe map from handle to object; each object is taken exactly once."""

    def __init__(self, capacity: int = 64) -> None:
        if capacity <= 0:
            raise ValueError(f"capacity must be > 0, got {capacity}")
        self._capacity = capacity
        self._items: dict[str, T] = {}
        self._lock = threading.Lock()
        self._counter = itertools.count(1)

    def put(self, item: T, *, prefix: str = "h") -> str:
        """Store ``item`` and return its new handle.

        Raises:
            OverflowError: ``capacity`` items are waiting to be taken (a consumer is not keeping up).
        """
        with self._lock:
            if len(self._items) >= self._capacity:
                raise OverflowError(f"handoff store full ({self._capacity} items waiting)")
            handle = f"{prefix}-{next(self._counter)}"
            self._items[handle] = item
            return handle

    def take(self, handle: str) -> T:
        """Remove and return the item under ``handle``.

        Raises:
            HandoffMissing: no item is stored under ``handle``.
        """
        with self._lock:
            try:
                return self._items.pop(handle)
            except KeyError:
                raise HandoffMissing(f"no prepared item under handle {handle!r}") from None

    def discard(self, handle: str) -> bool:
        """Drop the item under ``handle`` if present (a cancelled graft); True if something was dropped."""
        with self._lock:
            return self._items.pop(handle, None) is not None

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
