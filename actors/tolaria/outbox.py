"""The step loop's way out (Outbox), and HeldOutbox: messages held across the epoch end and then sent in one go.

Every message the lane thread sends wakes the event loop, whose handling (Kasmina's planning, Tamiyo's windows,
logging) is Python that competes with the lane thread for the GIL. At an epoch end the lane thread's own work
(snapshot capture, verdict, checkpoint hand-off) is Python too, so a packet sent at its start made the two threads
take turns for the rest of the stall. Held until the lane thread is done, the same messages reach the event loop in
the same order while the next steps run, whose kernels release the GIL.
"""

from __future__ import annotations

import functools
import threading
from typing import TYPE_CHECKING, Protocol, final

if TYPE_CHECKING:
    from collections.abc import Callable

    from schemas.base import Message, Record
    from schemas.boundary import BoundaryApplied
    from schemas.state import SystemStatePacket


class Outbox(Protocol):
    """Where the lane thread sends what the event loop must see; every method returns at once (any thread)."""

    def packet(self, packet: SystemStatePacket) -> None: ...

    def applied(self, receipt: BoundaryApplied) -> None: ...

    def event(self, event: Message | Record) -> None: ...


@final
class HeldOutbox:
    """An Outbox that passes messages straight through, except between ``hold`` and ``release``, when it keeps them
    and then sends them in their order. The lane thread holds and releases; any thread may send."""

    def __init__(self, inner: Outbox) -> None:
        self._inner = inner
        self._held: list[Callable[[], None]] | None = None
        self._lock = threading.Lock()

    def packet(self, packet: SystemStatePacket) -> None:
        self._send(functools.partial(self._inner.packet, packet))

    def applied(self, receipt: BoundaryApplied) -> None:
        self._send(functools.partial(self._inner.applied, receipt))

    def event(self, event: Message | Record) -> None:
        self._send(functools.partial(self._inner.event, event))

    def hold(self) -> None:
        with self._lock:
            if self._held is None:
                self._held = []

    def release(self) -> None:
        """Send what was held, in order, and pass messages straight through again."""
        with self._lock:
            held, self._held = self._held, None
        for send in held or ():
            send()

    def _send(self, send: Callable[[], None]) -> None:
        with self._lock:
            if self._held is not None:
                self._held.append(send)
                return
        send()
